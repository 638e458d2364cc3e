"""Small pieces every model family shares: activations, where the norm sits, input checks.

Nothing here builds a normalization layer: models receive a ``norm`` factory (a
``ModuleDef`` made by ``normlab.norms.make_norm``) and only decide *where* to call it.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

ModuleDef = Any
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
