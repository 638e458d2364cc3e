"""``report.md``: the study's tables (mean ± std over seeds), its findings, its plots.

The main table pivots the headline metric with one row per series value (say, per
norm) and one column per x value (say, per batch size), the layout of the figure
it summarizes. Findings are sentences a study computes from the table
(``Report.findings``); the helpers here keep their wording and number format
consistent. Error metrics are fractions in the files and percentages here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from normlab.studies.grid import format_value, short_keys
from normlab.studies.results import Cell, RunRecord, Table

LABELS = {
    'eval/error': 'test error',
    'eval_running/error': 'test error, running-average statistics',
    'eval_precise/error': 'test error, precise (recomputed) statistics',
    'eval_batch/error': 'test error, batch statistics',
    'train/error': 'training error (last logged window)',
    'eval_train/error': 'error on the whole train split',
    'eval_train/loss': 'loss on the whole train split',
    'eval/loss': 'test loss',
    'train/loss': 'training loss',
}


def is_fraction(metric: str) -> bool:
    return metric.endswith('error') or metric.endswith('accuracy')


def label(metric: str) -> str:
    text = LABELS.get(metric, metric)
    return f'{text} (%)' if is_fraction(metric) else text


def number(value: float, metric: str) -> str:
    """A metric value as shown: percent with one decimal for fractions."""
    if math.isnan(value):
        return 'n/a'
    if is_fraction(metric):
        return f'{100 * value:.1f}'
    return f'{value:.4g}'


def cell_text(cell: Cell, metric: str) -> str:
    """``1.2 ± 0.3``; ``div.`` when every seed diverged; counts when seeds are missing."""
    if cell.n == 0:
        return 'div.' if cell.diverged else '—'
    text = number(cell.mean, metric)
    if cell.n > 1:
        text += f' ± {number(cell.std, metric)}'
    missing = cell.expected - cell.n
    if cell.diverged:
        text += f' ({cell.diverged} div.)'
    elif missing:
        text += f' (n={cell.n})'
    return text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A padded markdown table: valid markdown that also reads well in a terminal."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return '| ' + ' | '.join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + ' |'

    rule = '|' + '|'.join('-' * (w + 2) for w in widths) + '|'
    return '\n'.join([line(header), rule, *(line(r) for r in rows)])


def row_keys(table: Table) -> list[str]:
    """The axes that name a table row (a plot line): the series first, then every
    axis but x."""
    report = table.study.report
    keys = [k for k in table.axes if k != report.x and k != report.series]
    if report.series not in (None, 'metric'):
        keys.insert(0, report.series)
    return keys


def _combos(table: Table, keys: Sequence[str]) -> list[dict]:
    return [dict(c) for c in dict.fromkeys(tuple((k, p[k]) for k in keys) for p in table.points)]


def pivot(table: Table, metric: str | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of one table: rows are series values (or metrics), columns x values.

    `metric` picks the metric for a per-metric table; None tabulates every metric
    (``series='metric'`` or no x axis).
    """
    report = table.study.report
    keys = row_keys(table)
    shorts = short_keys(table.axes)
    metrics = [metric] if metric else table.metrics
    by_metric = metric is None and report.x is not None
    row_label = ', '.join([*(['metric'] if by_metric else []), *(shorts[k] for k in keys)])
    if report.x is not None:
        xs = table.values(report.x)
        header = [f'{row_label or "run"} \\ {shorts[report.x]}', *(format_value(x) for x in xs)]
    else:
        xs = [None]
        header = [row_label or 'run', *(label(m) for m in metrics)]
    rows = []
    for m in metrics if by_metric else [None]:
        for combo in _combos(table, keys):
            name = [*([label(m)] if m else []), *(format_value(v) for v in combo.values())]
            cells = []
            for x in xs:
                where = dict(combo) if x is None else {**combo, report.x: x}
                for mm in [m] if m else metrics:
                    present = table.has(**where)
                    cells.append(cell_text(table.cell(mm, **where), mm) if present else '—')
            rows.append([', '.join(name) or 'all', *cells])
    return header, rows


