"""The learned per-feature scale and bias that follow a normalization."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from flax.linen import dtypes


def affine_params(mdl: nn.Module, feature_shape, bshape, *, use_bias: bool | None = None):
    """Declares ``scale``/``bias`` on `mdl` (per its fields), shaped to broadcast.

    Returns ``(scale, bias)``, each None when disabled, reshaped to `bshape`.
    """
    use_bias = mdl.use_bias if use_bias is None else use_bias
    scale = bias = None
    if mdl.use_scale:
        scale = mdl.param('scale', mdl.scale_init, feature_shape, mdl.param_dtype).reshape(bshape)
    if use_bias:
        bias = mdl.param('bias', mdl.bias_init, feature_shape, mdl.param_dtype).reshape(bshape)
    if not getattr(mdl, 'force_float32_reductions', True):
        scale = None if scale is None else jnp.asarray(scale, mdl.param_dtype)
        bias = None if bias is None else jnp.asarray(bias, mdl.param_dtype)
    return scale, bias


def output_dtype(x, scale, bias, dtype):
    """flax's rule: the requested dtype, else the promotion of input and params."""
    return dtypes.canonicalize_dtype(*(a for a in (x, scale, bias) if a is not None), dtype=dtype)
