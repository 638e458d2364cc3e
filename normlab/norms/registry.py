"""`make_norm`: every activation normalization by name, as a `ModuleDef`.

Models take the result and call it like a layer class: ``norm()`` or
``norm(scale_init=zeros)``, after binding the mode once with
``functools.partial(norm, use_running_average=not train)`` (every registered
norm accepts that keyword; stateless ones ignore it). Every registered norm's
``__call__`` takes ``mask=`` (positions that count towards its statistics),
so padded batches never need faking.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Callable

import flax.linen as nn

from normlab.norms.batch_norm import BatchNorm
from normlab.norms.batch_renorm import BatchRenorm
from normlab.norms.identity import NoNorm
from normlab.norms.per_example import GroupNorm, InstanceNorm, LayerNorm, RMSNorm
from normlab.norms.response_norms import EvoNormB0, EvoNormS0, FilterResponseNorm

ModuleDef = Callable[..., nn.Module]

NORMS: dict[str, type[nn.Module]] = {}
# Registry defaults that differ from the class defaults, and why.
_DEFAULTS: dict[str, dict] = {}
# Options that, when the caller sets one, make the registry defaults not apply.
_UNLESS: dict[str, frozenset[str]] = {}
_STATEFUL: set[type[nn.Module]] = set()


def register(
    name: str,
    cls: type[nn.Module],
    *,
    stateful: bool = False,
    unless: tuple[str, ...] = (),
    **defaults,
) -> None:
    """Adds a norm; refuses a name registered twice.

    `defaults` replace the class defaults in `make_norm`, except when the caller
    sets any option named in `unless` (then the caller's choice is taken exactly).
    """
    if name in NORMS:
        raise ValueError(f'norm {name!r} is already registered (as {NORMS[name].__name__})')
    NORMS[name] = cls
    _DEFAULTS[name] = defaults
    _UNLESS[name] = frozenset(unless)
    if stateful:
        _STATEFUL.add(cls)


register('batch_norm', BatchNorm, stateful=True)
# Over (H, W, C) for feature maps: the LayerNorm of Ba et al. and of the GN paper.
register('layer_norm', LayerNorm, reduction_axes=None)
# 32 groups where the channels allow, fewer (of >= 2 channels) where they do not
# (16-channel CIFAR stages), so every model takes the registry defaults; a given
# num_groups or group_size is exact, as in flax.
_GROUP_OPTIONS = ('num_groups', 'group_size')
register('group_norm', GroupNorm, unless=_GROUP_OPTIONS, min_group_size=2)
register('instance_norm', InstanceNorm)
register('rms_norm', RMSNorm)
register('batch_renorm', BatchRenorm, stateful=True)
register('frn', FilterResponseNorm)
register('evonorm_b0', EvoNormB0, stateful=True)
register('evonorm_s0', EvoNormS0, unless=_GROUP_OPTIONS, min_group_size=2)
register('none', NoNorm)


def norm_fields(name: str) -> list[str]:
    """The keyword arguments `make_norm(name, ...)` accepts."""
    return [
        f.name
        for f in dataclasses.fields(_lookup(name))
        if f.init and f.name not in ('parent', 'name')
    ]


def _lookup(name: str) -> type[nn.Module]:
    if name not in NORMS:
        close = difflib.get_close_matches(str(name), NORMS, n=1)
        hint = f' (did you mean {close[0]!r}?)' if close else ''
        raise ValueError(f'unknown norm {name!r}{hint}; valid norms: {", ".join(NORMS)}')
    return NORMS[name]


def make_norm(name: str, **kwargs) -> ModuleDef:
    """A norm layer factory: ``make_norm('group_norm', num_groups=8)()``.

    Validates the keywords and their values now, not at the first call.
    """
    cls = _lookup(name)
    valid = norm_fields(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(
            f'make_norm({name!r}) got unknown option(s) {unknown}; valid: {", ".join(valid)}'
        )
    if not _UNLESS[name] & set(kwargs):
        kwargs = {**_DEFAULTS[name], **kwargs}
    cls(**kwargs)  # runs the field checks in __post_init__
    return functools.partial(cls, **kwargs)


def is_stateful(norm: ModuleDef | str) -> bool:
    """Whether a norm keeps running statistics in ``batch_stats``."""
    if isinstance(norm, str):
        return _lookup(norm) in _STATEFUL
    while isinstance(norm, functools.partial):
        norm = norm.func
    return isinstance(norm, type) and any(issubclass(norm, c) for c in _STATEFUL)
