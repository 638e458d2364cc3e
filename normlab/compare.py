"""Rebuilds a study's table, plots and report from finished runs, local or in W&B.

    python -m normlab.compare --workdir=runs/batch_size
    python -m normlab.compare --wandb_project=ENTITY/normlab --wandb_group=batch_size \\
        --out_dir=runs/batch_size_wandb [--config=experiments/batch_size.py]

Locally it reads every ``DIR/*/config.json`` + ``summary.json`` that belongs to the
study (``config.study``), so runs copied in from other machines count too; the
study file comes from ``DIR/study.json`` (written by the sweep) or ``--config``.
From W&B it reads the group's runs with ``wandb.Api`` (credentials needed; it
fails at once without them) and the study file from the group's summary run or
``--config``. Writes results.csv, report.md and plots to ``--out_dir`` (default:
the work directory) and prints the table: the same table the sweep printed.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

_WORKDIR = flags.DEFINE_string('workdir', None, "A sweep's work directory.")
_CONFIG = flags.DEFINE_string(
    'config', None, 'Study file, experiments/NAME.py[:arg] (default: from the runs).'
)
_PROJECT = flags.DEFINE_string('wandb_project', None, 'ENTITY/PROJECT to read runs from.')
_GROUP = flags.DEFINE_string('wandb_group', None, 'W&B group (the study name).')
_OUT = flags.DEFINE_string('out_dir', None, 'Where to write (default: --workdir).')


def fail(message: str):
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    from normlab.studies import workflows
    from normlab.studies.study import StudyError
    from normlab.studies.wandb_runs import WandbUnavailable

    local = _WORKDIR.value is not None
    if local == bool(_PROJECT.value or _GROUP.value) or (
        not local and not (_PROJECT.value and _GROUP.value)
    ):
        fail('give either --workdir=DIR or both --wandb_project=ENTITY/PROJECT and --wandb_group=G')
    out_dir = _OUT.value
    try:
        if local:
            out_dir = out_dir if out_dir is not None else _WORKDIR.value
            out, count = workflows.compare_local(
                _WORKDIR.value, config=_CONFIG.value, out_dir=out_dir
            )
        else:
            if out_dir is None:
                out_dir = os.path.join('runs', f'compare_{_GROUP.value}')
            out, count = workflows.compare_wandb(
                _PROJECT.value, _GROUP.value, config=_CONFIG.value, out_dir=out_dir
            )
    except (StudyError, WandbUnavailable) as e:
        fail(str(e))
    print(f'\n{out.tables_text}\n')
    print('\n'.join(f'- {f}' for f in out.findings))
    print(
        f'\nwrote {os.path.join(out_dir, "report.md")}, results.csv, '
        f'{", ".join(out.plot_paths) or "no plots"} ({count} runs)'
    )


if __name__ == '__main__':
    app.run(main)
