"""Studies: grids of training runs, run by ``normlab.sweep`` and read back by ``normlab.compare``.

A study file in ``experiments/`` returns a `Study` (see `normlab.studies.study`):
a base config, a `grid` of overrides, seeds, and a `Report` saying what to tabulate.
Modules, in the order a sweep uses them:

* `grid`: axes, products and zips of overrides; run names.
* `study`: the `Study` / `Report` format, loading and validation.
* `command`: a run as ``normlab.main`` flags, and their parsing.
* `runner` (+ `worker`): executing runs, skipping finished ones, resuming the rest.
* `results`: records read back from work dirs or W&B, results.csv, the table over seeds.
* `report`, `plots`, `outputs`: report.md, PNGs, and the files a study writes.
* `wandb_runs`, `wandb_sweep`: the W&B summary run, reading runs, emitting a W&B sweep.
* `workflows`: sweep and compare end to end (what ``normlab.sweep`` / ``normlab.compare`` call).
"""

from normlab.studies import grid
from normlab.studies.study import Axis, Report, Study, StudyError, load_study

__all__ = ['Axis', 'Report', 'Study', 'StudyError', 'grid', 'load_study']
