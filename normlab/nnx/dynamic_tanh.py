"""Dynamic Tanh (DyT) for NNX, over `normlab.norms.DynamicTanh`."""

from __future__ import annotations

from normlab import norms
from normlab.nnx.shell import NormShell


class DynamicTanh(NormShell):
    """``scale * tanh(alpha * x) + bias``: no statistics; ``alpha`` a learned scalar."""

    linen = norms.DynamicTanh
    promotes = False  # flax.nnx has no DynamicTanh whose promote_dtype to mirror

    def __call__(self, x, *, mask=None):
        return self._apply(x, mask=mask)
