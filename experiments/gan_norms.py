"""Which discriminator normalization trains a DCGAN most reliably: spectral norm?

    python -m normlab.sweep --config=experiments/gan_norms.py --workdir=runs/gan_norms \\
        --parallel=2

32 runs (16 cells x 2 seeds of 2,500 generator steps), 30 min wall with ``--parallel=2``
on the 2-core CPU shared with other jobs (load average 5-9; 57 min of training in
total). Measured (that command; the sweep's report.md): Frechet distance over its floor,
averaged over the 4 generator norms, no norm 9.9x, layer norm 10.4x, spectral norm
11.1x, batch norm 12.0x (floor 0.257); no run diverged or lost modes. Spectral norm beats
batch norm beyond seed noise (-0.94x the floor, 0.39 standard error) but is behind no
norm (+1.15x, 0.31) and layer norm (+0.67x, 0.25), so the published effect does not
appear at this budget. Every distance was still falling (by 20% ± 5% from step 1,875 to
2,500): the ranking is of GANs that have not converged.

Kurach et al. (2019, "A Large-Scale Study on Regularization and Normalization in GANs")
find spectral normalization (Miyato et al. 2018) the most reliable discriminator
normalization. The grid here, small: generator norm {batch, layer, instance, none} x
discriminator norm {batch, layer, spectral, none} x seeds, DCGAN (Radford et al. 2016)
with the non-saturating loss on ``digits`` upsampled to 16x16
(``configs/digits_dcgan.py``). ``spectral`` is spectral normalization of every
discriminator layer with no activation norm (two config keys: one report axis, ``D norm``).

Reported per cell (mean ± std over the seeds that finished, n, and how many diverged):

* ``eval/frechet_distance``: Frechet distance between real and generated digits in
  the features of a classifier normlab trains on digits (the FID formula of Heusel
  et al. 2017, **not** Inception FID; lower is better; compared with
  ``eval/frechet_floor``, real test vs real train digits);
* ``eval/label_entropy``: entropy of the classifier's predicted labels over the
  samples (mode coverage; log 10 = 2.30 when every digit is produced equally often).

The findings answer the question per discriminator norm, pooled over generator norms:
the distance over the floor, the diverged and mode-collapsed runs, then spectral norm
against each other norm, cell by cell and on average, a difference counting only when
it exceeds 2 standard errors of the seed means (seed variance pooled over a norm's
cells), and say so plainly when the published effect does not appear.

Outputs: ``report.md`` and ``results.csv``, the distance and entropy against the D norm
(one dodged point per G norm, error bars over seeds), the heat maps
``heatmap_frechet_distance.png``, ``heatmap_label_entropy.png`` (mean ± std, n, diverged
seeds) and ``heatmap_diverged.png``, and ``frechet_distance_over_training.png`` (four
evaluations per run).

Cost per generator step, ``(train_s - compile_s) / steps`` of the summary.json of

    python -m normlab.main --config=configs/digits_dcgan.py:g_norm=batch_norm,d_norm=batch_norm \\
        --workdir=/tmp/dcgan --config.num_train_steps=400

and of three other cells: 18-19 ms alone, 30 ms each with two at once, 33-51 ms in the
sweep above; 7-8 s of compilation per run. One step per dispatch is the fastest here
(``--config.steps_per_call=20`` took 80 ms a step).

Arguments: ``seeds`` (default 2), ``steps`` (generator steps, default 2500), ``smoke``
(4 cells of a few steps, for tests), e.g. ``--config=experiments/gan_norms.py:seeds=3``.
"""

import dataclasses
import math
import os

from normlab.config import parse_arg
from normlab.studies import Axis, Report, Study, grid, plots
from normlab.studies.results import Cell, as_float

