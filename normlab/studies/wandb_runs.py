"""A study in W&B: its summary run (tables and plots), and its runs read back.

The sweep logs one extra run per study, ``job_type='study'``, in the study's group:
``results`` (one row per run), one table per metric (the report's), the plots, and
the findings. Like every normlab run it logs online with credentials and offline
otherwise (``wandb sync DIR/wandb/offline-run-*`` uploads it later).

`fetch_runs` reads a group's runs with ``wandb.Api`` and `records` turns its training
runs into RunRecords, so runs logged from several machines can be compared; reading
needs credentials and fails at once, with the fix in the message, when there are none.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Sequence

from normlab.logging.wandb_run import has_credentials, resolve_mode, start_run
from normlab.studies import report as report_lib
from normlab.studies.results import RunRecord, Table, as_float, csv_columns, record_from
from normlab.studies.study import Study

API_TIMEOUT_S = 20
SUMMARY_JOB_TYPE = 'study'


class WandbUnavailable(RuntimeError):
    """W&B cannot be reached or used; the message says what to do instead."""


def log_summary(
    study: Study,
    wandb_settings,
    table: Table,
    records: Sequence[RunRecord],
    workdir: str,
    plot_paths: Sequence[str],
    findings: Sequence[str],
) -> str:
    """Logs the summary run; returns its mode (online/offline/disabled).

    `wandb_settings` is the base config's ``wandb`` section; the mode is resolved, and
    falls back, as for a training run (`normlab.logging.wandb_run`).
    """
    if wandb_settings.mode == 'disabled':
        return 'disabled'
    run, mode = start_run(
        resolve_mode(wandb_settings.mode),
        secrets.token_hex(4),
        project=wandb_settings.project,
        entity=wandb_settings.entity,
        group=study.name,
        job_type=SUMMARY_JOB_TYPE,
        name=f'{study.name}-summary',
        dir=workdir,
        config={
            'study': study.name,
            'study_source': study.source,
            'base_config': study.config,
            'seeds': list(study.seeds),
            'metrics': list(study.report.metrics),
        },
        tags=[f'study:{study.name}'],
    )
    if run is None:
        return mode
    import wandb

    try:
        columns = csv_columns(study)
        rows = []
        metric_columns = columns[columns.index('seed') + 1 : -1]
        for r in records:
            values = {'run': r.name, 'status': r.status, 'message': r.message, **r.params}
            for m in metric_columns:  # numbers or None: W&B tables are typed by column
                value = as_float(r.summary.get(m))
                values[m] = None if math.isnan(value) else value
            rows.append([_cell(values.get(c)) for c in columns])
        logged = {'results': wandb.Table(columns=columns, data=rows)}
        metrics = (
            [None] if study.report.series == 'metric' or study.report.x is None else (table.metrics)
        )
        for m in metrics:
            header, body = report_lib.pivot(table, m)
            logged[f'table/{m or "metrics"}'] = wandb.Table(columns=header, data=body)
        for p in plot_paths:
            logged[f'plots/{os.path.splitext(p)[0]}'] = wandb.Image(os.path.join(workdir, p))
        run.log(logged)
        run.summary['findings'] = '\n'.join(findings)
    finally:
        run.finish()
    return mode


def _cell(value):
    if isinstance(value, tuple | list):
        return ' '.join(map(str, value))
    return value if isinstance(value, int | float | str) or value is None else str(value)


def api(timeout: int = API_TIMEOUT_S):
    """``wandb.Api`` or WandbUnavailable; never waits without credentials."""
    if not has_credentials():
        raise WandbUnavailable(
            'no W&B credentials (set WANDB_API_KEY or run `wandb login`); runs logged offline '
            'can be compared from their work directories: normlab.compare --workdir=DIR'
        )
    import wandb

    try:
        return wandb.Api(timeout=timeout)
    except Exception as e:  # noqa: BLE001 - any failure here means "no W&B"
        raise WandbUnavailable(f'cannot reach W&B ({type(e).__name__}: {e})') from e


def fetch_runs(project_path: str, group: str, timeout: int = API_TIMEOUT_S) -> list:
    """The group's runs (training and summary); `project_path` is ENTITY/PROJECT."""
    client = api(timeout)
    try:
        return list(client.runs(project_path, filters={'group': group}))
    except Exception as e:  # noqa: BLE001
        raise WandbUnavailable(
            f'cannot list runs of {project_path} group {group!r} ({type(e).__name__}: {e})'
        ) from e


def study_source(runs: Sequence) -> str | None:
    """The study file the group's summary run recorded, if any."""
    for run in runs:
        if run.job_type == SUMMARY_JOB_TYPE:
            return run.config.get('study_source')  # None: an older summary run
    return None


def records(study: Study, runs: Sequence) -> list[RunRecord]:
    """RunRecords of the training runs among `runs`, sorted by name."""
    out = []
    for run in runs:
        if run.job_type == SUMMARY_JOB_TYPE:
            continue
        summary = {k: v for k, v in run.summary.items() if not k.startswith('_')}
        summary.setdefault('status', 'finished' if run.state == 'finished' else run.state)

        def history(keys, run=run):
            by_step: dict[int, dict] = {}
            for key in keys:  # one scan per key: scan_history keeps rows having every key
                for row in run.scan_history(keys=[key]):
                    by_step.setdefault(row['_step'], {'step': row['_step']})[key] = row[key]
            return [by_step[s] for s in sorted(by_step)]

        out.append(record_from(run.name, study, dict(run.config), summary, history))
    return sorted(out, key=lambda r: r.name)
