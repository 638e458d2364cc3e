"""Normalizer-free ResNets (NF-ResNets), the no-normalization baseline of a study.

Brock, De & Smith, "Characterizing signal propagation to close the performance gap in
unnormalized ResNets" (ICLR 2021), and the official code (deepmind-research
``nfnets/nf_resnet.py``). Without normalization a residual stream's variance grows
block after block; an NF-ResNet keeps it analytically under control instead:

* Pre-activation blocks ``h + alpha * g * f(h / beta)``: ``beta`` is the *expected*
  standard deviation of ``h`` at initialization, computed in Python (no statistics of
  the data), so each branch ``f`` sees a unit-variance input. The variance then grows
  as ``beta_{i+1}^2 = beta_i^2 + alpha^2``; a transition block (stride or width change)
  feeds its shortcut conv the normalized input too, so after it the expected variance
  restarts at ``1 + alpha^2``.
* ``g`` is a learnable scalar skip gain initialized to 0 (SkipInit, De & Smith 2020):
  every block starts as the identity.
* Convs use Scaled Weight Standardization, ``W_hat = gain * (W - mean) / (std *
  sqrt(fan_in))`` (``normlab.norms.WeightStandardizedConv(scaled=True)``), so a conv
  maps unit variance to unit variance; activations are multiplied by
  ``gamma = 1 / std(act(z))``, ``z ~ N(0, 1)``, so they do too (``sqrt(2 / (1 - 1/pi))``
  for ReLU).

Brock et al. pair NF-ResNets with adaptive gradient clipping; in normlab that comes
from optax in the trainer. The model has no normalization sites: ``create`` still passes
a ``norm``, which must be ``make_norm('none')``::

    model = models.create("nf_resnet20", num_classes=10, norm=norms.make_norm("none"))

``nf_resnet20 ... nf_resnet110`` are CIFAR-shaped (3x3 stem, 16/32/64 basic blocks,
total stride 4); ``nf_resnet18 ... nf_resnet152`` ImageNet-shaped (7x7/2 stem and max
pool, total stride 32), ``nf_resnet50`` and deeper with bottleneck blocks.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from normlab.models.common import (
    ACTIVATIONS,
    PAD1,
    check_images,
    check_stem,
    pooled_head,
    residual_blocks,
    resnet_stem,
    stem_stride,
)
from normlab.norms import NORMS, ModuleDef, WeightStandardizedConv

# gamma = 1 / std(act(z)) for z ~ N(0, 1), from the official code (nfnets/base.py);
# tests/test_models.py recomputes them by quadrature.
ACTIVATION_GAINS = {
    'relu': 1.7139588594436646,
    'gelu': 1.7015043497085571,
    'silu': 1.7881293296813965,
}


def _is_no_norm(norm: ModuleDef | None) -> bool:
    while isinstance(norm, functools.partial):
        norm = norm.func
    return norm is None or norm is NORMS['none']


class NFBlock(nn.Module):
    """Normalizer-free pre-activation block: ``x + alpha * skip_gain * f(act(x) * beta)``.

    ``beta`` here is the reciprocal of the expected standard deviation of ``x``.
    Basic blocks have two 3x3 convs; bottleneck blocks 1x1, 3x3 (with the stride), 1x1
    to ``4 * filters``. A stride or width change uses a 1x1 (strided) projection of the
    scaled pre-activation as the shortcut.
    """

    filters: int
    conv: ModuleDef
    act: Any
    alpha: float
    beta: float
    bottleneck: bool
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        out_features = self.filters * 4 if self.bottleneck else self.filters
        strides = (self.strides, self.strides)
        preact = self.act(x) * self.beta
        shortcut = x
        if self.strides > 1 or x.shape[-1] != out_features:
            shortcut = self.conv(out_features, (1, 1), strides, name='proj_conv')(preact)
        if self.bottleneck:
            y = self.conv(self.filters, (1, 1), name='conv1')(preact)
            y = self.conv(self.filters, (3, 3), strides, padding=PAD1, name='conv2')(self.act(y))
            y = self.conv(out_features, (1, 1), name='conv3')(self.act(y))
        else:
            y = self.conv(self.filters, (3, 3), strides, padding=PAD1, name='conv1')(preact)
            y = self.conv(self.filters, (3, 3), padding=PAD1, name='conv2')(self.act(y))
        skip_gain = self.param('skip_gain', nn.initializers.zeros_init(), ())
        return shortcut + self.alpha * skip_gain.astype(y.dtype) * y


class NFResNet(nn.Module):
    """Normalizer-free pre-activation ResNet.

    Attributes:
      stage_sizes: blocks per stage; stage ``i`` has ``width * 2**i`` filters (times 4
        at a bottleneck's output) and all but the first start with a stride-2 block.
      num_classes: size of the logits.
      stem: ``'imagenet'`` (7x7/2 conv + 3x3/2 max pool) or ``'cifar'`` (3x3 conv).
      bottleneck: bottleneck blocks instead of basic ones.
      norm: must be ``None`` or ``make_norm('none')``; kept so ``create`` is uniform.
      width: filters of the stem and the first stage.
      alpha: the rate at which the expected variance grows per block (paper: 0.2).
      act: ``'relu'``, ``'gelu'`` or ``'silu'``: the name selects its gain ``gamma``.
      conv: convolution class; scaled weight standardization by default. Convs keep
        their bias (there is no norm to absorb it).
      dtype: compute dtype; logits are returned in float32.
    """

    stage_sizes: Sequence[int]
    num_classes: int
    stem: str = 'cifar'
    bottleneck: bool = False
    norm: ModuleDef | None = None
    width: int = 16
    alpha: float = 0.2
    act: str = 'relu'
    conv: ModuleDef = functools.partial(WeightStandardizedConv, scaled=True)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        del train  # No batch statistics and no dropout: train and eval compute the same.
        if not _is_no_norm(self.norm):
            raise ValueError(
                f"{type(self).__name__} is normalizer-free: pass norm=make_norm('none') or "
                f'None, got {self.norm!r}'
            )
        check_stem(self.stem)
        if self.act not in ACTIVATION_GAINS:
            raise ValueError(
                f'act must be one of {tuple(ACTIVATION_GAINS)} (each has its own gain), '
                f'got {self.act!r}'
            )
        min_size = stem_stride(self.stem) * 2 ** (len(self.stage_sizes) - 1)
        check_images(x, model=type(self).__name__, min_size=min_size)
        base_act, gamma = ACTIVATIONS[self.act], ACTIVATION_GAINS[self.act]
        act = lambda h: base_act(h) * gamma
        conv = functools.partial(self.conv, dtype=self.dtype)

        stem_conv = functools.partial(conv, use_bias=False)
        x = resnet_stem(x, stem=self.stem, conv=stem_conv, width=self.width)

        expected_std = 1.0
        for filters, strides, name in residual_blocks(self.stage_sizes, self.width):
            x = NFBlock(
                filters,
                conv=conv,
                act=act,
                alpha=self.alpha,
                beta=1.0 / expected_std,
                bottleneck=self.bottleneck,
                strides=strides,
                name=name,
            )(x)
            # A transition block's output is its shortcut (a conv of a unit-variance
            # input) plus one branch: the variance restarts at 1 before growing. (The
            # first block's input is the stem's output, of unit variance already.)
            if strides > 1:
                expected_std = 1.0
            expected_std = (expected_std**2 + self.alpha**2) ** 0.5
        return pooled_head(
            act(x), self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01)
        )


_cifar = functools.partial(NFResNet, stem='cifar', width=16)
_imagenet = functools.partial(NFResNet, stem='imagenet', width=64)
VARIANTS = {
    'nf_resnet20': functools.partial(_cifar, stage_sizes=(3, 3, 3)),
    'nf_resnet32': functools.partial(_cifar, stage_sizes=(5, 5, 5)),
    'nf_resnet44': functools.partial(_cifar, stage_sizes=(7, 7, 7)),
    'nf_resnet56': functools.partial(_cifar, stage_sizes=(9, 9, 9)),
    'nf_resnet110': functools.partial(_cifar, stage_sizes=(18, 18, 18)),
    'nf_resnet18': functools.partial(_imagenet, stage_sizes=(2, 2, 2, 2)),
    'nf_resnet34': functools.partial(_imagenet, stage_sizes=(3, 4, 6, 3)),
    'nf_resnet50': functools.partial(_imagenet, stage_sizes=(3, 4, 6, 3), bottleneck=True),
    'nf_resnet101': functools.partial(_imagenet, stage_sizes=(3, 4, 23, 3), bottleneck=True),
    'nf_resnet152': functools.partial(_imagenet, stage_sizes=(3, 8, 36, 3), bottleneck=True),
}
