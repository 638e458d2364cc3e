"""Does BatchNorm regularize? The train/test gap with and without it, and with ghost batches.

    python -m normlab.sweep --config=experiments/regularization.py \\
        --workdir=runs/regularization --parallel=2

36 runs (6 variants x 2 weight decays x 3 seeds, 1,333 steps; each variant's seeds
train as one bundle): 3.4 min here with ``--parallel=2`` while another job used the
other half of the CPU (load 7-8). Measured (report.md, weight decay 0): every variant
without dropout fits the train split (0.0% error; 1.2% with ghost batches of 5), so
the error gap is the test error: 5.02 ± 0.05 points without normalization, 4.57 ±
0.59 with BatchNorm (within seed noise; with weight decay 5.33 ± 0.47 and 5.00 ±
0.40). In the loss BatchNorm does narrow the gap beyond seed noise: test minus train
loss 0.337 ± 0.010 without it, 0.192 ± 0.010 with it (0.248 and 0.188 with weight
decay). Smaller ghost batches shrink the loss gap further (0.178 at 15, 0.136 at 5)
but ghost batches of 5 raise the test error (5.7 ± 0.7%). Dropout 0.3 does not
narrow the gap in 20 epochs: without normalization it stops the network from fitting
the train split (2.4 ± 0.4% train error) and raises the test error to 7.6 ± 0.3%
(gap 5.12 ± 0.53); with BatchNorm it changes the error gap by -0.2 points (within
noise). BatchNorm instead of dropout narrows the loss gap (0.318 -> 0.192) with a
lower test error (4.6 against 7.6%): here BatchNorm can replace dropout, as the
paper says, though not because dropout would have regularized this network better.

Ioffe & Szegedy (2015, Sec. 3.4) say BatchNorm regularizes (each example's output
depends on its batch-mates: noise, like dropout) and that it can replace dropout;
Hoffer et al. (2017) and Luo et al. (2019) tie the strength of that noise to the
size of the batch the statistics come from: smaller "ghost" batches, more noise.
Here the 3x100 ReLU MLP on ``mnist5k`` (4,000 training digits, so it can overfit)
trains for 20 epochs at batch 60 (SGD, Nesterov momentum 0.9 at 0.1, cosine)
without normalization and with BatchNorm over the whole batch, each without and
with dropout 0.3 on every hidden layer (Srivastava et al. 2014;
``model_options.dropout_rate``), and with ghost BatchNorm over groups of 15 and 5
examples (``norm.virtual_batch_size``), each without and with weight decay 5e-4;
3 seeds. The gap is measured honestly: at the
end the trainer evaluates the *whole train split* with the inference-mode network
(``eval_train_split``: ``eval_train/error``), not the running average of the train
batches' errors, and the gap is test minus train error (and loss), per seed.
Evaluation never drops units (also not for the train-split evaluation).

Arguments: ``seeds``, ``epochs``, ``smoke``.
"""

from normlab.config import parse_arg
from normlab.studies import Report, Study, curves, grid
from normlab.studies.report import number
from normlab.studies.results import Cell

VB, WD, DROP = 'norm.virtual_batch_size', 'weight_decay', 'model_options.dropout_rate'
GHOST_SIZES = (15, 5)
WEIGHT_DECAYS = (0.0, 5e-4)
DROPOUT = 0.3  # on every hidden layer's output; Ioffe & Szegedy removed it under BN


def _name(norm, vb, p=0.0) -> str:
    name = 'no normalization' if norm == 'none' else 'BatchNorm'
    if norm != 'none':
        name += f' (ghost batches of {vb})' if vb else ' (whole batch of 60)'
    return name + (f' + dropout {p:g}' if p else '')


def _beyond_noise(a: list[float], b: list[float]) -> bool:
    ca, cb = Cell(tuple(a)), Cell(tuple(b))
    return min(ca.n, cb.n) > 1 and abs(ca.mean - cb.mean) > 2 * (ca.std + cb.std)


def _compare(what: str, a: list[float], b: list[float], scale: float, unit: str, fmt: str):
    """One sentence: how the gap changes from variant `a` to variant `b`."""
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    change = scale * (mean(a) - mean(b))
    if _beyond_noise(a, b):
        return (
            f'{what} {"narrows" if change > 0 else "widens"} the gap from '
            f'{curves.spread([scale * x for x in a], fmt)} to '
            f'{curves.spread([scale * x for x in b], fmt)}{unit}, beyond seed noise.'
        )
    return (
        f'{what} changes the gap by {-change:+{fmt}}{unit}, within seed noise (or one seed): '
        'no regularization effect shown.'
    )