G_NORMS = ('batch_norm', 'layer_norm', 'instance_norm', 'none')
D_NORMS = ('batch_norm', 'layer_norm', 'spectral', 'none')
NAMES = {
    'batch_norm': 'BN',
    'layer_norm': 'LN',
    'instance_norm': 'IN',
    'spectral': 'SN',
    'none': 'no norm',
}
G_KEY, D_KEY, SN_KEY = (
    'generator.norm.name',
    'discriminator.norm.name',
    'discriminator.spectral_norm',
)
FD, FLOOR, ENTROPY = 'eval/frechet_distance', 'eval/frechet_floor', 'eval/label_entropy'
# A generator whose samples' label entropy is below this covers only some digits.
COLLAPSE_ENTROPY = 0.8 * math.log(10)
# A difference of means is beyond seed noise when larger than this many standard errors.
NOISE_SE = 2.0


def discriminator_axis(d_norms) -> grid.Grid:
    """D norms as config keys: ``spectral`` is spectral_norm=True with no activation norm."""
    return grid.zipped(
        {
            D_KEY: ['none' if d == 'spectral' else d for d in d_norms],
            SN_KEY: [d == 'spectral' for d in d_norms],
        }
    )


def d_label(params: dict) -> str:
    """The study's name of a run's discriminator norm."""
    return 'spectral' if params[SN_KEY] else params[D_KEY]


@dataclasses.dataclass
class CellRuns:
    """One (G norm, D norm) cell: its runs' outcomes, as this study scores them."""

    runs: int = 0
    diverged: int = 0  # non-finite loss or a collapsed discriminator (summary.json's reason)
    mode_collapsed: int = 0  # finished, label entropy below COLLAPSE_ENTROPY
    over_floor: tuple[float, ...] = ()  # finished runs' Frechet distance / frechet_floor
    fd: tuple[float, ...] = ()
    entropy: tuple[float, ...] = ()

    @property
    def failed(self) -> int:
        return self.diverged + self.mode_collapsed


def cell_runs(records) -> dict[tuple[str, str], CellRuns]:
    """{(g, d): CellRuns} over the study's runs, in the study's G and D order."""
    cells: dict[tuple[str, str], CellRuns] = {}
    for r in records:
        c = cells.setdefault((r.params[G_KEY], d_label(r.params)), CellRuns())
        c.runs += 1
        c.diverged += r.status == 'diverged'
        fd, floor, entropy = (as_float(r.summary.get(k)) for k in (FD, FLOOR, ENTROPY))
        if r.status != 'finished' or not math.isfinite(fd):
            continue
        c.fd += (fd,)
        c.entropy += (entropy,)
        c.over_floor += (fd / floor,) if floor > 0 else ()
        c.mode_collapsed += entropy < COLLAPSE_ENTROPY

    def rank(names, name):  # grid order; names outside the study's lists after them
        return names.index(name) if name in names else len(names)

    return dict(
        sorted(cells.items(), key=lambda kv: (rank(G_NORMS, kv[0][0]), rank(D_NORMS, kv[0][1])))
    )


def cell_text(values, diverged: int, fmt) -> str:
    """``41.2 ± 3.1 (n=3)`` over the finished seeds, then the diverged count."""
    cell = Cell(tuple(values))
    text = fmt(cell.mean) if cell.n else 'div.' if diverged else '—'
    if cell.n > 1:
        text += f' ± {fmt(cell.std)}'
    if cell.n:
        text += f'\n(n={cell.n})'
    if diverged:
        text += f'\n{diverged} div.'
    return text


