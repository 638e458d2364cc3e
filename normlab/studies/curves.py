"""Numbers read off training curves (a run's metrics.jsonl history), for findings.

"Steps to reach 90% test accuracy" is only a measurement if the curve was
evaluated before and shortly after the crossing: `crossing` returns the first
evaluated step that meets the target together with the evaluated step before it,
so a finding can state its resolution, and `describe_crossings` words a set of
seeds' crossings honestly (a crossing at the first evaluation is an upper bound;
seeds that never cross are counted, not dropped).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from normlab.studies.results import Cell, RunRecord


@dataclasses.dataclass(frozen=True)
class Crossing:
    """Where one run's curve first met a target.

    Attributes:
      step: the first evaluated step meeting it; None if it never did.
      before: the evaluated step before `step` (None when `step` is the first).
    """

    step: int | None
    before: int | None = None


def crossing(rows: Sequence[dict], key: str, meets: Callable[[float], bool]) -> Crossing:
    """The first row of `rows` (history rows with ``step``) whose `key` meets the target."""
    before = None
    for row in rows:
        if key not in row:
            continue
        if meets(row[key]):
            return Crossing(row['step'], before)
        before = row['step']
    return Crossing(None, before)


def steps_to_error(record: RunRecord, target: float, key: str = 'eval/error') -> Crossing:
    """When a run's `key` (an error fraction) first fell to `target` or below."""
    return crossing(record.history([key]), key, lambda e: e <= target)


def describe_crossings(crossings: Sequence[Crossing]) -> str:
    """``'reached at step 35 ± 7 (evaluated every 5 steps there)'``, bounds and misses."""
    reached = [c for c in crossings if c.step is not None]
    if not reached:
        return f'never reached in training ({len(crossings)} of {len(crossings)} seeds)'
    steps = Cell(tuple(float(c.step) for c in reached))
    text = f'reached at step {steps.mean:.0f}'
    if steps.n > 1:
        text += f' ± {steps.std:.0f}'
    gaps = [c.step - c.before for c in reached if c.before is not None]
    if len(gaps) < len(reached):
        text += ' (an upper bound: at the first evaluation)'
    elif gaps:
        every = f'{min(gaps)}' if min(gaps) == max(gaps) else f'{min(gaps)}-{max(gaps)}'
        text += f' (evaluated every {every} steps there)'
    missed = len(crossings) - len(reached)
    if missed:
        text += f'; {missed} of {len(crossings)} seeds never got there'
    return text


def crossing_steps(crossings: Sequence[Crossing]) -> Cell | None:
    """The crossing steps over seeds as a `Cell`; None when some seed never crossed."""
    if not crossings or any(c.step is None for c in crossings):
        return None
    return Cell(tuple(float(c.step) for c in crossings))


def mean_steps(crossings: Sequence[Crossing]) -> float | None:
    """Mean crossing step over the seeds that crossed; None when some seed never did."""
    if not crossings or any(c.step is None for c in crossings):
        return None
    return sum(c.step for c in crossings) / len(crossings)


def spread(values: Sequence[float], fmt: str = '.2f') -> str:
    """``'1.23 ± 0.04'`` (mean ± std over seeds)."""
    cell = Cell(tuple(values))
    return f'{cell.mean:{fmt}}' + (f' ± {cell.std:{fmt}}' if cell.n > 1 else '')
