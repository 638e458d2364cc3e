"""Study files: what a study runs and reports, loaded and checked before anything trains.

A study file (``experiments/NAME.py``) defines ``get_study(arg=None)`` returning a
`Study`; ``arg`` is the text after ``:`` in ``--config=experiments/NAME.py:ARG``,
parsed like a config file's (``normlab.config.parse_arg``)::

    from normlab.studies import Report, Study, grid

    def get_study(arg=None):
        return Study(
            name='batch_size',                      # also the W&B group
            config='configs/digits_mlp.py',         # base config, as for normlab.main
            grid=grid.product(
                grid.axis('norm.name', ['batch_norm', 'group_norm']),
                grid.axis('batch_size', [2, 4, 8]),
            ),
            seeds=(0, 1),
            fixed={'num_epochs': 10.0},             # every run
            report=Report(metrics=('eval/error',), x='batch_size', series='norm.name'),
        )

Every run is ``python -m normlab.main --config=<config> --workdir=DIR/<run name>``
plus one ``--config.KEY=VALUE`` per override: the grid point, ``derive(point)``,
``fixed``, ``seed`` and ``study`` (the study name, which makes it the W&B group).
`load_study` checks every override key against the base config (suggesting the
closest key for a typo) and rejects an empty grid; the sweep then parses each run's
flags exactly as the launcher will (`normlab.studies.runner.plan`) before starting
any, so a bad study fails at once with one clear line.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from normlab.studies import grid as grid_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class StudyError(ValueError):
    """A study file that cannot run; the message is one line naming the fix."""


@dataclasses.dataclass(frozen=True)
class Axis:
    """A report axis computed from grid keys that vary together, shown as one value.

    Spectral norm in a GAN discriminator is ``discriminator.spectral_norm=True`` with
    ``discriminator.norm.name='none'``: two grid keys, one choice. Tabulated by its keys,
    it would be a ``spectral_norm=True`` row beside the norm name; as an axis it is one
    column named by the study::

        Axis(keys=('discriminator.norm.name', 'discriminator.spectral_norm'),
             value=lambda p: 'spectral' if p['discriminator.spectral_norm']
             else p['discriminator.norm.name'])

    Attributes:
      keys: the grid keys the axis replaces in tables and plots.
      value: ``value(point) -> the axis's value`` at a grid point (a dict of its keys).
    """

    keys: tuple[str, ...]
    value: Callable[[Mapping[str, Any]], Any]


@dataclasses.dataclass(frozen=True)
class Report:
    """What a study reports.

    Attributes:
      metrics: summary.json keys to tabulate and plot; the first is the headline.
        Keys ending in ``error`` (fractions) are shown in percent.
      x: the config key (or `axes` name) on the plots' x axis and the table's
        columns (None: none). Numbers are drawn on a value axis, anything else
        (norm names) as categories.
      series: the config key (or `axes` name) with one plot line (and one table row)
        per value; ``'metric'`` for one line per entry of `metrics`; None for a
        single line.
      log_x: log-scale x axis (batch sizes, learning rates).
      findings: ``findings(table) -> list of sentences`` computed from the
        aggregated `normlab.studies.results.Table`: the answer the study gives.
      plots: ``plots(records, outdir) -> list of PNG paths``: extra figures (for
        instance curves over training read from each run's metrics).
      axes: ``{name: Axis}``: axes shown in place of the grid keys they are computed
        from, in every table and plot; `x` and `series` may name them.
    """

    metrics: tuple[str, ...] = ('eval/error',)
    x: str | None = 'batch_size'
    series: str | None = 'norm.name'
    log_x: bool = True
    findings: Callable | None = None
    plots: Callable | None = None
    axes: Mapping[str, Axis] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Study:
    """A grid of training runs and how to report them.

    Attributes:
      name: the study's name: the W&B group of its runs, ``config.study``.
      config: the base config, ``path.py`` or ``path.py:arg`` as ``normlab.main``
        takes it; a relative path is looked up in the working directory, then in
        the repository root.
      grid: the points (dicts of dotted config keys) to run; see `grid`.
      seeds: each point runs once per seed (``config.seed``).
      derive: ``derive(point) -> dict`` of overrides that follow from the point;
        they are set on the run but do not name it.
      fixed: overrides for every run.
      env: environment variables of every run, e.g. ``XLA_FLAGS`` for simulated
        devices.
      report: what to tabulate and plot.
      description: the question the study answers, in a sentence or two.
      source: ``file.py[:arg]`` the study was loaded from (set by `load_study`).
    """

    name: str
    config: str
    grid: grid_lib.Grid
    seeds: tuple[int, ...] = (0,)
    derive: Callable[[grid_lib.Point], grid_lib.Point] | None = None
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    report: Report = dataclasses.field(default_factory=Report)
    description: str = ''
    source: str = ''

    @property
    def config_path(self) -> str:
        return resolve_path(self.config.partition(':')[0])

    @property
    def config_arg(self) -> str | None:
        _, sep, arg = self.config.partition(':')
        return arg if sep else None

    @property
    def config_flag(self) -> str:
        """The ``--config`` value of every run, with the path resolved."""
        arg = self.config_arg
        return self.config_path + (f':{arg}' if arg is not None else '')

    def runs(self) -> list[grid_lib.RunSpec]:
        """Every run, with the fixed overrides and the study name applied."""
        runs = grid_lib.expand(self.grid, self.seeds, self.derive)
        extra = {**self.fixed, 'study': self.name}
        return [dataclasses.replace(r, overrides={**r.overrides, **extra}) for r in runs]


def resolve_path(path: str) -> str:
    """`path` as given if it exists from here, else under the repository root."""
    if os.path.exists(path) or os.path.isabs(path):
        return path
    candidate = os.path.join(REPO_ROOT, path)
    return candidate if os.path.exists(candidate) else path


def _load_module(path: str, what: str):
    if not os.path.isfile(path):
        raise StudyError(f'{what} {path!r} does not exist')
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_base_config(study: Study) -> ml_collections.ConfigDict:
    module = _load_module(study.config_path, f'base config of study {study.name!r}')
    if not hasattr(module, 'get_config'):
        raise StudyError(f'{study.config_path} has no get_config(arg=None)')
    arg = study.config_arg
    return module.get_config(arg) if arg is not None else module.get_config()


def flat_keys(config: ml_collections.ConfigDict, prefix: str = '') -> dict[str, Any]:
    """Every overridable leaf as ``{'norm.name': 'batch_norm', ...}``."""
    out = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update(flat_keys(value, f'{prefix}{key}.'))
        else:
            out[f'{prefix}{key}'] = value
    return out


def load_study(spec: str) -> Study:
    """Loads ``path.py[:arg]``, calls ``get_study(arg)`` and validates the result."""
    path, sep, arg = spec.partition(':')
    module = _load_module(resolve_path(path), 'study file')
    if not hasattr(module, 'get_study'):
        raise StudyError(f'study file {path!r} defines no get_study(arg=None)')
    try:
        study = module.get_study(arg if sep else None)
    except ValueError as e:  # parse_arg's message names the valid arguments
        raise StudyError(f'{spec}: {e}') from e
    if not isinstance(study, Study):
        raise StudyError(f'{path}: get_study() returned {type(study).__name__}, not a Study')
    study = dataclasses.replace(study, source=spec)
    validate(study)
    return study


def _check_key(key: str, known: dict, study: Study, where: str) -> None:
    if key in known:
        return
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ''
    raise StudyError(
        f'study {study.name!r}: unknown config key {key!r} in {where} (not in {study.config}){hint}'
    )


def validate(study: Study) -> None:
    """Raises StudyError (one line) on anything that would make a run fail to start."""
    if not study.name or '/' in study.name:
        raise StudyError(f'study name {study.name!r} must be a non-empty name without "/"')
    if not study.grid:
        raise StudyError(f'study {study.name!r} has an empty grid: nothing to run')
    if not study.seeds or len(set(study.seeds)) != len(study.seeds):
        raise StudyError(f'study {study.name!r}: seeds={study.seeds!r} must be distinct ints')
    if not study.report.metrics:
        raise StudyError(f'study {study.name!r}: report.metrics is empty')
    known = flat_keys(load_base_config(study))
    try:
        runs = study.runs()
    except ValueError as e:
        raise StudyError(f'study {study.name!r}: {e}') from e
    grid_keys = {k for p in study.grid for k in p}
    derived = {k for r in runs for k in r.overrides} - grid_keys - set(study.fixed)
    for where, keys in (
        ('the grid', grid_keys),
        ('derive()', derived - {'seed', 'study'}),
        ('fixed', set(study.fixed)),
    ):
        for key in sorted(keys):
            if key in ('seed', 'study'):
                raise StudyError(
                    f'study {study.name!r}: {key!r} in {where}; the study sets it '
                    '(use seeds= for seeds)'
                )
            _check_key(key, known, study, where)
    for run in runs:
        for key, value in run.overrides.items():
            if value is None and known[key] is not None:
                raise StudyError(
                    f'study {study.name!r}: {key}=None in run {run.name}; None cannot be '
                    'passed as a --config flag (use an explicit value)'
                )
    report = study.report
    used: set[str] = set()
    for name, ax in report.axes.items():
        if name in grid_keys:
            raise StudyError(f'study {study.name!r}: report axis {name!r} is also a grid key')
        for key in ax.keys:
            if key not in grid_keys or key in used:
                raise StudyError(
                    f'study {study.name!r}: report axis {name!r} reads {key!r}, which is '
                    f'{"in another axis" if key in used else "not a grid key"} '
                    f'(grid keys: {", ".join(sorted(grid_keys))})'
                )
            used.add(key)
    axis_names = (grid_keys - used) | set(report.axes)  # a key read by an axis is shown as it
    if report.x is not None and report.x not in axis_names:
        raise StudyError(
            f'study {study.name!r}: report.x={report.x!r} is not a grid key or report axis '
            f'({", ".join(sorted(axis_names))})'
        )
    if report.series not in (None, 'metric') and report.series not in axis_names:
        raise StudyError(
            f'study {study.name!r}: report.series={report.series!r} is not a grid key, '
            "report axis, 'metric' or None"
        )