def figures(records, outdir: str) -> list[str]:
    """G norm x D norm heat maps of the Frechet distance, entropy (mean ± std over the
    finished seeds, n) and diverged fraction, and the distance over training; returns
    their file names in `outdir`."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    cells = cell_runs(records)
    gs = list(dict.fromkeys(g for g, _ in cells))
    ds = [d for d in D_NORMS if any(k[1] == d for k in cells)]
    if not gs or not ds:
        return []
    floors = [as_float(r.summary.get(FLOOR)) for r in records]
    floor = next((f for f in floors if math.isfinite(f)), math.nan)
    paths = []
    for name, title, cmap, fmt in (
        (
            'frechet_distance',
            f'Frechet distance in normlab-classifier features (lower is better; '
            f'real test vs train: {floor:.3g})',
            'viridis_r',
            lambda v: f'{v:.3g}',
        ),
        (
            'label_entropy',
            'label entropy of samples, nats (log 10 = 2.30 is full coverage)',
            'viridis',
            lambda v: f'{v:.2f}',
        ),
        ('diverged', 'fraction of seeds that diverged', 'Reds', None),
    ):
        grid_values = [[math.nan] * len(ds) for _ in gs]
        text = [[''] * len(ds) for _ in gs]
        for i, g in enumerate(gs):
            for j, d in enumerate(ds):
                c = cells.get((g, d))
                if c is None:
                    continue
                if name == 'diverged':
                    grid_values[i][j] = c.diverged / c.runs
                    text[i][j] = f'{c.diverged}/{c.runs}'
                    continue
                values = c.fd if name == 'frechet_distance' else c.entropy
                grid_values[i][j] = Cell(values).mean
                text[i][j] = cell_text(values, c.diverged, fmt)
        fig, ax = plt.subplots(figsize=(1.9 * len(ds) + 2, 1.2 * len(gs) + 1.5))
        limits = {'vmin': 0.0, 'vmax': 1.0} if name == 'diverged' else {}
        image = ax.imshow(grid_values, cmap=cmap, **limits)
        fig.colorbar(image, ax=ax)
        ax.set_xticks(range(len(ds)), [NAMES[d] for d in ds])
        ax.set_yticks(range(len(gs)), [NAMES[g] for g in gs])
        ax.set_xlabel('discriminator norm')
        ax.set_ylabel('generator norm')
        ax.set_title(title, fontsize=8)
        for i in range(len(gs)):
            for j in range(len(ds)):
                value = grid_values[i][j]
                r, g, b, _ = image.cmap(image.norm(value)) if math.isfinite(value) else (1, 1, 1, 1)
                color = 'k' if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else 'w'
                ax.text(j, i, text[i][j], ha='center', va='center', fontsize=7, color=color)
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, f'heatmap_{name}.png'), dpi=120)
        plt.close(fig)
        paths.append(f'heatmap_{name}.png')  # relative to outdir, like the sweep's own plots
    labelled = [
        dataclasses.replace(r, params={**r.params, 'D': d_label(r.params)}) for r in records
    ]
    paths.append(
        plots.plot_curves(
            labelled,
            [FD],
            os.path.join(outdir, 'frechet_distance_over_training.png'),
            panel_by='D',
            line_by=G_KEY,
            ylabel='Frechet distance (mean over finished seeds)',
            title='Frechet distance over training: one panel per discriminator norm, '
            'one line per generator norm',
        )
    )
    return paths


@dataclasses.dataclass(frozen=True)
class Difference:
    """Spectral norm's distance over the floor minus another D norm's, per G norm and
    averaged over the G norms both have, with standard errors from the seeds' spread."""

    per_g: dict[str, tuple[float, float]]  # g -> (difference, standard error)
    mean: float
    se: float  # NaN when no cell of a side has two finished seeds: no noise estimate

    @staticmethod
    def call(diff: float, se: float) -> int:
        """-1: SN lower beyond seed noise, 1: higher beyond it, 0: within it."""
        if not math.isfinite(se) or abs(diff) <= NOISE_SE * se:
            return 0
        return -1 if diff < 0 else 1


def seed_variance(cells: dict[str, Cell]) -> float:
    """The seed variance of one D norm, pooled over its cells (one G norm each): two
    seeds per cell give a poor std on their own, four cells of two give four degrees
    of freedom."""
    dof = sum(c.n - 1 for c in cells.values() if c.n > 1)
    if not dof:
        return math.nan
    return sum((c.n - 1) * c.std**2 for c in cells.values() if c.n > 1) / dof


def difference(a: dict[str, Cell], b: dict[str, Cell]) -> Difference | None:
    """`a`'s cells minus `b`'s (each {g: Cell}), over the G norms where both finished."""
    shared = [g for g in a if g in b and a[g].n and b[g].n]
    if not shared:
        return None
    va, vb = seed_variance(a), seed_variance(b)
    per_g = {g: (a[g].mean - b[g].mean, math.sqrt(va / a[g].n + vb / b[g].n)) for g in shared}
    mean = sum(d for d, _ in per_g.values()) / len(shared)
    se = math.sqrt(sum(se**2 for _, se in per_g.values())) / len(shared)
    return Difference(per_g, mean, se)


