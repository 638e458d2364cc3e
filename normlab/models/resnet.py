"""ResNets: one ``ResNet`` for v1.5 (post-activation) and v2 (pre-activation), any norm.

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

The ImageNet variants registered here (``resnet18`` ... ``resnet152`` and their
``preact_`` twins) follow torchvision's geometry: 7x7/2 stem conv padded by 3, 3x3/2 max
pool padded by 1, 3x3 convs padded by 1. The total stride is 32, so inputs must be at
least 32x32; any larger size (square or not) works. The CIFAR variants
(``normlab.models.cifar_resnet``) are the same class with a 3x3 stem and identity
shortcuts.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from normlab.models.common import (
    PAD1,
    check_images,
    check_norm_position,
    get_activation,
    norm_act,
    pooled_head,
    residual_blocks,
    resnet_stem,
    stem_stride,
)
from normlab.norms import ModuleDef

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


def _shortcut(block: nn.Module, x, y, *, project: Any, norm: ModuleDef | None):
    """The skip path of ``block``, whose residual branch maps ``x`` to ``y``.

    ``x`` itself while the shape is kept; on a stride or width change either
    ``zero_pad_shortcut(x)`` (``block.shortcut == 'identity'``) or a strided 1x1 conv of
    ``project`` followed by ``norm`` (``'projection'``, "option B"; v2 blocks project
    their pre-activated input and pass ``norm=None``).
    """
    check_shortcut(block.shortcut)
    if x.shape == y.shape:
        return x
    features = y.shape[-1]
    if block.shortcut == 'identity':
        return zero_pad_shortcut(x, features, block.strides)
    strides = (block.strides, block.strides)
    shortcut = block.conv(features, (1, 1), strides, name='proj_conv')(project)
    return shortcut if norm is None else norm(name='proj_norm')(shortcut)


def _last_norm(norm: ModuleDef, zero_init: bool, name: str) -> nn.Module:
    # Zero-initialized scale makes each residual block start as the identity
    # (Goyal et al. 2017, "Accurate, Large Minibatch SGD"), as in flax's example.
    if zero_init:
        return norm(scale_init=nn.initializers.zeros_init(), name=name)
    return norm(name=name)


class _Block(nn.Module):
    """What every residual block takes; ``ResNet`` passes the same fields to each."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: int = 1
    norm_position: str = 'before_activation'
    shortcut: str = 'projection'


class BasicBlock(_Block):
    """Two 3x3 convs, post-activation: ``act(shortcut(x) + norm(conv(act(norm(conv(x))))))``.

    With ``norm_position='after_activation'`` the inner unit becomes conv-act-norm; the
    last conv of the branch has no activation before the addition, so it is conv-norm
    in both placements. On a stride or width change the shortcut is a 1x1 conv + norm
    (``shortcut='projection'``, "option B", the ImageNet models) or parameter-free
    (``'identity'``: ``zero_pad_shortcut``, "option A", the CIFAR models' default).
    """

    zero_init_last_norm: bool = True

    @nn.compact
    def __call__(self, x):
        strides = (self.strides, self.strides)
        y = self.conv(self.filters, (3, 3), strides, padding=PAD1, name='conv1')(x)
        y = norm_act(y, self.norm(name='norm1'), self.act, self.norm_position)
        y = self.conv(self.filters, (3, 3), padding=PAD1, name='conv2')(y)
        y = _last_norm(self.norm, self.zero_init_last_norm, 'norm2')(y)
        return self.act(_shortcut(self, x, y, project=x, norm=self.norm) + y)


class BottleneckBlock(_Block):
    """1x1 reduce, 3x3 (carrying the stride: v1.5), 1x1 expand to ``4 * filters``."""

    zero_init_last_norm: bool = True

    @nn.compact
    def __call__(self, x):
        strides = (self.strides, self.strides)
        y = self.conv(self.filters, (1, 1), name='conv1')(x)
        y = norm_act(y, self.norm(name='norm1'), self.act, self.norm_position)
        y = self.conv(self.filters, (3, 3), strides, padding=PAD1, name='conv2')(y)
        y = norm_act(y, self.norm(name='norm2'), self.act, self.norm_position)
        y = self.conv(self.filters * 4, (1, 1), name='conv3')(y)
        y = _last_norm(self.norm, self.zero_init_last_norm, 'norm3')(y)
        return self.act(_shortcut(self, x, y, project=x, norm=self.norm) + y)


class PreActBasicBlock(_Block):
    """v2 basic block: ``shortcut + conv(a(conv(a(x))))`` with ``a = norm-act`` (pre-activation).

    A projection shortcut reads the pre-activated input, an identity one the raw input
    (He et al. 2016b, and the common reference implementations).
    """

    @nn.compact
    def __call__(self, x):
        strides = (self.strides, self.strides)
        preact = norm_act(x, self.norm(name='norm1'), self.act, self.norm_position)
        y = self.conv(self.filters, (3, 3), strides, padding=PAD1, name='conv1')(preact)
        y = norm_act(y, self.norm(name='norm2'), self.act, self.norm_position)
        y = self.conv(self.filters, (3, 3), padding=PAD1, name='conv2')(y)
        return _shortcut(self, x, y, project=preact, norm=None) + y


