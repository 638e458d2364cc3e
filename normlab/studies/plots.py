"""PNG plots of a study (matplotlib, Agg backend: no display needed).

`plot_table` draws each metric against the study's x key, one line per series
value, error bars one standard deviation over seeds, a log2 axis for batch sizes
and learning rates; when the x values are categories (norm names), each series is
a row of unconnected points, dodged side by side at each category. With
``series='metric'`` all metrics share one figure.
`plot_curves` draws metrics over training steps from each run's history (for
studies that look at training dynamics), averaged over seeds. `plot_profiles`
draws values against a position, such as each layer's gradient norm against its
depth in the network.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from normlab.studies import report as report_lib  # noqa: E402
from normlab.studies.grid import format_value, short_keys  # noqa: E402
from normlab.studies.results import RunRecord, Table  # noqa: E402


def file_name(metric: str) -> str:
    return metric.replace('/', '_') + '.png'


def _numeric(values) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _lines(table: Table, metric: str | None):
    """(label, metric, [(x, cell)]) for every line of one figure."""
    report = table.study.report
    keys = report_lib.row_keys(table)
    shorts = short_keys(table.axes)
    combos = list(dict.fromkeys(tuple((k, p[k]) for k in keys) for p in table.points))
    metrics = table.metrics if metric is None else [metric]
    for m in metrics:
        for combo in combos:
            parts = [
                format_value(v) if k == report.series else f'{shorts[k]}={format_value(v)}'
                for k, v in combo
            ]
            if metric is None:
                parts.insert(0, report_lib.LABELS.get(m, m))
            points = []
            for x in table.values(report.x):
                where = {**dict(combo), report.x: x}
                if table.has(**where):
                    points.append((x, table.cell(m, **where)))
            yield ', '.join(parts) or m, m, points


# Of the unit gap between two categories, the part the series' points spread over.
DODGE_SPAN = 0.6


def draw(table: Table, metric: str | None):
    """The figure of one metric (or, with `metric` None, every metric) against x: a
    line per series over numeric x values; over categories (norm names, True/False),
    a point per series at each category, side by side, unconnected (their order
    means nothing). Error bars: one standard deviation over the finished seeds."""
    report = table.study.report
    xs = table.values(report.x)
    numeric = _numeric(xs)
    lines = list(_lines(table, metric))
    shown_metric = metric or table.metrics[0]
    scale = 100.0 if report_lib.is_fraction(shown_metric) else 1.0
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    diverged = []
    for i, (name, _, points) in enumerate(lines):
        if numeric:
            position = {x: x for x in xs}
        else:
            shift = DODGE_SPAN * ((i + 0.5) / len(lines) - 0.5)
            position = {x: j + shift for j, x in enumerate(xs)}
        done = [(x, c) for x, c in points if c.n > 0]
        if done:
            ax.errorbar(
                [position[x] for x, _ in done],
                [scale * c.mean for _, c in done],
                yerr=[scale * c.std for _, c in done],
                marker='o',
                markersize=4,
                capsize=3,
                linestyle='-' if numeric else 'none',
                label=name,
            )
        diverged += [position[x] for x, c in points if c.n == 0 and c.diverged]
    if diverged:
        top = ax.get_ylim()[1]
        ax.plot(diverged, [top] * len(diverged), 'kx', label='diverged', clip_on=False)
    if numeric and report.log_x and all(x > 0 for x in xs):
        ax.set_xscale('log', base=2 if all(float(x).is_integer() for x in xs) else 10)
    ticks = xs if numeric else range(len(xs))
    ax.set_xticks(list(ticks))
    ax.set_xticklabels([format_value(x) for x in xs])
    if not numeric:
        ax.set_xlim(-0.5, len(xs) - 0.5)
    ax.minorticks_off()
    ax.set_xlabel(short_keys(table.axes)[report.x])
    ax.set_ylabel(report_lib.label(shown_metric) if metric else 'value (%)' if scale > 1 else '')
    shown = [metric] if metric else table.metrics
    if all(map(report_lib.is_fraction, shown)) and _spans_decades(table, shown):
        ax.set_yscale('log')  # a 50% collapse and 2% vs 3% differences on one plot
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f'{v:g}'))
    ax.set_title(
        f'{table.study.name}: {report_lib.LABELS.get(shown_metric, shown_metric)}'
        if metric
        else table.study.name
    )
    ax.grid(True, alpha=0.3)
    series = report.series not in (None, 'metric')
    ax.legend(fontsize=8, title=short_keys(table.axes)[report.series] if series else None)
    fig.tight_layout()
    return fig


def _figure(table: Table, metric: str | None, path: str) -> None:
    fig = draw(table, metric)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _spans_decades(table: Table, metrics: Sequence[str]) -> bool:
    """Whether errors range over >10x: then a log y axis keeps the small ones readable."""
    means = [c[m].mean for c in table.cells for m in metrics if c[m].n and c[m].mean > 0]
    return len(means) > 1 and math.log10(max(means) / min(means)) > 1.0


def plot_table(table: Table, outdir: str) -> list[str]:
    """The study's figures; returns their file names (relative to `outdir`)."""
    report = table.study.report
    if report.x is None or not table.points:
        return []
    if report.series == 'metric':
        name = 'metrics.png'
        _figure(table, None, os.path.join(outdir, name))
        return [name]
    names = []
    for m in table.metrics:
        _figure(table, m, os.path.join(outdir, file_name(m)))
        names.append(file_name(m))
    return names


