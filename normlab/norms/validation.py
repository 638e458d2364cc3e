"""Argument checks shared by the layers: one clear ValueError per bad value."""

from __future__ import annotations

import jax.numpy as jnp


def check_epsilon(module: str, epsilon: float) -> None:
    if not epsilon > 0:
        raise ValueError(f'{module}(epsilon={epsilon}): epsilon must be a positive float')


def check_momentum(module: str, momentum: float) -> None:
    if not 0.0 <= momentum < 1.0:
        raise ValueError(
            f'{module}(momentum={momentum}): momentum is a decay in [0, 1) (flax convention; '
            'PyTorch momentum=0.1 is decay 0.9, see momentum_from_pytorch)'
        )


def check_positive_int(module: str, name: str, value, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f'{module}({name}={value!r}): {name} must be a positive int or None')


def check_real(module: str, *dtypes) -> None:
    """A clear error for complex inputs to a norm that has no complex convention."""
    for dtype in dtypes:
        if dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating):
            raise ValueError(
                f'{module} does not support complex inputs (got {jnp.dtype(dtype).name}); '
                'BatchNorm, LayerNorm, GroupNorm, InstanceNorm and RMSNorm do (as flax)'
            )


def check_group_spec(module: str, num_groups, group_size, min_group_size=None) -> None:
    """Exactly one of `num_groups`, `group_size`, a positive int (GroupNorm, EvoNorm-S0)."""
    if (num_groups is None) == (group_size is None):
        raise ValueError(
            f'{module}(num_groups={num_groups}, group_size={group_size}): give exactly one of '
            'them (num_groups=None to use group_size)'
        )
    for name, value in (
        ('num_groups', num_groups),
        ('group_size', group_size),
        ('min_group_size', min_group_size),
    ):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value <= 0
        ):
            raise ValueError(f'{module}({name}={value!r}): must be a positive int')


def channel_groups(module: str, num_groups, group_size, channels: int, min_group_size=None) -> int:
    """The number of channel groups, or a ValueError naming the sizes and valid choices.

    With `min_group_size` (and `num_groups`), `num_groups` is an upper bound: the
    largest divisor of `channels` not above it whose groups keep at least
    `min_group_size` channels, else one group.
    """
    if group_size is not None:
        if channels % group_size:
            raise ValueError(
                f'{module}(group_size={group_size}) does not divide the {channels} channels '
                'of the input'
            )
        return channels // group_size
    divisors = [d for d in range(1, channels + 1) if channels % d == 0]
    if min_group_size is not None:
        fits = [d for d in divisors if d <= num_groups and channels // d >= min_group_size]
        return max(fits, default=1)
    if channels % num_groups:
        raise ValueError(
            f'{module}(num_groups={num_groups}) does not divide the {channels} channels of '
            f'the input; valid num_groups: {divisors} (or set min_group_size to adapt)'
        )
    return num_groups
