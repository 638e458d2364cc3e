"""The study workflows behind ``normlab.sweep`` and ``normlab.compare``, callable from Python.

    from normlab.studies import workflows

    code = workflows.run_sweep('experiments/batch_size.py', 'runs/batch_size', parallel=2)
    out, n = workflows.compare_local('runs/batch_size')

Both write results.csv, report.md and plots through `outputs.write_outputs`, so
compare reproduces the sweep's table. Invalid studies raise StudyError or FlagError
before anything runs.
"""

from __future__ import annotations

import os

from normlab.studies import command, outputs, results, runner, wandb_runs, wandb_sweep
from normlab.studies.study import StudyError, load_study


def run_sweep(
    spec: str,
    workdir: str,
    *,
    parallel: int = 1,
    reuse_processes: bool = True,
    bundle: int | None = None,
    log_wandb: bool = True,
    echo=print,
) -> int:
    """Runs (or finishes) the study `spec` in `workdir` and writes its outputs.

    Returns the exit status: 0, or 1 if a run failed. Raises StudyError or
    FlagError, before running anything, when the study cannot run.
    """
    study = load_study(spec)
    runs = study.runs()
    base, _ = command.parse(command.run_flags(study.config_flag, workdir, runs[0].overrides))
    check_grid(study, workdir, runs)
    outcomes = runner.run_study(
        study,
        workdir,
        parallel=parallel,
        reuse_processes=reuse_processes,
        bundle=bundle,
        echo=echo,
    )
    outputs.write_study_file(study, workdir)
    records = results.local_records(study, workdir, runs)
    for record, outcome in zip(records, outcomes, strict=True):
        if outcome.status == 'failed':
            record.status, record.message = 'failed', outcome.message
    out = outputs.write_outputs(study, records, workdir)
    wandb_note = ''
    if log_wandb:
        mode = wandb_runs.log_summary(
            study, base.wandb, out.table, records, workdir, out.plot_paths, out.findings
        )
        wandb_note = f'; W&B group {study.name!r} ({mode})'
    echo(f'\n{out.tables_text}\n')
    echo('\n'.join(f'- {f}' for f in out.findings))
    echo(
        f'\nwrote {os.path.join(workdir, "report.md")}, results.csv, '
        f'{", ".join(out.plot_paths) or "no plots"}{wandb_note}'
    )
    failed = [o for o in outcomes if o.status == 'failed']
    if not failed:
        return 0
    echo(f'\n{len(failed)} of {len(outcomes)} runs failed:')
    for o in failed:
        echo(f'  {o.run.name}: {o.message}  (log: {workdir}/{o.run.name}/log.txt)')
    return 1


def check_grid(study, workdir: str, runs) -> None:
    """Every grid point's config, checked before any run starts (StudyError on the first
    bad one, naming the run). Checks that need the run's devices happen in the run."""
    from normlab.train.config_checks import ConfigError, check_config  # noqa: PLC0415

    for run in runs:
        config, _ = command.parse(command.run_flags(study.config_flag, workdir, run.overrides))
        try:
            check_config(config, num_devices=1)
        except ConfigError as e:
            raise StudyError(f'run {run.name}: {e}') from None


def emit_wandb_sweep(spec: str, workdir: str, path: str) -> str:
    """Writes the study's W&B sweep YAML to `path`; returns a line saying how to start it."""
    study = load_study(spec)
    runs = study.runs()
    base, _ = command.parse(command.run_flags(study.config_flag, workdir, runs[0].overrides))
    wandb_sweep.write(study, path, workdir, base.wandb.project, base.wandb.entity)
    return (
        f'wrote {path}: a grid of {len(runs)} runs; start it with `wandb sweep {path}`, then '
        '`wandb agent ENTITY/PROJECT/SWEEP_ID` on each machine'
    )


def compare_local(workdir: str, *, config: str | None = None, out_dir: str | None = None):
    """Outputs rebuilt from `workdir`'s run directories (see the module docstring)."""
    if not os.path.isdir(workdir):
        raise StudyError(f'--workdir={workdir!r} is not a directory')
    source = config if config is not None else outputs.read_study_source(workdir)
    if source is None:
        raise StudyError(f'{workdir} has no {outputs.STUDY_FILE}; name the study with --config')
    study = load_study(source)
    records = results.local_records(study, workdir)
    if not records:
        raise StudyError(f'no runs of study {study.name!r} in {workdir}')
    out_dir = out_dir if out_dir is not None else workdir
    return outputs.write_outputs(study, records, out_dir), len(records)


def compare_wandb(project: str, group: str, *, config: str | None = None, out_dir: str):
    """Outputs rebuilt from the training runs of W&B `project` (ENTITY/PROJECT), `group`."""
    runs = wandb_runs.fetch_runs(project, group)
    source = config if config is not None else wandb_runs.study_source(runs)
    if source is None:
        raise StudyError(f'group {group!r} has no study summary run; name the study with --config')
    study = load_study(source)
    records = wandb_runs.records(study, runs)
    if not records:
        raise StudyError(f'no training runs in {project} group {group!r}')
    return outputs.write_outputs(study, records, out_dir), len(records)