def tables_markdown(table: Table) -> str:
    """Every table of the report, each under a heading naming its metric."""
    report = table.study.report
    parts = []
    if report.series == 'metric' or report.x is None:
        header, rows = pivot(table)
        what = 'metrics' if report.x is not None else ', '.join(label(m) for m in table.metrics)
        parts.append(f'### {what}\n\n{markdown_table(header, rows)}')
    else:
        for m in table.metrics:
            header, rows = pivot(table, m)
            parts.append(f'### {label(m)}\n\n{markdown_table(header, rows)}')
    return '\n\n'.join(parts)


def generic_findings(table: Table) -> list[str]:
    """The best and worst grid point on the headline metric."""
    metric = table.metrics[0]
    scored = [(c[metric].mean, p) for p, c in zip(table.points, table.cells, strict=True)]
    scored = [(v, p) for v, p in scored if not math.isnan(v)]
    if not scored:
        return ['No run finished, so there is nothing to compare yet.']
    best, worst = min(scored, key=lambda s: s[0]), max(scored, key=lambda s: s[0])
    shorts = short_keys(table.axes)

    def where(p):
        return ', '.join(f'{shorts[k]}={format_value(p[k])}' for k in table.axes)

    return [
        f'Lowest {LABELS.get(metric, metric)}: {number(best[0], metric)}'
        f'{"%" if is_fraction(metric) else ""} at {where(best[1])}; highest: '
        f'{number(worst[0], metric)}{"%" if is_fraction(metric) else ""} at {where(worst[1])}.'
    ]


def findings(table: Table) -> list[str]:
    """The study's own findings; the generic ones if it has none or they cannot be computed."""
    fn = table.study.report.findings
    if fn is None:
        return generic_findings(table)
    try:
        return list(fn(table))
    except (KeyError, ValueError, ZeroDivisionError) as e:
        return [
            f"(The study's findings need grid points that have no finished run: {e}.)",
            *generic_findings(table),
        ]


def run_counts(records: Sequence[RunRecord]) -> str:
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    return ', '.join(f'{n} {s}' for s, n in counts.items())


def render(
    table: Table, records: Sequence[RunRecord], plot_paths: Sequence[str], found: Sequence[str]
) -> str:
    """The whole report.md."""
    study = table.study
    seeds = sorted({r.params.get('seed') for r in records if r.params.get('seed') is not None})
    wall = sum(
        float(r.summary['wall_s'])
        for r in records
        if isinstance(r.summary.get('wall_s'), int | float)
    )
    lines = [f'# Study `{study.name}`', '']
    if study.description:
        lines += [study.description.strip(), '']
    lines += [
        f'Base config `{study.config}`; study `{study.source or study.name}`. '
        f'{len(records)} runs ({run_counts(records)}), seeds {", ".join(map(str, seeds))}; '
        f'{wall / 60:.1f} min of run wall time in total (each run of a bundle counts the '
        "bundle's). Cells are the mean ± standard deviation "
        'over seeds; `div.` marks runs whose loss diverged.',
        '',
        '## Findings',
        '',
        *(f'- {f}' for f in found),
        '',
        '## Results',
        '',
        tables_markdown(table),
        '',
    ]
    if plot_paths:
        lines += ['## Plots', '']
        lines += [f'![{p}]({p})' for p in plot_paths]
        lines += ['']
    failed = [r for r in records if r.status not in ('finished', 'diverged')]
    if failed:
        lines += ['## Runs that did not finish', '']
        lines += [
            f'- `{r.name}`: {r.status}{": " + r.message if r.message else ""}' for r in failed
        ]
        lines += ['']
    lines += ["Per-run numbers: `results.csv`; each run's files: `<run name>/`.", '']
    return '\n'.join(lines)
