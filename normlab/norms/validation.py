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