def _mean_curve(histories: Sequence[list[dict]], key: str) -> tuple[list[int], list[float]]:
    by_step: dict[int, list[float]] = {}
    for history in histories:
        for row in history:
            if key in row:
                by_step.setdefault(row['step'], []).append(float(row[key]))
    steps = sorted(by_step)
    return steps, [sum(by_step[s]) / len(by_step[s]) for s in steps]


def plot_curves(
    records: Sequence[RunRecord],
    keys: Sequence[str],
    path: str,
    *,
    panel_by: str | None = None,
    line_by: str | None = None,
    labels: dict[str, str] | None = None,
    transform=None,
    ylabel: str = '',
    title: str = '',
) -> str:
    """Metrics over training steps from the runs' histories, averaged over seeds.

    Args:
      records: finished runs whose history holds `keys`.
      keys: metric keys to draw (one line each, per `line_by` value).
      path: output PNG; returns its file name.
      panel_by: a params key with one panel per value (say, the norm), or None.
      line_by: a params key with one line per value in each panel, or None.
      labels: display names of keys.
      transform: ``f(value) -> value`` applied to every point (error to accuracy).
    """
    runs = [r for r in records if r.status == 'finished']

    def values(key):
        return list(dict.fromkeys(r.params.get(key) for r in runs)) if key is not None else [None]

    panels, lines = values(panel_by), values(line_by)
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.4 * n, 3.6), squeeze=False, sharey=True)
    for ax, panel in zip(axes[0], panels, strict=False):
        for line in lines:
            chosen = [
                r
                for r in runs
                if (panel_by is None or r.params.get(panel_by) == panel)
                and (line_by is None or r.params.get(line_by) == line)
            ]
            histories = [r.history(keys) for r in chosen]
            for key in keys:
                steps, ys = _mean_curve(histories, key)
                if transform is not None:
                    ys = [transform(y) for y in ys]
                name = [format_value(line)] if line_by is not None else []
                if len(keys) > 1 or line_by is None:
                    name.append(key if labels is None else labels.get(key, key))
                ax.plot(steps, ys, label=', '.join(name))
        if panel_by is not None:
            ax.set_title(format_value(panel))
        ax.set_xlabel('training step')
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(ylabel)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.path.basename(path)


def plot_profiles(
    profiles: dict,
    path: str,
    *,
    xlabel: str,
    ylabel: str,
    title: str = '',
    log_y: bool = True,
) -> str:
    """Values against a position (say, gradient norm against layer index), one panel each.

    Args:
      profiles: ``{panel title: {line label: (xs, ys, y_errors or None)}}``; a label
        ending in ``'(end)'`` is drawn dashed, in the color of the same label without it.
      path: output PNG; returns its file name.
    """
    n = max(len(profiles), 1)
    fig, axes = plt.subplots(1, n, figsize=(max(4.4 * n, 6.4), 3.8), squeeze=False, sharey=True)
    for ax, (panel, lines) in zip(axes[0], profiles.items(), strict=False):
        colors: dict[str, str] = {}
        for label_text, (xs, ys, errs) in lines.items():
            base = label_text.removesuffix(' (end)')
            dashed = base != label_text
            drawn = ax.errorbar(
                xs,
                ys,
                yerr=errs,
                marker='.',
                capsize=2,
                linestyle='--' if dashed else '-',
                color=colors.get(base),
                label=label_text,
            )
            colors.setdefault(base, drawn.lines[0].get_color())
        if log_y:
            ax.set_yscale('log')
        ax.set_title(str(panel))
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(ylabel)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.path.basename(path)
