"""Batch Renormalization (Ioffe 2017) for NNX, over `normlab.norms.BatchRenorm`.

BatchNorm's variables plus ``steps``, the training-step counter that ramps the
clips, a `normlab.nnx.NormSteps` variable (Linen's ``norm_steps`` collection).
"""

from __future__ import annotations

import jax.numpy as jnp

from normlab import norms
from normlab.nnx.batch_norm import RUNNING_STATS, BatchNorm


class BatchRenorm(BatchNorm):
    """BatchNorm with Batch Renormalization's r/d correction (``r_max``, ``d_max``,
    ``ramp_steps`` and every BatchNorm option; see `normlab.norms.BatchRenorm`)."""

    linen = norms.BatchRenorm
    state_specs = {
        **RUNNING_STATS,
        'steps': (norms.STEPS_COLLECTION, lambda shape, dtype: jnp.zeros((), jnp.int32)),
    }
    promotes = False  # flax.nnx has no BatchRenorm whose promote_dtype to mirror
