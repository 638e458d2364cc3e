"""Argument checks shared by the layers: one clear ValueError per bad value."""

from __future__ import annotations


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


def check_group_spec(module: str, num_groups, group_size) -> None:
    """Exactly one of `num_groups`, `group_size`, a positive int (GroupNorm, EvoNorm-S0)."""
    if (num_groups is None) == (group_size is None):
        raise ValueError(
            f'{module}(num_groups={num_groups}, group_size={group_size}): give exactly one of '
            'them (num_groups=None to use group_size)'
        )
    for name, value in (('num_groups', num_groups), ('group_size', group_size)):
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f'{module}({name}={value!r}): must be a positive int')


def channel_groups(module: str, num_groups, group_size, channels: int) -> int:
    """The number of channel groups, or a ValueError naming the sizes and valid choices."""
    if group_size is not None:
        if channels % group_size:
            raise ValueError(
                f'{module}(group_size={group_size}) does not divide the {channels} channels '
                'of the input'
            )
        return channels // group_size
    if channels % num_groups:
        divisors = [d for d in range(1, channels + 1) if channels % d == 0]
        raise ValueError(
            f'{module}(num_groups={num_groups}) does not divide the {channels} channels of '
            f'the input; valid num_groups: {divisors}'
        )
    return num_groups
