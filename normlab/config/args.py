"""A config file's typed ``:key=value,...`` argument (big_vision's convention)."""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses a config file's ``:key=value,...`` argument, typed by `defaults`.

    ``get_config('norm=group_norm,smoke=True')`` with ``defaults=dict(norm='batch_norm',
    smoke=False)`` gives ``{'norm': 'group_norm', 'smoke': True}``; an unknown key or
    a value of the wrong type raises ValueError naming the valid keys.
    """
    out = dict(defaults)
    for item in filter(None, (arg or '').split(',')):
        key, sep, value = item.partition('=')
        if not sep or key not in defaults:
            raise ValueError(
                f'config argument {item!r} is not key=value with a key in {sorted(defaults)}'
            )
        kind = type(defaults[key])
        if kind is bool:
            if value.lower() not in ('true', 'false', '1', '0'):
                raise ValueError(f'config argument {key}={value!r} must be True or False')
            out[key] = value.lower() in ('true', '1')
        else:
            try:
                out[key] = kind(value)
            except ValueError as e:
                raise ValueError(
                    f'config argument {key}={value!r} must be a {kind.__name__}'
                ) from e
    return ml_collections.ConfigDict(out)
