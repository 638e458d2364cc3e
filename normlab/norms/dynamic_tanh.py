"""Dynamic Tanh (DyT): a normalization layer without statistics.

Zhu, Chen, He, LeCun & Liu, "Transformers without Normalization" (CVPR 2025,
arXiv:2503.10622): ``DyT(x) = scale * tanh(alpha * x) + bias`` with ``alpha`` one
learnable scalar (init 0.5) and ``scale`` / ``bias`` per feature. Their observation is
that a trained LayerNorm maps its inputs through an S-shaped curve (linear for most
tokens, squashing the few extreme ones); DyT is that curve without computing a mean or
a variance. It reports matching or slightly beating LayerNorm on ViT-B (ImageNet top-1
82.3% -> 82.5%).

DyT is elementwise: it keeps no state, reads no other example, token or feature, and
needs no collective, so ``use_running_average`` and a ``mask`` change nothing.

Example::

  >>> import jax, jax.numpy as jnp
  >>> from normlab.norms import DynamicTanh
  >>> dyt = DynamicTanh(alpha_init=0.5)
  >>> x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  >>> variables = dyt.init(jax.random.key(1), x)   # params: alpha (), scale (8,), bias (8,)
  >>> y = dyt.apply(variables, x)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype, Initializer

from normlab.norms import functional as F
from normlab.norms.affine import affine_params, output_dtype


def dynamic_tanh(
    x: jax.Array, alpha: jax.Array, scale: jax.Array | None, bias: jax.Array | None
) -> jax.Array:
    """``scale * tanh(alpha * x) + bias``; `scale`/`bias` broadcast against `x` or are None.

    Computed in the promotion of `x` and `alpha` (float32 for a bfloat16 input with
    float32 parameters); the caller casts the result.
    """
    y = jnp.tanh(alpha * x)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y


class DynamicTanh(nn.Module):
    """Dynamic Tanh over the last (feature) axis; see the module docstring.

    Attributes:
      alpha_init: initial value of the scalar ``alpha`` (paper: 0.5 for ViTs; they
        lower it for wide or deep LLMs).
      use_scale, use_bias, scale_init, bias_init, dtype, param_dtype: as in flax's
        norms; ``scale_init=zeros`` zero-initializes a residual branch as for any norm.
      use_running_average: accepted so models can bind the training mode for every
        norm; DyT behaves the same in both modes.
    """

    alpha_init: float = 0.5
    use_scale: bool = True
    use_bias: bool = True
    scale_init: Initializer = nn.initializers.ones
    bias_init: Initializer = nn.initializers.zeros
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_running_average: bool | None = None

    @nn.compact
    def __call__(self, x, *, mask=None):
        # Elementwise, so a masked position influences no other output; zeroing it
        # keeps NaN padding out of the parameters' gradients (0 * NaN is NaN).
        x = F.fill_masked(x, mask)
        c = x.shape[-1]
        scale, bias = affine_params(self, (c,), (1,) * (x.ndim - 1) + (c,))
        alpha = self.param('alpha', nn.initializers.constant(self.alpha_init), (), self.param_dtype)
        y = dynamic_tanh(x, alpha, scale, bias)
        return y.astype(output_dtype(x, scale, bias, self.dtype))
