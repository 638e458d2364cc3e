"""Normalizations of weights rather than activations: layers that wrap layers.

* `WeightStandardizedConv`: Qiao et al. 2019 ("Micro-Batch Training with
  Batch-Channel Normalization and Weight Standardization", arXiv:1903.10520),
  and with ``scaled=True`` the Scaled WS of Brock et al. 2021 ("Characterizing
  signal propagation to close the performance gap in unnormalized ResNets",
  arXiv:2101.08692) used by normalizer-free ResNets.
* `SpectralNorm`: Miyato et al. 2018 (arXiv:1802.05957), the discriminator
  normalization of SN-GAN. Its power-iteration state lives in the
  ``spectral_stats`` collection, never in ``batch_stats``.
* `WeightNorm`: Salimans & Kingma 2016 (arXiv:1602.07868); stateless.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

SPECTRAL_STATS = 'spectral_stats'


def standardize_kernel(kernel, *, epsilon: float, scaled: bool, gain=None):
    """Zero-mean, unit-variance kernel per output channel (last axis).

    ``scaled=False``: ``(w - mean) / sqrt(var + eps)`` (Qiao et al.).
    ``scaled=True``: ``gain * (w - mean) / sqrt(max(fan_in * var, eps))``
    (Brock et al.), which keeps activations' variance through the layer.
    """
    fan_axes = tuple(range(kernel.ndim - 1))
    w = kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32))
    mean = jnp.mean(w, axis=fan_axes, keepdims=True)
    var = jnp.var(w, axis=fan_axes, keepdims=True)
    if scaled:
        fan_in = 1
        for a in fan_axes:
            fan_in *= kernel.shape[a]
        w = (w - mean) * lax.rsqrt(jnp.maximum(var * fan_in, epsilon))
    else:
        w = (w - mean) * lax.rsqrt(var + epsilon)
    if gain is not None:
        w = w * gain.reshape((1,) * (kernel.ndim - 1) + (-1,))
    return w.astype(kernel.dtype)


class WeightStandardizedConv(nn.Conv):
    """`flax.linen.Conv` whose kernel is standardized on every call.

    All of `nn.Conv`'s fields and variables (``params/kernel``, ``bias``),
    plus:

    Attributes:
      epsilon: added to the variance (1e-4 as in the NF-ResNet code).
      scaled: use Scaled WS with a learned per-output-channel ``gain``.
    """

    epsilon: float = 1e-4
    scaled: bool = False

    def param(self, name, init_fn, *init_args, **init_kwargs):
        # nn.Conv reads its kernel through `param`: standardize it on the way out.
        value = super().param(name, init_fn, *init_args, **init_kwargs)
        if name != 'kernel':
            return value
        gain = None
        if self.scaled:
            gain = super().param('gain', nn.initializers.ones, (value.shape[-1],), jnp.float32)
        return standardize_kernel(value, epsilon=self.epsilon, scaled=self.scaled, gain=gain)


class SpectralNorm(nn.SpectralNorm):
    """Spectral normalization wrapper; state in ``spectral_stats``.

    Usage: ``SpectralNorm(nn.Conv(64, (4, 4)))(x, update_stats=train)``; train
    with ``mutable=['spectral_stats']`` so the power-iteration vector ``u``
    improves over steps. Fields as `flax.linen.SpectralNorm`.
    """

    collection_name: str = SPECTRAL_STATS


class WeightNorm(nn.WeightNorm):
    """Weight normalization wrapper: ``w = scale * v / ||v||`` per output feature.

    Usage: ``WeightNorm(nn.Dense(10))(x)``. Fields as `flax.linen.WeightNorm`.
    """