class PreActBottleneckBlock(_Block):
    """v2 bottleneck block; the stride sits on the 3x3 conv, as in v1.5."""

    @nn.compact
    def __call__(self, x):
        strides = (self.strides, self.strides)
        preact = norm_act(x, self.norm(name='norm1'), self.act, self.norm_position)
        y = self.conv(self.filters, (1, 1), name='conv1')(preact)
        y = norm_act(y, self.norm(name='norm2'), self.act, self.norm_position)
        y = self.conv(self.filters, (3, 3), strides, padding=PAD1, name='conv2')(y)
        y = norm_act(y, self.norm(name='norm3'), self.act, self.norm_position)
        y = self.conv(self.filters * 4, (1, 1), name='conv3')(y)
        return _shortcut(self, x, y, project=preact, norm=None) + y


# (bottleneck, preact) -> block.
BLOCKS = {
    (False, False): BasicBlock,
    (True, False): BottleneckBlock,
    (False, True): PreActBasicBlock,
    (True, True): PreActBottleneckBlock,
}


class ResNet(nn.Module):
    """A ResNet (flax ``examples/imagenet`` layout): stem, stages of residual blocks,
    global average pooling, a linear head.

    Attributes:
      stage_sizes: blocks per stage, e.g. ``(2, 2, 2, 2)`` for resnet18, ``(3, 3, 3)`` for
        resnet20. Stage ``i`` has ``width * 2**i`` filters (times 4 at a bottleneck's
        output); every stage but the first starts with a stride-2 block.
      num_classes: size of the logits.
      norm: normalization factory from ``normlab.norms.make_norm``; the model binds
        ``use_running_average=not train`` and ``dtype`` on it.
      stem: ``'imagenet'`` (7x7/2 conv + 3x3/2 max pool) or ``'cifar'`` (3x3 conv).
      bottleneck: bottleneck blocks (1x1, 3x3, 1x1) instead of basic ones (3x3, 3x3).
      preact: pre-activation (v2) blocks: no norm-act after the stem conv, one final
        norm-act before the pooling.
      shortcut: on a stride or width change, ``'projection'`` (1x1 conv, plus a norm in
        v1) or ``'identity'`` (zero-padded, no parameters).
      width: filters of the stem and the first stage (64 in the ImageNet paper, 16 in
        its CIFAR section).
      conv: convolution class, e.g. ``nn.Conv`` or ``normlab.norms.WeightStandardizedConv``
        (Qiao et al. 2019 pair it with group norm). Convs have no bias: a norm follows.
      act: activation, by name or as a function.
      norm_position: ``'before_activation'`` (paper) or ``'after_activation'``.
      zero_init_last_norm: zero-initialize the scale of each block's last norm (v1 only:
        a v2 block ends with a conv, so ``preact=True`` needs it False).
      dtype: compute dtype; logits are returned in float32.
    """

    stage_sizes: Sequence[int]
    num_classes: int
    norm: ModuleDef
    stem: str = 'imagenet'
    bottleneck: bool = False
    preact: bool = False
    shortcut: str = 'projection'
    width: int = 64
    conv: ModuleDef = nn.Conv
    act: str | Callable = 'relu'
    norm_position: str = 'before_activation'
    zero_init_last_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        check_norm_position(self.norm_position)
        check_shortcut(self.shortcut)
        if self.preact and self.zero_init_last_norm:
            raise ValueError(
                'a pre-activation block ends with a conv, not a norm: zero_init_last_norm must '
                'be False with preact=True'
            )
        min_size = stem_stride(self.stem) * 2 ** (len(self.stage_sizes) - 1)
        check_images(x, model=type(self).__name__, min_size=min_size)
        act = get_activation(self.act)
        conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(self.norm, use_running_average=not train, dtype=self.dtype)

        def stem_norm_act(h):
            return norm_act(h, norm(name='norm_init'), act, self.norm_position)

        after_conv = (lambda h: h) if self.preact else stem_norm_act
        x = resnet_stem(x, stem=self.stem, conv=conv, width=self.width, after_conv=after_conv)
        block_cls = BLOCKS[self.bottleneck, self.preact]
        last_norm = {} if self.preact else {'zero_init_last_norm': self.zero_init_last_norm}
        for filters, strides, name in residual_blocks(self.stage_sizes, self.width):
            x = block_cls(
                filters,
                conv=conv,
                norm=norm,
                act=act,
                strides=strides,
                norm_position=self.norm_position,
                shortcut=self.shortcut,
                name=name,
                **last_norm,
            )(x)
        if self.preact:
            x = norm_act(x, norm(name='norm_final'), act, self.norm_position)
        return pooled_head(x, self.num_classes, dtype=self.dtype)


# Pre-activation ResNets (v2) are ResNets with pre-activation blocks.
PreActResNet = functools.partial(ResNet, preact=True, zero_init_last_norm=False)

# Variants are partials (flax examples' convention); the registry in normlab.models maps
# names to them. depth -> (stage_sizes, bottleneck).
_DEPTHS = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}
VARIANTS = {}
for _depth, (_sizes, _bottleneck) in _DEPTHS.items():
    for _prefix, _cls in (('', ResNet), ('preact_', PreActResNet)):
        VARIANTS[f'{_prefix}resnet{_depth}'] = functools.partial(
            _cls, stage_sizes=_sizes, bottleneck=_bottleneck
        )
del _depth, _sizes, _bottleneck, _prefix, _cls
