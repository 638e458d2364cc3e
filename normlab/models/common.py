"""Small pieces every model family shares: activations, where the norm sits, input checks,
the ResNet stems, stage layout and pooled head.

Nothing here builds a normalization layer: models receive a ``norm`` factory (a
``ModuleDef`` made by ``normlab.norms.make_norm``) and only decide *where* to call it.
"""

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from normlab.norms import ModuleDef

Array = Any

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    'relu': nn.relu,
    'sigmoid': nn.sigmoid,
    'tanh': nn.tanh,
    'gelu': nn.gelu,
    'silu': nn.silu,
    'elu': nn.elu,
    'leaky_relu': nn.leaky_relu,
    'identity': lambda x: x,
}

NORM_POSITIONS = ('before_activation', 'after_activation')
STEMS = ('imagenet', 'cifar')
PAD1 = ((1, 1), (1, 1))  # a 3x3 conv or pool keeps its input's side (at stride 1)
PAD3 = ((3, 3), (3, 3))


def get_activation(act: str | Callable[[Array], Array]) -> Callable[[Array], Array]:
    """Resolves an activation given by name (configs) or as a function (Python callers)."""
    if callable(act):
        return act
    if act not in ACTIVATIONS:
        raise ValueError(f'unknown activation {act!r}; valid names: {", ".join(ACTIVATIONS)}')
    return ACTIVATIONS[act]


def check_norm_position(norm_position: str) -> None:
    if norm_position not in NORM_POSITIONS:
        raise ValueError(f'norm_position must be one of {NORM_POSITIONS}, got {norm_position!r}')


def norm_act(
    x: Array,
    normalize: Callable[[Array], Array],
    act: Callable[[Array], Array],
    norm_position: str,
) -> Array:
    """Applies a normalization and an activation in the requested order.

    ``'before_activation'`` is ``act(norm(x))``, the placement of Ioffe & Szegedy (2015),
    who normalize the pre-activation ``Wu + b`` so the nonlinearity sees a stable input.
    ``'after_activation'`` is ``norm(act(x))``, the placement some practitioners report
    works as well or better; studying the difference is what the option is for.
    """
    if norm_position == 'before_activation':
        return act(normalize(x))
    if norm_position == 'after_activation':
        return normalize(act(x))
    raise ValueError(f'norm_position must be one of {NORM_POSITIONS}, got {norm_position!r}')


def scaled_lecun_normal(scale: float) -> Callable:
    """flax's default kernel init (LeCun normal: truncated normal, variance 1/fan_in)
    with every weight multiplied by `scale`: variance ``scale**2 / fan_in``.

    ``scale=1`` is exactly ``nn.initializers.lecun_normal()``; an init-scale study
    sweeps it to ask how careful the initialization must be.
    """
    if not scale > 0:
        raise ValueError(f'kernel_init_scale must be positive, got {scale}')
    return nn.initializers.variance_scaling(scale**2, 'fan_in', 'truncated_normal')


def check_images(x: Array, *, model: str, min_size: int) -> None:
    """Raises a ValueError unless ``x`` is an NHWC batch at least ``min_size`` on each side.

    ``min_size`` is the network's total stride: below it, the last stages would keep
    downsampling a 1x1 map and see nothing but padding.
    """
    if x.ndim != 4:
        raise ValueError(
            f'{model} expects NHWC images (rank 4), got an input of shape {tuple(x.shape)}'
        )
    height, width = x.shape[1], x.shape[2]
    if height < min_size or width < min_size:
        raise ValueError(
            f'{model} needs images of at least {min_size}x{min_size} (its total stride); '
            f'got an input of shape {tuple(x.shape)}'
        )


def as_logits(x: Array) -> Array:
    """Logits leave every model in float32, whatever the compute dtype."""
    return jnp.asarray(x, jnp.float32)


def check_stem(stem: str) -> None:
    if stem not in STEMS:
        raise ValueError(f'stem must be one of {STEMS}, got {stem!r}')


def stem_stride(stem: str) -> int:
    """How much a ResNet stem downsamples: 4 for ImageNet's, 1 for CIFAR's."""
    check_stem(stem)
    return 4 if stem == 'imagenet' else 1


def resnet_stem(
    x: Array,
    *,
    stem: str,
    conv: ModuleDef,
    width: int,
    after_conv: Callable[[Array], Array] = lambda h: h,
) -> Array:
    """A ResNet's stem, its submodules named as the caller's.

    ``'imagenet'`` is He et al.'s 7x7/2 conv and 3x3/2 max pool, padded as in
    torchvision (total stride 4); ``'cifar'`` their Section 4.2 3x3 conv (stride 1).
    ``after_conv`` runs between the conv and the pool: a post-activation ResNet's
    norm-act; pre-activation and normalizer-free ResNets have none there.
    """
    check_stem(stem)
    if stem == 'imagenet':
        x = after_conv(conv(width, (7, 7), (2, 2), padding=PAD3, name='conv_init')(x))
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=PAD1)
    return after_conv(conv(width, (3, 3), padding=PAD1, name='conv_init')(x))


def residual_blocks(stage_sizes: Sequence[int], width: int) -> Iterator[tuple[int, int, str]]:
    """``(filters, strides, name)`` of each block of a ResNet, in order.

    Stage ``i`` (0-based) has ``width * 2**i`` filters and every stage but the first
    starts with a stride-2 block; blocks are named ``stage{i+1}_block{j+1}``.
    """
    for i, num_blocks in enumerate(stage_sizes):
        for j in range(num_blocks):
            yield width * 2**i, 2 if i > 0 and j == 0 else 1, f'stage{i + 1}_block{j + 1}'


def pooled_head(x: Array, num_classes: int, *, dtype: Any, **dense_kwargs) -> Array:
    """Global average pooling and a linear classifier named ``head``: float32 logits."""
    x = jnp.mean(x, axis=(1, 2))
    return as_logits(nn.Dense(num_classes, dtype=dtype, name='head', **dense_kwargs)(x))
