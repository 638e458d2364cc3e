"""Which normalization in the generator and in the discriminator lets a DCGAN train?

    python -m normlab.sweep --config=experiments/gan_norms.py --workdir=runs/gan_norms

The grid of Kurach et al. (2019, "A Large-Scale Study on Regularization and
Normalization in GANs"), small: generator norm {batch, layer, instance, none} x
discriminator norm {batch, layer, spectral, none} x seeds, DCGAN (Radford et al.
2016) with the non-saturating loss on ``digits`` upsampled to 16x16
(``configs/digits_dcgan.py``). ``spectral`` is spectral normalization of every
discriminator layer (Miyato et al. 2018) with no activation norm.

Reported per cell (mean ± std over the seeds that finished, and how many diverged):

* ``eval/frechet_distance``: Frechet distance between real and generated digits in
  the features of a classifier normlab trains on digits (the FID formula of Heusel
  et al. 2017, **not** Inception FID; lower is better; compare with
  ``eval/frechet_floor``, real test vs real train digits);
* ``eval/label_entropy``: entropy of the classifier's predicted labels over the
  samples (mode coverage; log 10 = 2.30 when every digit is produced equally often).

Outputs: ``report.md`` and ``results.csv`` (the table; a cell reads ``div.`` when all
its seeds diverged), the heat maps ``heatmap_frechet_distance.png``,
``heatmap_label_entropy.png`` and ``heatmap_diverged.png``, and the findings.

Cost: 16 cells x 2 seeds = 32 runs of 2,000 generator steps, about 3.5 min each on
a 2-core CPU (~2 hours with ``--parallel=1``; the batch-norm generator is the
slowest). Arguments: ``seeds`` (default 2), ``steps`` (generator steps, default
2000), ``smoke`` (4 cells of a few steps, for tests), e.g.
``--config=experiments/gan_norms.py:seeds=3,steps=1000``.
"""

from __future__ import annotations

import math
import os

from normlab.config import parse_arg
from normlab.studies import Report, Study, grid
from normlab.studies.report import number

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
FD, ENTROPY = 'eval/frechet_distance', 'eval/label_entropy'


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
    return 'spectral' if params.get(SN_KEY) else params.get(D_KEY)


def _cells(records):
    """{(g, d): [records]} over the study's runs."""
    cells: dict[tuple, list] = {}
    for r in records:
        cells.setdefault((r.params.get(G_KEY), d_label(r.params)), []).append(r)
    return cells


def _finished(runs, metric):
    values = []
    for r in runs:
        try:
            value = float(r.summary.get(metric))
        except (TypeError, ValueError):
            continue
        if r.status == 'finished' and math.isfinite(value):
            values.append(value)
    return values


def _mean(values):
    return sum(values) / len(values) if values else float('nan')