def findings(table) -> list[str]:
    """Which D norm is most reliable, pooled over G norms, and is it spectral norm?

    Per D norm: the mean over G norms of the Frechet distance over the floor and its
    failures (diverged, mode-collapsed runs). Then spectral norm against each other D
    norm, by G norm and on average, a difference counting as real when it exceeds
    `NOISE_SE` standard errors of the difference of the seed means.
    """
    cells = cell_runs(table.records)
    steps = sorted({int(as_float(r.summary.get('steps'))) for r in table.records if r.summary})
    budget = f'after {"/".join(map(str, steps))} generator steps' if steps else 'at this budget'
    ds = [d for d in D_NORMS if any(k[1] == d for k in cells)]
    by_d = {
        d: {g: Cell(c.over_floor) for (g, dd), c in cells.items() if dd == d and c.over_floor}
        for d in ds
    }
    totals = {d: [c for (_, dd), c in cells.items() if dd == d] for d in ds}
    failed = {d: sum(c.failed for c in totals[d]) for d in ds}
    pooled = {d: Cell(tuple(c.mean for c in by_d[d].values())) for d in ds}
    ranked = sorted((d for d in ds if pooled[d].n), key=lambda d: pooled[d].mean)
    if not ranked:
        return ['No run finished, so no discriminator norm can be compared.']
    out = [
        f'Frechet distance over its floor (real test vs train digits) {budget}, averaged '
        'over generator norms (lowest first): '
        + '; '.join(
            f'{NAMES[d]} {pooled[d].mean:.1f}x (cells {min(pooled[d].values):.1f}-'
            f'{max(pooled[d].values):.1f}x)'
            for d in ranked
        )
        + '.',
        'Failed runs per discriminator norm: '
        + ', '.join(
            f'{NAMES[d]} {sum(c.diverged for c in runs)} diverged and '
            f'{sum(c.mode_collapsed for c in runs)} mode-collapsed of {sum(c.runs for c in runs)}'
            for d, runs in totals.items()
        )
        + f' (mode collapse: label entropy below {COLLAPSE_ENTROPY:.2f} nats).',
    ]
    still = still_falling(table.records)
    if still is not None:
        out.append(still)
    gs = list(dict.fromkeys(g for g, _ in cells))
    best = []
    for g in gs:
        scored = [(by_d[d][g].mean, d) for d in ds if g in by_d[d]]
        if scored:
            best.append(f'{NAMES[g]}: {NAMES[min(scored)[1]]}')
    out.append('Lowest distance per generator norm: ' + ', '.join(best) + '.')
    if 'spectral' not in by_d or not by_d['spectral']:
        out.append('No spectral-norm discriminator finished: nothing to compare with Kurach et al.')
        return out
    others = {d: difference(by_d['spectral'], by_d[d]) for d in ranked if d != 'spectral'}
    others = {d: v for d, v in others.items() if v is not None}
    for d, diff in others.items():
        per_g = [diff.call(*v) for v in diff.per_g.values()]
        overall = diff.call(diff.mean, diff.se)
        where = 'beyond' if overall else 'within'
        out.append(
            f'SN minus {NAMES[d]}: {diff.mean:+.2f}x the floor on average ({diff.se:.2f} '
            f'standard error, {where} seed noise); by generator norm, SN is lower beyond '
            f'noise with {per_g.count(-1)}, higher beyond it with {per_g.count(1)}, within '
            f'it with {per_g.count(0)} of {len(per_g)}.'
        )
    out.append(verdict(others, failed, budget))
    return out


