"""ImageNet ResNets: v1.5 (post-activation) and v2 (pre-activation), any normalization.

v1 is He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016); "v1.5"
puts the stride-2 of a bottleneck block on its 3x3 conv instead of its first 1x1 conv
(as torchvision and flax ``examples/imagenet/models.py`` do), which is what the
published parameter counts refer to: with BatchNorm, resnet18 has 11,689,512 parameters
and resnet50 25,557,032 (running statistics are state, not parameters).

v2 is He et al., "Identity Mappings in Deep Residual Networks" (ECCV 2016): each block
computes ``x + F(act(norm(x)))`` so the skip path is a pure identity, and one final
norm-act precedes the pooling. As in TF-slim's ``resnet_v2``, the stem conv has no norm
or activation of its own because the first block pre-activates its input.

Every normalization site calls the injected ``norm`` factory, so any registered norm
(including ``none``) drops in::

    from normlab import models, norms

    model = models.create("resnet50", num_classes=1000, norm=norms.make_norm("group_norm"))
    variables = model.init(jax.random.key(0), images, train=False)
    logits, state = model.apply(variables, images, train=True, mutable=["batch_stats"])
    logits = model.apply(variables, images, train=False)  # deterministic, nothing mutated

Norms that carry their own activation (``frn``'s TLU, ``evonorm_*``) are still followed
by the model's activation, so every norm is a drop-in at the same sites; ``act='identity'``
removes the model's activations everywhere (including after each residual addition).

Geometry follows torchvision: 7x7/2 stem conv padded by 3, 3x3/2 max pool padded by 1,
3x3 convs padded by 1. The total stride is 32, so inputs must be at least 32x32; any
larger size (square or not) works.
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

_PAD1 = ((1, 1), (1, 1))
_PAD3 = ((3, 3), (3, 3))


SHORTCUTS = ('projection', 'identity')


def check_shortcut(shortcut: str) -> None:
    if shortcut not in SHORTCUTS:
        raise ValueError(f'shortcut must be one of {SHORTCUTS}, got {shortcut!r}')


def zero_pad_shortcut(x, filters: int, strides: int):
    """Parameter-free shortcut, "option A" of He et al. 2016: subsample by striding and
    zero-pad the new channels. Sampling ``x[::2]`` lines up with a 3x3 stride-2 conv
    padded by 1, whose output ``i`` is centred on input ``2 * i``."""
    x = x[:, ::strides, ::strides, :]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, filters - x.shape[-1])))


def _last_norm(norm: ModuleDef, zero_init: bool, name: str) -> nn.Module:
    # Zero-initialized scale makes each residual block start as the identity
    # (Goyal et al. 2017, "Accurate, Large Minibatch SGD"), as in flax's example.
    if zero_init:
        return norm(scale_init=nn.initializers.zeros_init(), name=name)
    return norm(name=name)


class BasicBlock(nn.Module):
    """Two 3x3 convs, post-activation: ``act(shortcut(x) + norm(conv(act(norm(conv(x))))))``.

    With ``norm_position='after_activation'`` the inner unit becomes conv-act-norm; the
    last conv of the branch has no activation before the addition, so it is conv-norm
    in both placements. On a stride or width change the shortcut is a 1x1 conv + norm
    (``shortcut='projection'``, "option B", the ImageNet models) or parameter-free
    (``'identity'``: ``zero_pad_shortcut``, "option A", the CIFAR models' default).
    """

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: int = 1
    norm_position: str = 'before_activation'
    zero_init_last_norm: bool = True
    shortcut: str = 'projection'

    @nn.compact
    def __call__(self, x):
        check_shortcut(self.shortcut)
        strides = (self.strides, self.strides)
        y = self.conv(self.filters, (3, 3), strides, padding=_PAD1, name='conv1')(x)
        y = norm_act(y, self.norm(name='norm1'), self.act, self.norm_position)
        y = self.conv(self.filters, (3, 3), padding=_PAD1, name='conv2')(y)
        y = _last_norm(self.norm, self.zero_init_last_norm, 'norm2')(y)
        shortcut = x
        if x.shape != y.shape:
            if self.shortcut == 'identity':
                shortcut = zero_pad_shortcut(x, self.filters, self.strides)
            else:
                shortcut = self.conv(self.filters, (1, 1), strides, name='proj_conv')(x)
                shortcut = self.norm(name='proj_norm')(shortcut)
        return self.act(shortcut + y)


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride: v1.5), 1x1 expand to ``4 * filters``."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: int = 1
    norm_position: str = 'before_activation'
    zero_init_last_norm: bool = True

    @nn.compact
    def __call__(self, x):
        strides = (self.strides, self.strides)
        y = self.conv(self.filters, (1, 1), name='conv1')(x)
        y = norm_act(y, self.norm(name='norm1'), self.act, self.norm_position)
        y = self.conv(self.filters, (3, 3), strides, padding=_PAD1, name='conv2')(y)
        y = norm_act(y, self.norm(name='norm2'), self.act, self.norm_position)
        y = self.conv(self.filters * 4, (1, 1), name='conv3')(y)
        y = _last_norm(self.norm, self.zero_init_last_norm, 'norm3')(y)
        shortcut = x
        if x.shape != y.shape:
            shortcut = self.conv(self.filters * 4, (1, 1), strides, name='proj_conv')(x)
            shortcut = self.norm(name='proj_norm')(shortcut)
        return self.act(shortcut + y)


class PreActBasicBlock(nn.Module):
    """v2 basic block: ``shortcut + conv(a(conv(a(x))))`` with ``a = norm-act`` (pre-activation).

    A projection shortcut reads the pre-activated input, an identity one the raw input
    (He et al. 2016b, and the common reference implementations).
    """

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: int = 1
    norm_position: str = 'before_activation'
    shortcut: str = 'projection'

    @nn.compact
    def __call__(self, x):
        check_shortcut(self.shortcut)
        strides = (self.strides, self.strides)
        preact = norm_act(x, self.norm(name='norm1'), self.act, self.norm_position)
        y = self.conv(self.filters, (3, 3), strides, padding=_PAD1, name='conv1')(preact)
        y = norm_act(y, self.norm(name='norm2'), self.act, self.norm_position)
        y = self.conv(self.filters, (3, 3), padding=_PAD1, name='conv2')(y)
        shortcut = x
        if x.shape != y.shape:
            if self.shortcut == 'identity':
                shortcut = zero_pad_shortcut(x, self.filters, self.strides)
            else:
                shortcut = self.conv(self.filters, (1, 1), strides, name='proj_conv')(preact)
        return shortcut + y


class PreActBottleneckBlock(nn.Module):
    """v2 bottleneck block; the stride sits on the 3x3 conv, as in v1.5."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: int = 1
    norm_position: str = 'before_activation'

    @nn.compact
    def __call__(self, x):
        strides = (self.strides, self.strides)
        preact = norm_act(x, self.norm(name='norm1'), self.act, self.norm_position)
        y = self.conv(self.filters, (1, 1), name='conv1')(preact)
        y = norm_act(y, self.norm(name='norm2'), self.act, self.norm_position)
        y = self.conv(self.filters, (3, 3), strides, padding=_PAD1, name='conv2')(y)
        y = norm_act(y, self.norm(name='norm3'), self.act, self.norm_position)
        y = self.conv(self.filters * 4, (1, 1), name='conv3')(y)
        shortcut = x
        if x.shape != y.shape:
            shortcut = self.conv(self.filters * 4, (1, 1), strides, name='proj_conv')(preact)
        return shortcut + y


class ResNet(nn.Module):
    """ImageNet ResNet v1.5 (flax ``examples/imagenet`` layout, torchvision geometry).

    Attributes:
      stage_sizes: blocks per stage, e.g. ``(2, 2, 2, 2)`` for resnet18. Stage ``i`` has
        ``width * 2**i`` filters (times 4 at a bottleneck's output); every stage but the
        first starts with a stride-2 block.
      block_cls: ``BasicBlock`` or ``BottleneckBlock``.
      num_classes: size of the logits.
      norm: normalization factory from ``normlab.norms.make_norm``; the model binds
        ``use_running_average=not train`` and ``dtype`` on it.
      width: filters of the stem and the first stage (64 in the paper).
      conv: convolution class, e.g. ``nn.Conv`` or ``normlab.norms.WeightStandardizedConv``
        (Qiao et al. 2019 pair it with group norm). Convs have no bias: a norm follows.
      act: activation, by name or as a function.
      norm_position: ``'before_activation'`` (paper) or ``'after_activation'``.
      zero_init_last_norm: zero-initialize the scale of each block's last norm.
      dtype: compute dtype; logits are returned in float32.
    """

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int
    norm: ModuleDef
    width: int = 64
    conv: ModuleDef = nn.Conv
    act: str | Callable = 'relu'
    norm_position: str = 'before_activation'
    zero_init_last_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        check_norm_position(self.norm_position)
        check_images(x, model=type(self).__name__, min_size=4 * 2 ** (len(self.stage_sizes) - 1))
        act = get_activation(self.act)
        conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(self.norm, use_running_average=not train, dtype=self.dtype)

        x = conv(self.width, (7, 7), (2, 2), padding=_PAD3, name='conv_init')(x)
        x = norm_act(x, norm(name='norm_init'), act, self.norm_position)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_PAD1)
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = self.block_cls(
                    self.width * 2**i,
                    conv=conv,
                    norm=norm,
                    act=act,
                    strides=2 if i > 0 and j == 0 else 1,
                    norm_position=self.norm_position,
                    zero_init_last_norm=self.zero_init_last_norm,
                    name=f'stage{i + 1}_block{j + 1}',
                )(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
        return as_logits(x)


class PreActResNet(nn.Module):
    """ImageNet pre-activation ResNet (v2). Same attributes as ``ResNet`` minus
    ``zero_init_last_norm``: a v2 block ends with a conv, not a norm."""

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int
    norm: ModuleDef
    width: int = 64
    conv: ModuleDef = nn.Conv
    act: str | Callable = 'relu'
    norm_position: str = 'before_activation'
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        check_norm_position(self.norm_position)
        check_images(x, model=type(self).__name__, min_size=4 * 2 ** (len(self.stage_sizes) - 1))
        act = get_activation(self.act)
        conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(self.norm, use_running_average=not train, dtype=self.dtype)

        x = conv(self.width, (7, 7), (2, 2), padding=_PAD3, name='conv_init')(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_PAD1)
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = self.block_cls(
                    self.width * 2**i,
                    conv=conv,
                    norm=norm,
                    act=act,
                    strides=2 if i > 0 and j == 0 else 1,
                    norm_position=self.norm_position,
                    name=f'stage{i + 1}_block{j + 1}',
                )(x)
        x = norm_act(x, norm(name='norm_final'), act, self.norm_position)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
        return as_logits(x)


# Variants are partials of the two classes (flax examples' convention); the registry in
# normlab.models maps names to them.
VARIANTS = {
    'resnet18': functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock),
    'resnet34': functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock),
    'resnet50': functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock),
    'resnet101': functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=BottleneckBlock),
    'resnet152': functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=BottleneckBlock),
    'preact_resnet18': functools.partial(
        PreActResNet, stage_sizes=(2, 2, 2, 2), block_cls=PreActBasicBlock
    ),
    'preact_resnet34': functools.partial(
        PreActResNet, stage_sizes=(3, 4, 6, 3), block_cls=PreActBasicBlock
    ),
    'preact_resnet50': functools.partial(
        PreActResNet, stage_sizes=(3, 4, 6, 3), block_cls=PreActBottleneckBlock
    ),
    'preact_resnet101': functools.partial(
        PreActResNet, stage_sizes=(3, 4, 23, 3), block_cls=PreActBottleneckBlock
    ),
    'preact_resnet152': functools.partial(
        PreActResNet, stage_sizes=(3, 8, 36, 3), block_cls=PreActBottleneckBlock
    ),
}