def heatmaps(records, outdir: str) -> list[str]:
    """G norm x D norm heat maps of the mean distance, entropy and diverged fraction;
    returns their file names in `outdir`."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    cells = _cells(records)
    gs = [g for g in G_NORMS if any(k[0] == g for k in cells)]
    ds = [d for d in D_NORMS if any(k[1] == d for k in cells)]
    if not gs or not ds:
        return []
    paths = []
    for metric, title, cmap in (
        (FD, 'Frechet distance in normlab-classifier features (lower is better)', 'viridis_r'),
        (ENTROPY, 'label entropy of samples, nats (log 10 = 2.30 is full coverage)', 'viridis'),
        ('diverged', 'fraction of seeds that diverged', 'Reds'),
    ):
        grid_values = [[float('nan')] * len(ds) for _ in gs]
        text = [[''] * len(ds) for _ in gs]
        for i, g in enumerate(gs):
            for j, d in enumerate(ds):
                runs = cells.get((g, d), [])
                if not runs:
                    continue
                diverged = sum(r.status == 'diverged' for r in runs)
                if metric == 'diverged':
                    grid_values[i][j] = diverged / len(runs)
                    text[i][j] = f'{diverged}/{len(runs)}'
                    continue
                values = _finished(runs, metric)
                grid_values[i][j] = _mean(values)
                text[i][j] = f'{number(_mean(values), metric)}' if values else 'div.'
                if diverged and values:
                    text[i][j] += f'\n({diverged} div.)'
        fig, ax = plt.subplots(figsize=(1.6 * len(ds) + 2, 1.1 * len(gs) + 1.5))
        limits = {'vmin': 0.0, 'vmax': 1.0} if metric == 'diverged' else {}
        image = ax.imshow(grid_values, cmap=cmap, **limits)
        fig.colorbar(image, ax=ax)
        ax.set_xticks(range(len(ds)), [NAMES[d] for d in ds])
        ax.set_yticks(range(len(gs)), [NAMES[g] for g in gs])
        ax.set_xlabel('discriminator norm')
        ax.set_ylabel('generator norm')
        ax.set_title(title, fontsize=9)
        for i in range(len(gs)):
            for j in range(len(ds)):
                value = grid_values[i][j]
                r, g, b, _ = image.cmap(image.norm(value)) if math.isfinite(value) else (1, 1, 1, 1)
                color = 'k' if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else 'w'
                ax.text(j, i, text[i][j], ha='center', va='center', fontsize=8, color=color)
        fig.tight_layout()
        name = 'heatmap_diverged' if metric == 'diverged' else f'heatmap_{metric.split("/")[1]}'
        fig.savefig(os.path.join(outdir, f'{name}.png'), dpi=120)
        plt.close(fig)
        paths.append(f'{name}.png')  # relative to outdir, like the sweep's own plots
    return paths


def findings(table) -> list[str]:
    """The best and worst pairs, divergence per discriminator norm, mode coverage."""
    scored = []
    diverged_by_d: dict[str, list[int]] = {}
    for point, cells in zip(table.points, table.cells, strict=True):
        d = d_label(point)
        fd, entropy = cells[FD], cells[ENTROPY]
        counts = diverged_by_d.setdefault(d, [0, 0])
        counts[0] += fd.diverged
        counts[1] += fd.expected
        if fd.n:
            scored.append((fd.mean, point[G_KEY], d, entropy.mean))
    out = []
    if scored:
        scored.sort()
        best, worst = scored[0], scored[-1]
        out.append(
            f'Lowest Frechet distance: generator {NAMES[best[1]]} with discriminator '
            f'{NAMES[best[2]]} ({number(best[0], FD)}, label entropy {number(best[3], ENTROPY)} '
            f'nats); highest: {NAMES[worst[1]]} with {NAMES[worst[2]]} ({number(worst[0], FD)}).'
        )
        collapsed = [s for s in scored if s[3] < 0.8 * math.log(10)]
        if collapsed:
            pairs = ', '.join(f'{NAMES[g]}/{NAMES[d]}' for _, g, d, _ in collapsed)
            out.append(
                f'Mode collapse (label entropy below 80% of log 10) for G/D = {pairs}: '
                'these generators cover only some of the digits.'
            )
    total = sum(c[0] for c in diverged_by_d.values())
    if total:
        parts = ', '.join(
            f'{NAMES[d]} {c[0]}/{c[1]}' for d, c in diverged_by_d.items() if c[1] and c[0]
        )
        out.append(f'Diverged runs by discriminator norm: {parts} (see each summary.json).')
    else:
        out.append('No run diverged.')
    return out


def get_study(arg=None):
    arg = parse_arg(arg, seeds=2, steps=2000, smoke=False)
    g_norms, d_norms = G_NORMS, D_NORMS
    config = 'configs/digits_dcgan.py'
    fixed = {'num_train_steps': arg.steps}
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
            x=D_KEY,
            series=G_KEY,
            log_x=False,
            findings=findings,
            plots=heatmaps,
        ),
        description=(
            'Which normalization in the generator and in the discriminator lets a DCGAN '
            'train (Kurach et al. 2019)? Generator norm x discriminator norm (spectral: '
            'spectral normalization, Miyato et al. 2018) on 16x16 digits, scored by the '
            'Frechet distance in a normlab-trained digit classifier (not Inception FID) and '
            'the entropy of the predicted labels of the samples, with the diverged seeds '
            'counted.'
        ),
    )