def still_falling(records) -> str | None:
    """How much the distance changed between the last two evaluations of the finished
    runs: whether the budget left the GANs converged."""
    changes, steps = [], set()
    for r in records:
        evals = [row for row in r.history([FD]) if FD in row] if r.status == 'finished' else []
        if len(evals) >= 2 and evals[-2][FD] > 0:
            changes.append(evals[-1][FD] / evals[-2][FD] - 1)
            steps.add((evals[-2]['step'], evals[-1]['step']))
    if not changes:
        return None
    change = Cell(tuple(changes))
    between = ', '.join(f'{a}-{b}' for a, b in sorted(steps))
    falling = sum(c < 0 for c in changes)
    return (
        f'Between the last two evaluations (steps {between}) the distance changed by '
        f'{100 * change.mean:+.0f}% ± {100 * change.std:.0f}% (mean ± std over runs; it fell '
        f'in {falling} of {change.n})'
        + (': training had not converged.' if change.mean < -0.05 else '.')
    )


def verdict(others: dict[str, Difference], failed: dict[str, int], budget: str) -> str:
    """The answer: is spectral norm the most reliable D norm here, beyond seed noise?"""
    claim = 'the most reliable discriminator normalization (Kurach et al. 2019)'
    if not others:
        return f'No other discriminator norm finished: SN cannot be compared {budget}.'
    if any(not math.isfinite(d.se) for d in others.values()):
        return (
            'No cell has two finished seeds, so seed noise cannot be estimated and no '
            f'difference can be called real: whether SN is {claim} is not tested {budget} '
            '(run with seeds >= 2).'
        )
    calls = {d: diff.call(diff.mean, diff.se) for d, diff in others.items()}
    fewer = [d for d in others if failed[d] < failed['spectral']]
    better = [NAMES[d] for d, v in calls.items() if v > 0]
    if better:
        return (
            f'The published effect does not appear {budget}: {", ".join(better)} '
            f'{"reach" if len(better) > 1 else "reaches"} a lower distance than SN beyond '
            'seed noise.'
        )
    if all(v < 0 for v in calls.values()) and not fewer:
        return (
            f'The published effect appears {budget}: SN reaches a lower distance than every '
            'other discriminator norm beyond seed noise and fails no more often, so it is '
            f'{claim} here.'
        )
    if all(v < 0 for v in calls.values()):
        return (
            f'SN reaches the lowest distance beyond seed noise {budget}, but '
            f'{", ".join(NAMES[d] for d in fewer)} fail less often: the published effect '
            'appears only in part.'
        )
    tied = ', '.join(NAMES[d] for d, v in calls.items() if v == 0)
    return (
        f'The published effect does not appear {budget}: SN and {tied} differ by less than '
        f'{NOISE_SE:g} standard errors of seed noise, so this study cannot tell whether SN is '
        f'{claim}.'
    )


def get_study(arg=None):
    arg = parse_arg(arg, seeds=2, steps=2500, smoke=False)
    g_norms, d_norms = G_NORMS, D_NORMS
    config = 'configs/digits_dcgan.py'
    # Four evaluations: the Frechet distance over training, not only at the end.
    fixed = {'num_train_steps': arg.steps, 'eval_every_steps': max(arg.steps // 4, 1)}
    if arg.smoke:
        g_norms, d_norms = ('batch_norm', 'none'), ('batch_norm', 'spectral')
        config += ':smoke=True'
        fixed = {}
    return Study(
        name='gan_norms',
        config=config,
        grid=grid.product(grid.axis(G_KEY, g_norms), discriminator_axis(d_norms)),
        seeds=tuple(range(arg.seeds)),
        fixed=fixed,
        report=Report(
            metrics=(FD, ENTROPY),
            x='D norm',
            series='G norm',
            log_x=False,
            findings=findings,
            plots=figures,
            axes={
                'G norm': Axis((G_KEY,), lambda p: p[G_KEY]),
                'D norm': Axis((D_KEY, SN_KEY), d_label),
            },
        ),
        description=(
            'Which discriminator normalization lets a DCGAN train most reliably, and is it '
            'spectral normalization (Miyato et al. 2018), as Kurach et al. (2019) report? '
            'Generator norm x discriminator norm on 16x16 digits, scored by the Frechet '
            'distance in a normlab-trained digit classifier (not Inception FID) over its '
            'real-data floor and by the entropy of the predicted labels of the samples, '
            'with diverged and mode-collapsed seeds counted.'
        ),
    )
