"""Test error against batch size for each normalization (Wu & He 2018, Figure 1, small).

    make demo    # python -m normlab.sweep --config=experiments/batch_size.py \\
                 #     --workdir=runs/batch_size --parallel=2

On ``digits`` (offline, 1,437 training images): the 3x100 ReLU MLP with BatchNorm,
GroupNorm (10 groups), LayerNorm, Batch Renorm and no normalization, at batch sizes
2 to 64, 5 seeds, 10 epochs, SGD with the learning rate scaled linearly with the
batch size (``lr_scaling='linear'``: 0.05 at batch 32). 150 runs; each grid point's
5 seeds train as one program (a bundle), and with ``--parallel=2`` the study took
4.6 min (5.0 CPU-minutes) on a 2-core CPU that other jobs loaded (load ~2-3).
Measured (mean +- std over seeds): BatchNorm 50 +- 11% test error at batch 2,
3.9% at 4 and 2.1-2.6% from 8 to 64; GroupNorm, LayerNorm and no normalization
2.2-2.9% at every batch size; Batch Renorm 24 +- 7% at batch 2.

Why the MLP: an MLP's BatchNorm statistics come from the batch alone; with two
examples a normalized feature is just +-1 (the sign of their difference), so the
network trains on noise and the running averages used at test time describe a
different network. A CNN's BatchNorm pools batch x spatial positions, which hides
the effect on 8x8 digits. InstanceNorm is left out on the MLP: with no spatial axis
it normalizes each feature of each example by itself (everything becomes the bias).

Arguments (``experiments/batch_size.py:seeds=3,epochs=15``): ``dataset`` (digits,
or cifar10 for ResNet-20 with every norm including InstanceNorm, and NF-ResNet-20
as the normalizer-free baseline: a GPU study, base config
``configs/cifar10_resnet.py``), ``seeds``, ``epochs``, ``smoke`` (a seconds-long
grid for tests).
"""

from normlab.config import parse_arg
from normlab.studies import Report, Study, grid
from normlab.studies.report import number

BATCH_SIZES = (2, 4, 8, 16, 32, 64)
PER_EXAMPLE = ('group_norm', 'layer_norm')
NAMES = {
    'batch_norm': 'BatchNorm',
    'group_norm': 'GroupNorm',
    'layer_norm': 'LayerNorm',
    'instance_norm': 'InstanceNorm',
    'batch_renorm': 'Batch Renorm',
    'none': 'no normalization',
}


def _pct(cell) -> str:
    return f'{number(cell.mean, "eval/error")}%'


def _degrades(small, large) -> bool:
    """A collapse seed noise does not explain: >1 point, >2x, and >2 std of both."""
    gap = small.mean - large.mean
    return gap > 0.01 and small.mean > 2 * large.mean and gap > 2 * (small.std + large.std)


def _elevated(small, large) -> bool:
    """A smaller rise that seed noise does not explain: >0.5 point and >2 std of both."""
    gap = small.mean - large.mean
    return gap > max(0.005, 2 * (small.std + large.std))


