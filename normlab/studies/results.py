"""A study's results: one record per run, ``results.csv``, and the table over seeds.

Records come from local work directories (``config.json`` + ``summary.json``) or
from W&B runs (their flattened config and summary), so the same code builds the
table for a sweep, for ``normlab.compare --workdir`` and for runs logged online
from other machines. A record's ``params`` are the study's keys (grid keys, derived
keys and ``seed``) read back from the run's own config, not from the study file.

`Table` groups finished runs by grid point and reduces each metric over seeds to
mean, standard deviation (ddof=1) and count; diverged runs are counted apart.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from flax import traverse_util

from normlab.studies.grid import RunSpec
from normlab.studies.study import Study

# Summary keys every results.csv has, after the study's own metrics.
STANDARD_METRICS = (
    'eval/error',
    'eval/loss',
    'train/error',
    'train/loss',
    'steps',
    'wall_s',
    'compile_s',
    'examples_per_s',
    'params',
)


@dataclasses.dataclass
class RunRecord:
    """One run as read back.

    Attributes:
      name: the run's name (its directory, its W&B name).
      status: ``finished``, ``diverged``, ``failed`` or ``incomplete`` (no summary).
      params: the study's keys and ``seed``, from the run's config.
      summary: its final metrics (summary.json or the W&B summary).
      history: ``history(keys) -> rows`` with ``step`` and those keys, in step order.
      message: why it failed, when it did.
    """

    name: str
    status: str
    params: dict[str, Any]
    summary: dict[str, Any]
    history: Callable[[Sequence[str]], list[dict]] = lambda keys: []
    message: str = ''


def study_keys(study: Study) -> tuple[list[str], list[str]]:
    """(grid keys, derived keys) in first-seen order."""
    grid_keys = list(dict.fromkeys(k for p in study.grid for k in p))
    derived = [
        k
        for r in study.runs()
        for k in r.overrides
        if k not in grid_keys and k not in study.fixed and k not in ('seed', 'study')
    ]
    return grid_keys, list(dict.fromkeys(derived))


def flatten_config(config: dict) -> dict[str, Any]:
    flat = traverse_util.flatten_dict(config, sep='.')
    return {k: tuple(v) if isinstance(v, list) else v for k, v in flat.items()}


def _no_history(keys) -> list:
    return []


def record_from(
    name: str, study: Study, flat_config: dict, summary: dict | None, history=None
) -> RunRecord:
    grid_keys, derived = study_keys(study)
    params = {k: flat_config.get(k) for k in [*grid_keys, *derived, 'seed']}
    summary = {} if summary is None else dict(summary)
    status = summary.get('status', 'incomplete')  # a run that has not finished has none
    return RunRecord(name, status, params, summary, _no_history if history is None else history)


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _local_history(path: str) -> Callable[[Sequence[str]], list[dict]]:
    def history(keys: Sequence[str]) -> list[dict]:
        if not os.path.exists(path):
            return []
        rows = []
        with open(path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    picked = {k: row[k] for k in keys if k in row}
                    if picked:
                        rows.append({'step': row['step'], **picked})
        return rows

    return history


def local_records(
    study: Study, workdir: str, runs: Sequence[RunSpec] | None = None
) -> list[RunRecord]:
    """Records of the runs in `workdir`'s subdirectories that belong to `study`.

    With `runs`, exactly those (a run without files is ``incomplete``, its params
    taken from the study); otherwise every subdirectory whose config.json has
    ``study == study.name``, sorted by name.
    """
    if runs is None:
        # The study's order (as the sweep writes them), then any other runs by name.
        order = {r.name: i for i, r in enumerate(study.runs())}
        names = sorted(
            (
                d
                for d in os.listdir(workdir)
                if os.path.exists(os.path.join(workdir, d, 'config.json'))
            ),
            key=lambda d: (order.get(d, len(order)), d),
        )
        planned = {}
    else:
        names = [r.name for r in runs]
        planned = {r.name: r.overrides for r in runs}
    records = []
    for name in names:
        run_dir = os.path.join(workdir, name)
        config_path = os.path.join(run_dir, 'config.json')
        if os.path.exists(config_path):
            flat = flatten_config(_read_json(config_path))
        else:
            flat = dict(planned.get(name, {}))
        if runs is None and flat.get('study') != study.name:
            continue
        summary_path = os.path.join(run_dir, 'summary.json')
        summary = _read_json(summary_path) if os.path.exists(summary_path) else None
        history = _local_history(os.path.join(run_dir, 'metrics.jsonl'))
        records.append(record_from(name, study, flat, summary, history))
    return records


def as_float(value) -> float:
    """A summary value as a float; NaN when absent or not numeric ("nan" strings too)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float('nan')


