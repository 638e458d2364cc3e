"""The `none` norm: an identity that accepts every norm's common keywords."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from flax.typing import Dtype, Initializer

from normlab.norms import functional as F


class NoNorm(nn.Module):
    """Returns its input unchanged; the no-normalization baseline.

    Takes the keywords models pass to any norm (``use_running_average``,
    ``scale_init``, ...) and ignores them, so ``make_norm('none')`` drops into
    every model. A zero ``scale_init`` (used to zero-init residual branches)
    is ignored too: without a norm there is no scale to zero. With a ``mask``,
    masked positions come out as zeros, as finite as every other norm's.
    """

    use_running_average: bool | None = None
    use_scale: bool = True
    use_bias: bool = True
    scale_init: Initializer = nn.initializers.ones
    bias_init: Initializer = nn.initializers.zeros
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def __call__(self, x, *, mask=None):
        x = F.fill_masked(x, mask)
        return x if self.dtype is None else x.astype(self.dtype)
