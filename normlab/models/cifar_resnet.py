"""CIFAR ResNets of He et al. 2016 (Section 4.2): resnet20/32/44/56/110 and their v2 variants.

The network is a 3x3 conv with 16 filters, then three stages of ``n`` basic blocks with
16, 32 and 64 filters (depth ``6n + 2``), the last two starting with a stride-2 block,
then global average pooling and a linear classifier. The paper's CIFAR experiments use
identity shortcuts everywhere, zero-padding the new channels when the width doubles
("option A", no parameters): with BatchNorm that gives resnet20 269,722 parameters.
``shortcut='projection'`` uses a 1x1 conv + norm instead ("option B").

The pre-activation variants (``preact_resnet20`` ...) follow He et al., "Identity
Mappings in Deep Residual Networks" (ECCV 2016): see ``normlab.models.resnet``.

Blocks are shared with the ImageNet family (``resnet.BasicBlock``, ``PreActBasicBlock``);
only the stem, the stage widths and the default shortcut differ. The total stride is 4,
so any input of at least 4x4 works (32x32 CIFAR, 28x28 MNIST, 8x8 digits ...)::

    model = models.create("resnet20", num_classes=10, norm=norms.make_norm("batch_norm"))
    variables = model.init(jax.random.key(0), images, train=False)
    logits, state = model.apply(variables, images, train=True, mutable=["batch_stats"])
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from normlab.models.common import (
    ModuleDef,
    as_logits,
    check_images,
    check_norm_position,
    get_activation,
    norm_act,
)
from normlab.models.resnet import BasicBlock, PreActBasicBlock, check_shortcut

_PAD1 = ((1, 1), (1, 1))


class CifarResNet(nn.Module):
    """Post-activation (v1) CIFAR ResNet.

    Attributes:
      stage_sizes: blocks per stage; ``(n, n, n)`` gives depth ``6n + 2``.
      num_classes: size of the logits.
      norm: normalization factory from ``normlab.norms.make_norm``.
      width: filters of the stem and first stage (16); stage ``i`` has ``width * 2**i``.
      shortcut: ``'identity'`` (zero-padded, the paper's CIFAR choice) or ``'projection'``.
      conv: convolution class (``nn.Conv`` or ``normlab.norms.WeightStandardizedConv``).
      act: activation, by name or as a function.
      norm_position: ``'before_activation'`` (paper) or ``'after_activation'``.
      zero_init_last_norm: zero-initialize the scale of each block's last norm.
      dtype: compute dtype; logits are returned in float32.
    """

    stage_sizes: Sequence[int]
    num_classes: int
    norm: ModuleDef
    width: int = 16
    shortcut: str = 'identity'
    conv: ModuleDef = nn.Conv
    act: str | Callable = 'relu'
    norm_position: str = 'before_activation'
    zero_init_last_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        check_norm_position(self.norm_position)
        check_shortcut(self.shortcut)
        check_images(x, model=type(self).__name__, min_size=2 ** (len(self.stage_sizes) - 1))
        act = get_activation(self.act)
        conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(self.norm, use_running_average=not train, dtype=self.dtype)

        x = conv(self.width, (3, 3), padding=_PAD1, name='conv_init')(x)
        x = norm_act(x, norm(name='norm_init'), act, self.norm_position)
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = BasicBlock(
                    self.width * 2**i,
                    conv=conv,
                    norm=norm,
                    act=act,
                    strides=2 if i > 0 and j == 0 else 1,
                    norm_position=self.norm_position,
                    zero_init_last_norm=self.zero_init_last_norm,
                    shortcut=self.shortcut,
                    name=f'stage{i + 1}_block{j + 1}',
                )(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
        return as_logits(x)


class PreActCifarResNet(nn.Module):
    """Pre-activation (v2) CIFAR ResNet: stem conv, pre-activation blocks, a final
    norm-act, pooling, classifier. Same attributes as ``CifarResNet`` minus
    ``zero_init_last_norm`` (a v2 block ends with a conv)."""

    stage_sizes: Sequence[int]
    num_classes: int
    norm: ModuleDef
    width: int = 16
    shortcut: str = 'identity'
    conv: ModuleDef = nn.Conv
    act: str | Callable = 'relu'
    norm_position: str = 'before_activation'
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        check_norm_position(self.norm_position)
        check_shortcut(self.shortcut)
        check_images(x, model=type(self).__name__, min_size=2 ** (len(self.stage_sizes) - 1))
        act = get_activation(self.act)
        conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(self.norm, use_running_average=not train, dtype=self.dtype)

        x = conv(self.width, (3, 3), padding=_PAD1, name='conv_init')(x)
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = PreActBasicBlock(
                    self.width * 2**i,
                    conv=conv,
                    norm=norm,
                    act=act,
                    strides=2 if i > 0 and j == 0 else 1,
                    norm_position=self.norm_position,
                    shortcut=self.shortcut,
                    name=f'stage{i + 1}_block{j + 1}',
                )(x)
        x = norm_act(x, norm(name='norm_final'), act, self.norm_position)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
        return as_logits(x)


VARIANTS = {}
for _n in (3, 5, 7, 9, 18):
    VARIANTS[f'resnet{6 * _n + 2}'] = functools.partial(CifarResNet, stage_sizes=(_n,) * 3)
    VARIANTS[f'preact_resnet{6 * _n + 2}'] = functools.partial(
        PreActCifarResNet, stage_sizes=(_n,) * 3
    )
del _n