def csv_columns(study: Study) -> list[str]:
    grid_keys, derived = study_keys(study)
    metrics = list(dict.fromkeys([*study.report.metrics, *STANDARD_METRICS]))
    return ['run', 'status', *grid_keys, *derived, 'seed', *metrics, 'message']


def write_csv(path: str, study: Study, records: Sequence[RunRecord]) -> None:
    """``results.csv``: one row per run; metrics blank where the run has none."""
    columns = csv_columns(study)
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in records:
            row = {'run': r.name, 'status': r.status, 'message': r.message}
            for k, v in r.params.items():
                row[k] = _csv_value(v)
            for m in columns[columns.index('seed') + 1 : -1]:
                value = as_float(r.summary.get(m))
                row[m] = '' if math.isnan(value) else repr(value)
            writer.writerow(row)


def _csv_value(value) -> str:
    if isinstance(value, tuple | list):
        return ' '.join(str(v) for v in value)
    return '' if value is None else str(value)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One metric at one grid point, over seeds."""

    values: tuple[float, ...]  # finished runs
    diverged: int = 0
    expected: int = 0  # runs of this point that were read (any status)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n if self.values else float('nan')

    @property
    def std(self) -> float:
        if self.n < 2:
            return 0.0 if self.values else float('nan')
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))


class Table:
    """Metrics per grid point, reduced over seeds.

    ``table.cell('eval/error', **{'norm.name': 'batch_norm', 'batch_size': 2})``
    finds a point by (a subset of) its keys; ``table.values(key)`` lists a key's
    values in grid order. Runs are grouped by the grid keys (``keys``); each point
    also holds the value of every `normlab.studies.study.Axis` of the report, and
    ``axes`` lists what tables and plots show: each report axis in place of the grid
    keys it reads, the other grid keys as they are.
    """

    def __init__(self, study: Study, records: Sequence[RunRecord]):
        self.study = study
        self.keys, _ = study_keys(study)
        derived = study.report.axes
        read = {k: name for name, ax in derived.items() for k in ax.keys}
        self.axes = list(dict.fromkeys(read.get(k, k) for k in self.keys))
        self.metrics = list(study.report.metrics)
        self.records = list(records)
        groups: dict[tuple, list[RunRecord]] = {}
        for point in study.grid:  # grid order first, then any extra points read
            groups.setdefault(self._key(point), [])
        for r in records:
            groups.setdefault(self._key(r.params), []).append(r)
        self.points: list[dict] = []
        self.cells: list[dict[str, Cell]] = []
        for key, runs in groups.items():
            if not runs:
                continue
            point = dict(zip(self.keys, key, strict=True))
            self.points.append({**point, **{n: ax.value(point) for n, ax in derived.items()}})
            self.cells.append({m: self._cell(runs, m) for m in self.metrics})

    def _key(self, params: dict) -> tuple:
        return tuple(_hashable(params.get(k)) for k in self.keys)

    @staticmethod
    def _cell(runs: Sequence[RunRecord], metric: str) -> Cell:
        values = []
        for r in runs:
            value = as_float(r.summary.get(metric)) if r.status == 'finished' else math.nan
            if not math.isnan(value):
                values.append(value)
        diverged = sum(r.status == 'diverged' for r in runs)
        return Cell(tuple(values), diverged, len(runs))

    def values(self, key: str) -> list:
        return list(dict.fromkeys(p[key] for p in self.points))

    def cell(self, metric: str, **where) -> Cell:
        """The cell whose point matches `where` (dotted keys via ``**{...}``)."""
        matches = [
            c[metric]
            for p, c in zip(self.points, self.cells, strict=True)
            if all(_hashable(p.get(k)) == _hashable(v) for k, v in where.items())
        ]
        if len(matches) != 1:
            raise KeyError(f'{len(matches)} grid points match {where}')
        return matches[0]

    def differences(self, a: str, b: str, **where) -> list[float]:
        """``a - b`` of each finished run whose params match `where` (two metrics of one
        run, e.g. test minus train error: seed noise both share cancels)."""
        out = []
        for r in self.records:
            if r.status != 'finished' or any(r.params.get(k) != v for k, v in where.items()):
                continue
            value = as_float(r.summary.get(a)) - as_float(r.summary.get(b))
            if not math.isnan(value):
                out.append(value)
        return out

    def has(self, **where) -> bool:
        return any(
            all(_hashable(p.get(k)) == _hashable(v) for k, v in where.items()) for p in self.points
        )


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value