def findings(table) -> list[str]:
    """Does BatchNorm degrade at small batches while the per-example norms stay flat?"""
    m = 'eval/error'
    sizes = sorted(table.values('batch_size'))
    small, large = sizes[0], sizes[-1]

    def at(norm, b):
        return table.cell(m, **{'norm.name': norm, 'batch_size': b})

    def measured(norm):
        points = [{'norm.name': norm, 'batch_size': b} for b in sizes]
        return all(table.has(**p) and table.cell(m, **p).n for p in points)

    norms = [n for n in table.values('norm.name') if measured(n)]
    out = []
    bn_collapses = False
    if 'batch_norm' in norms:
        bn_large = at('batch_norm', large)
        bn_collapses = _degrades(at('batch_norm', small), bn_large)
        risen = [b for b in sizes if _elevated(at('batch_norm', b), bn_large)]
        steady = [b for b in sizes if b > max(risen, default=0)]
        if risen:
            lo, hi = (
                min(at('batch_norm', b).mean for b in steady),
                max(at('batch_norm', b).mean for b in steady),
            )
            rises = ', '.join(f'{_pct(at("batch_norm", b))} at batch {b}' for b in risen[::-1])
            verdict = 'degrades sharply' if bn_collapses else 'degrades mildly'
            out.append(
                f'BatchNorm {verdict} at small batches: {number(lo, m)}-{number(hi, m)}% test '
                f'error from batch {large} down to {min(steady)}, then {rises}.'
            )
        else:
            out.append(
                'BatchNorm does not degrade at small batches here: '
                f'{_pct(at("batch_norm", small))} at batch {small} against {_pct(bn_large)} '
                f'at batch {large}.'
            )
    flat = []
    for norm in [n for n in PER_EXAMPLE if n in norms]:
        cells = [at(norm, b) for b in sizes]
        lo, hi = min(cells, key=lambda c: c.mean), max(cells, key=lambda c: c.mean)
        flat.append(not _degrades(hi, lo))
        verb = 'stays within' if flat[-1] else 'varies over'
        out.append(f'{NAMES[norm]} {verb} {_pct(lo)}-{_pct(hi)} at every batch size.')
    if 'batch_norm' in norms and flat:
        out.append(
            "This is the Group Normalization paper's pattern: statistics over the batch fail "
            'when the batch is tiny, statistics within each example do not.'
            if bn_collapses and all(flat)
            else "So this study does not show the Group Normalization paper's pattern."
        )
    if 'batch_renorm' in norms and 'batch_norm' in norms and bn_collapses:
        renorm, bn = at('batch_renorm', small), at('batch_norm', small)
        out.append(
            f'Batch Renorm, which corrects the batch statistics toward the running averages, '
            f'{"recovers part of the loss" if renorm.mean < bn.mean else "does not help"} at '
            f"batch {small}: {_pct(renorm)} against BatchNorm's {_pct(bn)}."
        )
    for norm in ('none', 'instance_norm'):
        if norm in norms:
            out.append(
                f'{NAMES[norm].capitalize()}: {_pct(at(norm, small))} at batch {small}, '
                f'{_pct(at(norm, large))} at batch {large}.'
            )
    return out


def get_study(arg=None):
    arg = parse_arg(arg, dataset='digits', seeds=5, epochs=0.0, smoke=False)
    if arg.dataset == 'digits':
        config = 'configs/digits_mlp.py:act=relu' + (',smoke=True' if arg.smoke else '')
        norms = ['batch_norm', 'group_norm', 'layer_norm', 'batch_renorm', 'none']
        epochs = arg.epochs or 10.0
        derive = None
    elif arg.dataset == 'cifar10':
        config = 'configs/cifar10_resnet.py:depth=20' + (',smoke=True' if arg.smoke else '')
        norms = ['batch_norm', 'group_norm', 'layer_norm', 'instance_norm', 'batch_renorm', 'none']
        epochs = arg.epochs or 30.0

        def derive(point):
            # The normalizer-free baseline is the NF-ResNet (scaled residuals), not a
            # ResNet with its norms removed.
            return {'model': 'nf_resnet20' if point['norm.name'] == 'none' else 'resnet20'}
    else:
        raise ValueError(f'dataset={arg.dataset!r}: choose digits or cifar10')
    sizes = BATCH_SIZES[:2] if arg.smoke else BATCH_SIZES
    fixed = {} if arg.smoke else {'num_epochs': epochs}
    return Study(
        name='batch_size',
        config=config,
        grid=grid.product(grid.axis('norm.name', norms), grid.axis('batch_size', sizes)),
        seeds=tuple(range(arg.seeds)),
        derive=derive,
        fixed=fixed,
        report=Report(
            metrics=('eval/error',), x='batch_size', series='norm.name', findings=findings
        ),
        description=(
            'How does each normalization degrade as the batch shrinks? Test error after a '
            f'fixed {epochs:g} epochs at batch sizes {", ".join(map(str, sizes))}, learning '
            'rate scaled linearly with the batch (Wu & He 2018, Figure 1). '
            + (
                'The 3x100 ReLU MLP on 8x8 digits: its BatchNorm statistics come from the '
                'batch alone, so a small batch gives noisy statistics in training and a '
                'mismatch with the running averages used at test time.'
                if arg.dataset == 'digits'
                else 'ResNet-20 on CIFAR-10; NF-ResNet-20 as the normalizer-free baseline.'
            )
        ),
    )
