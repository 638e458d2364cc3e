"""Do gradients vanish or explode in deep plain networks, and does normalization fix it?

    python -m normlab.sweep --config=experiments/gradient_flow.py --workdir=runs/gradient_flow \\
        --parallel=2

18 runs (3 norms x 3 depths x 2 seeds, 400 steps): 11.7 min here with
``--parallel=2`` on the shared 2-core CPU under a load of ~10 (the 50-layer
programs dominate). Measured (report.md; ratios are layer 2's gradient norm over
the last hidden layer's, geometric mean over seeds): at depth 10 everything trains
(5.5-7.6% test error) with balanced gradients. Without normalization the ratio is
4.5e-4 at depth 30 and 3.9e-7 at depth 50 at initialization (vanishing) and the
network stays at chance. BatchNorm makes the early layers' gradients *explode* at
initialization, 2.4e2 at depth 30 and 1.2e4 at depth 50 (Yang et al. 2019's
prediction), which training brings back to ~1; it trains at depth 30 (38.1 ± 3.0%)
but not at 50 (80.6 ± 2.0%). LayerNorm starts balanced (1.1, 0.55) but its
gradients vanish during training and it does not train at 30 or 50 layers. So
normalization alone does not make a 50-layer plain network trainable here.
Measured before main's d5aba98 changed the device-resident shuffle to integer
hashing: a rerun sees the data in another order, so its numbers differ within
seed noise.

Plain ReLU MLPs (no residual connections) of 10, 30 and 50 hidden layers of 100
units on ``mnist5k``, with BatchNorm, LayerNorm or no normalization before each
ReLU, flax's default LeCun-normal init, batch 60, 400 steps of SGD with Nesterov
momentum 0.9 at 0.02 (cosine), 2 seeds. With ``record_grad_norms`` the trainer logs
every layer's gradient L2 norm (``grad_norm/dense{k}``): at the first step (the
initial weights) alone (``eval_steps=(1,)`` makes step 1 a logging boundary), then
averaged over 50-step windows. The findings
compare the second hidden layer's gradient with the last one's (``dense2`` against
``dense{depth}``: both 100x100 kernels, where ``dense1``'s 784x100 kernel would have
a larger norm for its size alone), at initialization and in the last window, and
say whether the network trained (test error below 50%).

The literature this tests: without normalization a deep ReLU network at a LeCun
init (variance 1/fan_in, half of He's) shrinks its signal by about 2x per layer, so
early layers get vanishing gradients; Santurkar et al. (2018) and Bjorck et al.
(2018) argue BatchNorm's benefit is a better-conditioned loss (it allows larger
steps) rather than reduced covariate shift; Yang et al. (2019) prove that BatchNorm
in a deep plain network makes gradients *explode* with depth at initialization.

Arguments: ``seeds``, ``steps``, ``smoke``.
"""

import math

from normlab.config import parse_arg
from normlab.studies import Report, Study, grid, plots
from normlab.studies.report import number

DEPTHS = (10, 30, 50)
NORMS = ('none', 'batch_norm', 'layer_norm')
NAMES = {'batch_norm': 'BatchNorm', 'layer_norm': 'LayerNorm', 'none': 'no normalization'}
DEPTH = 'model_options.depth'
PREFIX = 'grad_norm/'
TRAINED = 0.5  # test error below this: the network learned


def layer_norms(record, depth: int, which: str) -> list[float] | None:
    """Gradient norms of dense1..dense{depth} in the first ('init') or last ('end') row."""
    keys = [f'{PREFIX}dense{k}' for k in range(1, depth + 1)]
    rows = [r for r in record.history(keys) if all(k in r for k in keys)]
    if not rows:
        return None
    row = rows[0] if which == 'init' else rows[-1]
    return [row[k] for k in keys]


def _runs(table, norm, depth):
    return [
        r
        for r in table.records
        if r.params['norm.name'] == norm and r.params.get(DEPTH) == depth and r.status == 'finished'
    ]


def _ratio_text(ratios) -> str:
    """'1e-05 (seeds ...), vanishing': a ratio over seeds, as a geometric mean."""
    ratios = [r for r in ratios if r > 0 and math.isfinite(r)]
    if not ratios:
        return 'n/a'
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    lo, hi = min(ratios), max(ratios)
    kind = 'vanishing' if geo < 0.1 else 'exploding' if geo > 10 else 'balanced'
    spread = f' (seeds {lo:.2g}-{hi:.2g})' if len(ratios) > 1 else ''
    return f'{geo:.2g}{spread}, {kind}'