def findings(table) -> list[str]:
    """Gaps per variant, and whether BatchNorm, smaller ghost batches or dropout narrow
    them (in error and in loss, against seed noise)."""
    m = 'eval/error'
    out = []
    variants = [(p['norm.name'], p.get(VB), p.get(DROP)) for p in table.points]
    variants = list(dict.fromkeys(variants))
    for wd in table.values(WD):
        errors, losses = {}, {}
        for norm, vb, p in variants:
            where = {'norm.name': norm, VB: vb, WD: wd, DROP: p}
            error_gaps = table.differences('eval/error', 'eval_train/error', **where)
            if not error_gaps:
                continue
            errors[(norm, vb, p)] = error_gaps
            losses[(norm, vb, p)] = table.differences('eval/loss', 'eval_train/loss', **where)
            test = table.cell(m, **where)
            train = table.cell('eval_train/error', **where)
            out.append(
                f'Weight decay {wd:g}, {_name(norm, vb, p)}: test error '
                f'{number(test.mean, m)} ± {number(test.std, m)}%, train-split error '
                f'{number(train.mean, m)} ± {number(train.std, m)}%: gap '
                f'{curves.spread([100 * g for g in error_gaps])} points (loss gap '
                f'{curves.spread(losses[(norm, vb, p)], ".3f")}, {len(error_gaps)} seeds).'
            )
        plain, bn = ('none', None, 0.0), ('batch_norm', None, 0.0)
        comparisons = [(plain, bn, 'BatchNorm')]
        for norm, vb, p in errors:
            if vb is None and p:
                off = (norm, None, 0.0)
                comparisons.append((off, (norm, vb, p), f'Dropout {p:g} ({_name(norm, None)})'))
                if norm == 'none':  # can BatchNorm replace dropout?
                    comparisons.append(((norm, vb, p), bn, f'BatchNorm instead of dropout {p:g}'))
        for a, b, what in comparisons:
            if a in errors and b in errors:
                out.append(
                    f'Weight decay {wd:g}: '
                    + _compare(what, errors[a], errors[b], 100, ' points', '.1f')
                )
                out.append(
                    f'Weight decay {wd:g}, in test minus train loss: '
                    + _compare(what, losses[a], losses[b], 1, '', '.3f')
                )
        ghosts = sorted((vb, g) for (n, vb, p), g in errors.items() if n == 'batch_norm' and vb)
        if bn in errors and ghosts:
            text = ', '.join(f'{curves.spread([100 * x for x in g])} at {vb}' for vb, g in ghosts)
            out.append(
                f'Weight decay {wd:g}: ghost-batch gaps (points) {text}, against '
                f'{curves.spread([100 * x for x in errors[bn]])} over the whole batch.'
            )
    return out or ['No run finished.']


def get_study(arg=None):
    arg = parse_arg(arg, seeds=3, epochs=20.0, smoke=False)
    config = 'configs/mnist_mlp.py:dataset=mnist5k,act=relu' + (',smoke=True' if arg.smoke else '')
    ghosts = GHOST_SIZES[-1:] if arg.smoke else GHOST_SIZES
    decays = WEIGHT_DECAYS[:1] if arg.smoke else WEIGHT_DECAYS
    variants = grid.union(
        grid.product(
            grid.axis('norm.name', ['none', 'batch_norm']), grid.axis(DROP, [0.0, DROPOUT])
        ),
        grid.product(grid.axis('norm.name', ['batch_norm']), grid.axis(VB, ghosts)),
    )
    if arg.smoke:  # no norm with dropout, BatchNorm without, one ghost size: 3 runs
        variants = [v for v in variants if (v['norm.name'] == 'none') == bool(v.get(DROP))]
    fixed = {'eval_train_split': True, 'record_preactivations': False}
    fixed.update({'num_train_steps': 6} if arg.smoke else {'num_epochs': arg.epochs})
    return Study(
        name='regularization',
        config=config,
        grid=grid.product(variants, grid.axis(WD, decays)),
        seeds=tuple(range(arg.seeds)),
        fixed=fixed,
        report=Report(
            metrics=('eval/error', 'eval_train/error', 'eval/loss', 'eval_train/loss'),
            x=WD,
            series='norm.name',
            log_x=False,
            findings=findings,
        ),
        description=(
            'Does BatchNorm regularize? The gap between test error and the error on the '
            'whole train split after 20 epochs of the 3x100 ReLU MLP on mnist5k, without '
            'normalization and with BatchNorm (each without and with dropout), with ghost '
            'BatchNorm, without and with weight decay.'
        ),
    )
