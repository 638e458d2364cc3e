"""Batch Renormalization (Ioffe 2017) for NNX, over `normlab.norms.BatchRenorm`.

BatchNorm's variables plus whatever state the Linen module keeps for its clip
ramp (its step counter), each in the NNX type of its Linen collection.
"""

from __future__ import annotations

from normlab import norms
from normlab.nnx.batch_norm import BatchNorm


class BatchRenorm(BatchNorm):
    """BatchNorm with Batch Renormalization's r/d correction (``r_max``, ``d_max``,
    ``ramp_steps`` and every BatchNorm option; see `normlab.norms.BatchRenorm`)."""

    linen = norms.BatchRenorm
    promotes = False  # flax.nnx has no BatchRenorm whose promote_dtype to mirror