def findings(table) -> list[str]:
    """Layer-2-to-last gradient ratios at init and at the end, and who trains."""
    m = 'eval/error'
    out = []
    for depth in sorted(table.values(DEPTH)):
        trained = {}
        for norm in [n for n in NORMS if n in table.values('norm.name')]:
            runs = _runs(table, norm, depth)
            cell = table.cell(m, **{'norm.name': norm, DEPTH: depth})
            if not runs:
                if cell.diverged:
                    out.append(f'Depth {depth}, {NAMES[norm]}: every seed diverged.')
                continue
            parts = []
            for which, when in (('init', 'at initialization'), ('end', 'in the last window')):
                profiles = [p for p in (layer_norms(r, depth, which) for r in runs) if p]
                ratios = [p[1] / p[-1] for p in profiles if p[-1] > 0]
                dead = sum(max(p) == 0 for p in profiles)
                text = f'{when} {_ratio_text(ratios)}'
                if dead:
                    text = (
                        f'{when} exactly 0 in every hidden layer (dead ReLUs) in {dead} of '
                        f'{len(profiles)} seeds'
                        + (f', else {_ratio_text(ratios)}' if ratios else '')
                    )
                parts.append(text)
            trained[norm] = all(v < TRAINED for v in cell.values) and not cell.diverged
            verdict = 'trains' if trained[norm] else 'does not train'
            out.append(
                f'Depth {depth}, {NAMES[norm]}: gradient norm of layer 2 over layer {depth} '
                f'{"; ".join(parts)}. It {verdict}: {number(cell.mean, m)} ± '
                f'{number(cell.std, m)}% test error ({cell.n} seeds'
                + (f', {cell.diverged} diverged' if cell.diverged else '')
                + ').'
            )
        if 'none' in trained and any(trained.get(n) for n in ('batch_norm', 'layer_norm')):
            fixed = [NAMES[n] for n in ('batch_norm', 'layer_norm') if trained.get(n)]
            out.append(
                f'Depth {depth}: '
                + (
                    f'{" and ".join(fixed)} train{"s" if len(fixed) == 1 else ""} where the '
                    'plain network does not.'
                    if not trained['none']
                    else f'the plain network trains too, so normalization is not needed at '
                    f'this depth ({" and ".join(fixed)} also train).'
                )
            )
    return out or ['No run finished.']


def profile_plots(records, outdir) -> list[str]:
    depths = sorted({r.params.get(DEPTH) for r in records if r.status == 'finished'})
    profiles = {}
    for depth in depths:
        lines = {}
        for norm in NORMS:
            runs = [
                r
                for r in records
                if r.status == 'finished'
                and r.params['norm.name'] == norm
                and r.params.get(DEPTH) == depth
            ]
            for which, suffix in (('init', ''), ('end', ' (end)')):
                got = [p for p in (layer_norms(r, depth, which) for r in runs) if p]
                if not got:
                    continue
                means = [sum(v) / len(v) for v in zip(*got, strict=True)]
                if all(v > 0 for v in means):
                    lines[f'{NAMES[norm]}{suffix}'] = (list(range(1, depth + 1)), means, None)
        if lines:
            profiles[f'depth {depth}'] = lines
    if not profiles:
        return []
    return [
        plots.plot_profiles(
            profiles,
            f'{outdir}/grad_norm_by_layer.png',
            xlabel='hidden layer',
            ylabel='gradient L2 norm (mean over seeds)',
            title='Gradient norm per layer: step 1 (solid), last window (dashed)',
        )
    ]


def get_study(arg=None):
    arg = parse_arg(arg, seeds=2, steps=400, smoke=False)
    config = 'configs/mnist_mlp.py:dataset=mnist5k,act=relu' + (',smoke=True' if arg.smoke else '')
    depths = (4,) if arg.smoke else DEPTHS
    norms = ('none', 'batch_norm') if arg.smoke else NORMS
    steps = 6 if arg.smoke else arg.steps
    return Study(
        name='gradient_flow',
        config=config,
        grid=grid.product(grid.axis('norm.name', list(norms)), grid.axis(DEPTH, depths)),
        seeds=tuple(range(arg.seeds)),
        fixed={
            'model_options.widths': (100,),
            'num_train_steps': steps,
            'learning_rate': 0.02,
            'record_grad_norms': True,
            'eval_steps': (1,),  # step 1 is logged alone: the initial weights' gradients
            'record_preactivations': False,
            'log_every_steps': 2 if arg.smoke else 50,
        },
        report=Report(
            metrics=('eval/error', 'train/loss'),
            x=DEPTH,
            series='norm.name',
            log_x=False,
            findings=findings,
            plots=profile_plots,
        ),
        description=(
            'Do gradients vanish or explode with depth in plain (non-residual) ReLU MLPs, '
            'with and without normalization, and which of them train? Per-layer gradient '
            'norms at initialization and during training, test error after a fixed budget.'
        ),
    )
