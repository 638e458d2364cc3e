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
The seeds of a grid point train as one program (``--bundle=N`` caps the runs per
program; ``--bundle=1`` trains each alone), each with exactly its solo files.
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
_BUNDLE = flags.DEFINE_integer(
    'bundle',
    None,
    'Most runs (seeds of one grid point) trained as one program; default: all of them, '
    "as many as fit the trainer's memory estimate; 1 trains every run alone.",
    lower_bound=1,
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
    from normlab.studies import workflows
    from normlab.studies.command import FlagError
    from normlab.studies.study import StudyError

    try:
        if _EMIT.value:
            print(workflows.emit_wandb_sweep(_CONFIG.value, _WORKDIR.value, _EMIT.value))
            return
        code = workflows.run_sweep(
            _CONFIG.value,
            _WORKDIR.value,
            parallel=_PARALLEL.value,
            reuse_processes=_REUSE.value,
            bundle=_BUNDLE.value,
            log_wandb=_LOG_WANDB.value,
        )
    except (StudyError, FlagError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        print(
            f'stopped: the sweep was interrupted; run the same command again to skip the '
            f'finished runs and resume the others ({_WORKDIR.value})',
            file=sys.stderr,
        )
        os._exit(130)  # worker threads and processes end with us, without tracebacks
    sys.exit(code)


if __name__ == '__main__':
    app.run(main)
