"""Runs a study: every grid point as a training run, then the table, plots and report.

    python -m normlab.sweep --config=experiments/batch_size.py --workdir=runs/batch_size \\
        --parallel=2
    python -m normlab.sweep --config=experiments/batch_size.py:seeds=3 --workdir=runs/bs3
    python -m normlab.sweep --config=experiments/batch_size.py --workdir=runs/batch_size \\
        --emit_wandb_sweep=batch_size.yaml     # only writes the W&B sweep, runs nothing

Each run is ``python -m normlab.main`` with the study's ``--config.KEY=VALUE``
overrides in ``DIR/<run name>/`` (its ``command.sh`` repeats it). Re-running the
same command skips finished runs and resumes interrupted ones; a failed run is
listed at the end and makes the exit status 1, after every other run has run.
Writes ``DIR/results.csv``, ``DIR/report.md`` and PNG plots, logs them to W&B in
the study's group, and prints the table. Exit status 2: the study file is invalid.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402

_CONFIG = flags.DEFINE_string('config', None, 'Study file, experiments/NAME.py[:arg].')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the runs and the report.')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Runs at once; they split the CPU cores.')
_REUSE = flags.DEFINE_bool(
    'reuse_processes',
    True,
    'Run grid points in long-lived worker processes that import JAX/TF once (saves ~10 s '
    'per run); --noreuse_processes starts one `python -m normlab.main` per run.',
)
_EMIT = flags.DEFINE_string(
    'emit_wandb_sweep', None, 'Write the grid as a W&B sweep YAML to this file and exit.'
)
_LOG_WANDB = flags.DEFINE_bool('wandb', True, "Log the study's table and plots to W&B.")
flags.mark_flags_as_required(['config', 'workdir'])


def fail(message: str, code: int = 2):
    print(f'error: {message}', file=sys.stderr)
    sys.exit(code)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    from normlab.studies import command, outputs, results, runner, wandb_runs, wandb_sweep
    from normlab.studies.study import StudyError, load_study

    workdir = _WORKDIR.value
    try:
        study = load_study(_CONFIG.value)
        runs = study.runs()
        base, _ = command.parse(command.run_flags(study.config_flag, workdir, runs[0].overrides))
        if _EMIT.value:
            wandb_sweep.write(study, _EMIT.value, workdir, base.wandb.project, base.wandb.entity)
            print(
                f'wrote {_EMIT.value}: a grid of {len(runs)} runs; start it with '
                f'`wandb sweep {_EMIT.value}`, then `wandb agent ENTITY/PROJECT/SWEEP_ID`'
            )
            return
        outcomes = runner.run_study(
            study, workdir, parallel=_PARALLEL.value, reuse_processes=_REUSE.value
        )
    except (StudyError, command.FlagError) as e:
        fail(str(e))
    outputs.write_study_file(study, workdir)
    records = results.local_records(study, workdir, runs)
    for record, outcome in zip(records, outcomes, strict=True):
        if outcome.status == 'failed':
            record.status, record.message = 'failed', outcome.message
    out = outputs.write_outputs(study, records, workdir)
    if _LOG_WANDB.value:
        mode = wandb_runs.log_summary(
            study, base.wandb.to_dict(), out.table, records, workdir, out.plot_paths, out.findings
        )
        wandb_note = f'; W&B group {study.name!r} ({mode})'
    else:
        wandb_note = ''
    print(f'\n{out.tables_text}\n')
    print('\n'.join(f'- {f}' for f in out.findings))
    print(
        f'\nwrote {os.path.join(workdir, "report.md")}, results.csv, '
        f'{", ".join(out.plot_paths) or "no plots"}{wandb_note}'
    )
    failed = [o for o in outcomes if o.status == 'failed']
    if failed:
        print(f'\n{len(failed)} of {len(outcomes)} runs failed:', file=sys.stderr)
        for o in failed:
            print(
                f'  {o.run.name}: {o.message}  (log: {workdir}/{o.run.name}/log.txt)',
                file=sys.stderr,
            )
        sys.exit(1)


if __name__ == '__main__':
    app.run(main)
