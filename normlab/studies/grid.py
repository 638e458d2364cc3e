"""Grids of config overrides: axes, products, zips, and the runs they expand to.

A grid is a tuple of *points*; a point is a dict of dotted config keys to values,
exactly what ``--config.KEY=VALUE`` flags set::

    from normlab.studies import grid

    points = grid.product(
        grid.axis('norm.name', ['batch_norm', 'group_norm']),
        grid.axis('batch_size', [2, 4]),
    )
    # ({'norm.name': 'batch_norm', 'batch_size': 2}, {'norm.name': 'batch_norm', ...}, ...)

    grid.zipped({'norm.name': ['group_norm', 'layer_norm'], 'norm.num_groups': [10, 1]})
    # ({'norm.name': 'group_norm', 'norm.num_groups': 10}, {'norm.name': 'layer_norm', ...})

``product`` varies its last argument fastest (like nested for-loops); ``union``
concatenates grids whose points need different keys. Values that follow from
others (a learning rate scaled with the batch size) belong in the study's
``derive`` function, which keeps them out of the run names.

`expand` turns a study's grid, ``derive`` and seeds into `RunSpec`s, each named
from its grid point: ``norm=group_norm,batch_size=16,seed=0`` (the last part of
each dotted key; ``norm.name`` is ``norm``). Names are safe as directory names.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

Point = dict[str, Any]
Grid = tuple[Point, ...]


def axis(key: str, values: Iterable) -> Grid:
    """One key over a list of values."""
    return tuple({key: v} for v in values)


def zipped(columns: Mapping[str, Sequence]) -> Grid:
    """Keys that vary together: the i-th point takes the i-th value of every key."""
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f'zipped keys need equally long value lists, got lengths {lengths}')
    keys = list(columns)
    return tuple(dict(zip(keys, row, strict=True)) for row in zip(*columns.values(), strict=True))


def product(*grids: Grid) -> Grid:
    """Every combination of one point from each grid (the last varies fastest)."""
    out = []
    for combo in itertools.product(*grids):
        point: Point = {}
        for part in combo:
            clash = set(point) & set(part)
            if clash:
                raise ValueError(f'product of grids that both set {sorted(clash)}')
            point.update(part)
        out.append(point)
    return tuple(out)


def union(*grids: Grid) -> Grid:
    """The points of every grid, in order."""
    return tuple(p for g in grids for p in g)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run of a study.

    Attributes:
      name: directory name and W&B run name, from the grid point and the seed.
      point: the grid point (the keys that name the run), without the seed.
      overrides: every ``--config.KEY=VALUE`` the run sets: the point, the derived
        values and ``seed``, in that order.
      seed: the value of ``config.seed``.
    """

    name: str
    point: Point
    overrides: Point
    seed: int


_UNSAFE = re.compile(r'[^A-Za-z0-9._+=,-]')


def format_value(value) -> str:
    """A value as ``--config.KEY=VALUE`` writes it (the form config_flags parses)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple | list):
        return '(' + ','.join(format_value(v) for v in value) + (',)' if len(value) == 1 else ')')
    return str(value)


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Dotted keys to short names: the last part (``name`` -> its parent), unless ambiguous."""

    def short(key):
        parts = key.split('.')
        return parts[-2] if parts[-1] == 'name' and len(parts) > 1 else parts[-1]

    names = [short(k) for k in keys]
    return {k: (s if names.count(s) == 1 else k) for k, s in zip(keys, names, strict=True)}


def run_name(point: Point, seed: int, *, keys: Sequence[str] | None = None) -> str:
    """``norm=group_norm,batch_size=16,seed=0``; a tuple is ``100x100``; characters
    unsafe in paths become ``_``."""
    shorts = short_keys(list(keys if keys is not None else point))

    def text(v):
        return 'x'.join(map(format_value, v)) if isinstance(v, tuple | list) else format_value(v)

    parts = [f'{shorts[k]}={text(v)}' for k, v in point.items()] + [f'seed={seed}']
    return _UNSAFE.sub('_', ','.join(parts))


def expand(
    points: Grid,
    seeds: Sequence[int],
    derive: Callable[[Point], Point] | None = None,
) -> list[RunSpec]:
    """Every (grid point, seed) as a `RunSpec`; raises ValueError on duplicate names."""
    all_keys = list(dict.fromkeys(k for p in points for k in p))
    runs, seen = [], {}
    for point in points:
        derived = dict(derive(dict(point))) if derive is not None else {}
        clash = set(derived) & set(point)
        if clash:
            raise ValueError(f'derive() returned keys already in the grid point: {sorted(clash)}')
        for seed in seeds:
            name = run_name(point, seed, keys=all_keys)
            if name in seen:
                raise ValueError(
                    f'two grid points give the run name {name!r}: {seen[name]}, {point}'
                )
            seen[name] = point
            overrides = {**point, **derived, 'seed': seed}
            runs.append(RunSpec(name=name, point=dict(point), overrides=overrides, seed=seed))
    return runs
