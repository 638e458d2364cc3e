"""Does BatchNorm regularize? The train/test gap with and without it, and with ghost batches.

    python -m normlab.sweep --config=experiments/regularization.py \\
        --workdir=runs/regularization --parallel=2

24 runs (4 variants x 2 weight decays x 3 seeds, 1,333 steps): 4.3 min here with
``--parallel=2`` on the shared 2-core CPU. Measured (report.md): every variant fits
the train split (0.0% error; 1.1-1.2% with ghost batches of 5), so the error gap
is the test error: 5.02 ± 0.05 points without normalization, 4.63 ± 0.67 with
BatchNorm (within seed noise; with weight decay 5.33 ± 0.47 and 4.97 ± 0.25). In
the loss BatchNorm does narrow the gap beyond seed noise: test minus train loss
0.337 ± 0.010 without it, 0.191 ± 0.010 with it (0.248 and 0.189 with weight
decay). Smaller ghost batches shrink the loss gap further (0.178 at 15, 0.136 at
5) but ghost batches of 5 raise the test error (5.7 ± 0.7%).

Ioffe & Szegedy (2015, Sec. 3.4) say BatchNorm regularizes (each example's output
depends on its batch-mates: noise, like dropout) and that it can replace dropout;
Hoffer et al. (2017) and Luo et al. (2019) tie the strength of that noise to the
size of the batch the statistics come from: smaller "ghost" batches, more noise.
Here the 3x100 ReLU MLP on ``mnist5k`` (4,000 training digits, so it can overfit)
trains for 20 epochs at batch 60 (SGD, Nesterov momentum 0.9 at 0.1, cosine)
without normalization, with BatchNorm over the whole batch, and with ghost
BatchNorm over groups of 15 and 5 examples (``norm.virtual_batch_size``), each
without and with weight decay 5e-4; 3 seeds. The gap is measured honestly: at the
end the trainer evaluates the *whole train split* with the inference-mode network
(``eval_train_split``: ``eval_train/error``), not the running average of the train
batches' errors, and the gap is test minus train error (and loss), per seed.
Dropout is not in this study: normlab's MLP has no dropout layer yet.

Arguments: ``seeds``, ``epochs``, ``smoke``.
"""

from normlab.config import parse_arg
from normlab.studies import Report, Study, curves, grid
from normlab.studies.report import number
from normlab.studies.results import Cell

VB, WD = 'norm.virtual_batch_size', 'weight_decay'
GHOST_SIZES = (15, 5)
WEIGHT_DECAYS = (0.0, 5e-4)


def _name(norm, vb) -> str:
    if norm == 'none':
        return 'no normalization'
    return 'BatchNorm' + (f' (ghost batches of {vb})' if vb else ' (whole batch of 60)')


def _gaps(table, where, test='eval/error', train='eval_train/error') -> list[float]:
    runs = [
        r
        for r in table.records
        if r.status == 'finished' and all(r.params.get(k) == v for k, v in where.items())
    ]
    return [
        float(r.summary[test]) - float(r.summary[train])
        for r in runs
        if test in r.summary and train in r.summary
    ]


def _beyond_noise(a: list[float], b: list[float]) -> bool:
    ca, cb = Cell(tuple(a)), Cell(tuple(b))
    return min(ca.n, cb.n) > 1 and abs(ca.mean - cb.mean) > 2 * (ca.std + cb.std)


def findings(table) -> list[str]:
    """Gaps per variant, and whether BatchNorm or smaller ghost batches narrow them."""
    m = 'eval/error'
    out = []
    variants = [(p['norm.name'], p.get(VB)) for p in table.points]
    variants = list(dict.fromkeys(variants))
    for wd in table.values(WD):
        gaps, loss_gaps_of = {}, {}
        for norm, vb in variants:
            where = {'norm.name': norm, VB: vb, WD: wd}
            if not table.has(**where):
                continue
            error_gaps = _gaps(table, where)
            loss_gaps = _gaps(table, where, 'eval/loss', 'eval_train/loss')
            if not error_gaps:
                continue
            gaps[(norm, vb)] = error_gaps
            loss_gaps_of[(norm, vb)] = loss_gaps
            test = table.cell(m, **where)
            train = table.cell('eval_train/error', **where)
            out.append(
                f'Weight decay {wd:g}, {_name(norm, vb)}: test error '
                f'{number(test.mean, m)} ± {number(test.std, m)}%, train-split error '
                f'{number(train.mean, m)} ± {number(train.std, m)}%: gap '
                f'{curves.spread([100 * g for g in error_gaps])} points (loss gap '
                f'{curves.spread(loss_gaps, ".3f")}, {len(error_gaps)} seeds).'
            )
        plain, full = gaps.get(('none', None)), gaps.get(('batch_norm', None))
        if plain and full:
            mean = lambda v: sum(v) / len(v)  # noqa: E731
            change = 100 * (mean(plain) - mean(full))
            out.append(
                f'Weight decay {wd:g}: BatchNorm '
                + (
                    f'{"narrows" if change > 0 else "widens"} the train/test error gap by '
                    f'{abs(change):.1f} points, beyond seed noise.'
                    if _beyond_noise(plain, full)
                    else f'changes the gap by {change:+.1f} points, within seed noise (or one '
                    'seed): no regularization effect shown.'
                )
            )
        plain_loss, full_loss = (
            loss_gaps_of.get(('none', None)),
            loss_gaps_of.get(('batch_norm', None)),
        )
        if plain_loss and full_loss:
            mean = lambda v: sum(v) / len(v)  # noqa: E731
            change = mean(plain_loss) - mean(full_loss)
            out.append(
                f'Weight decay {wd:g}: in test minus train loss BatchNorm '
                + (
                    f'{"narrows" if change > 0 else "widens"} the gap, from '
                    f'{curves.spread(plain_loss, ".3f")} to {curves.spread(full_loss, ".3f")}, '
                    'beyond seed noise.'
                    if _beyond_noise(plain_loss, full_loss)
                    else f'changes the gap by {-change:+.3f}, within seed noise (or one seed).'
                )
            )
        ghosts = sorted((vb, g) for (n, vb), g in gaps.items() if n == 'batch_norm' and vb)
        if full and ghosts:
            text = ', '.join(f'{curves.spread([100 * x for x in g])} at {vb}' for vb, g in ghosts)
            out.append(
                f'Weight decay {wd:g}: ghost-batch gaps (points) {text}, against '
                f'{curves.spread([100 * x for x in full])} over the whole batch.'
            )
    return out or ['No run finished.']


def get_study(arg=None):
    arg = parse_arg(arg, seeds=3, epochs=20.0, smoke=False)
    config = 'configs/mnist_mlp.py:dataset=mnist5k,act=relu' + (',smoke=True' if arg.smoke else '')
    ghosts = GHOST_SIZES[-1:] if arg.smoke else GHOST_SIZES
    decays = WEIGHT_DECAYS[:1] if arg.smoke else WEIGHT_DECAYS
    variants = grid.union(
        grid.axis('norm.name', ['none', 'batch_norm']),
        grid.product(grid.axis('norm.name', ['batch_norm']), grid.axis(VB, ghosts)),
    )
    if arg.smoke:
        variants = variants[1:]  # BatchNorm whole batch and one ghost size: 2 runs
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
            'normalization, with BatchNorm and with ghost BatchNorm, without and with '
            'weight decay.'
        ),
    )
