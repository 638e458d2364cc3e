"""Final test error against learning rate for each normalization: which tolerate high rates?

    python -m normlab.sweep --config=experiments/learning_rate.py --workdir=runs/learning_rate \\
        --parallel=2

On ``digits``: the 3x100 ReLU MLP at batch 32 (no learning-rate scaling), SGD with
Nesterov momentum 0.9 and a cosine schedule, 10 epochs, 11 learning rates from 0.01
to 3.2 in quarter decades (about 1.8x per step), 5 seeds: 275 short runs. The
learning rate is optimizer state, so each norm's 55 runs train as one bundle (one
program). The question is the BatchNorm paper's "higher learning rates" claim
(scale-invariant weights make the effective step shrink as they grow). A rate
counts as good for a norm only if every seed is good there, and a range "up to lr
x" is known to the grid's resolution: the limit lies between x and the next rate.
Measured (report.md; 3.7 min with ``--parallel=2`` while another job used the other
half of the CPU, load ~6): without normalization good up to lr 0.1 (a seed diverges
from 0.32); BatchNorm up to lr 1 (4 grid steps higher, 10x; 1.8 is not: 72 ± 16%
error); GroupNorm up to 0.32 (3.2x); LayerNorm and Batch Renorm up to 0.18 (1.8x).
The best errors are all 2.0-2.6% (BatchNorm 2.1 ± 0.5% at lr 0.1 and 0.32): the
norms widen the range of rates that train, not the best error reached.
A diverged run (non-finite loss) is a result here, shown as ``div.``.

Arguments: ``seeds``, ``epochs``, ``smoke``.
"""

import math

from normlab.config import parse_arg
from normlab.studies import Report, Study, grid
from normlab.studies.report import number

# Quarter-decade steps (about 1.8x), rounded to two digits.
RATES = (0.01, 0.018, 0.032, 0.056, 0.1, 0.18, 0.32, 0.56, 1.0, 1.8, 3.2)
NORMS = ('batch_norm', 'group_norm', 'layer_norm', 'batch_renorm', 'none')
NAMES = {
    'batch_norm': 'BatchNorm',
    'group_norm': 'GroupNorm',
    'layer_norm': 'LayerNorm',
    'batch_renorm': 'Batch Renorm',
    'none': 'No normalization',
}


def tolerated(cells) -> tuple[float, float, list]:
    """(best mean error, its rate, good rates): a rate is good when *every* seed's error
    is within max(1 point, 2x the best mean) and no seed diverged."""
    measured = [(lr, c) for lr, c in cells if c.n]
    best_lr, best = min(measured, key=lambda item: item[1].mean)
    limit = best.mean + max(0.01, best.mean) + 1e-9  # 1e-9: an error of exactly twice counts
    good = [lr for lr, c in measured if max(c.values) <= limit and not c.diverged]
    return best.mean, best_lr, good


def _next_rate(rates, lr):
    """The grid's next rate above `lr` (None at the top): the resolution of "up to lr"."""
    higher = [r for r in rates if r > lr]
    return min(higher) if higher else None


def _up_to(rates, lr) -> str:
    nxt = _next_rate(rates, lr)
    return f'{lr:g} (the next rate of the grid, {nxt:g}, is not)' if nxt else f'{lr:g} (the top)'


def findings(table) -> list[str]:
    m = 'eval/error'
    rates = sorted(table.values('learning_rate'))
    out = [
        "(A rate is good for a norm when every seed's error is at most twice the norm's best "
        'mean, or 1 point above it if that is more, and no seed diverged. The grid steps by '
        f'about {rates[1] / rates[0]:.2g}x, so "up to lr x" means the limit lies between x and '
        'the next rate.)'
    ]
    highest = {}
    for norm in table.values('norm.name'):
        cells = [
            (lr, table.cell(m, **{'norm.name': norm, 'learning_rate': lr}))
            for lr in rates
            if table.has(**{'norm.name': norm, 'learning_rate': lr})
        ]
        if not any(c.n for _, c in cells):
            continue
        best, best_lr, good = tolerated(cells)
        highest[norm] = max(good)
        diverged = [lr for lr, c in cells if c.diverged]
        text = (
            f'{NAMES.get(norm, norm)}: best {number(best, m)}% at lr {best_lr:g}, good from lr '
            f'{min(good):g} up to {_up_to(rates, max(good))}'
        )
        if diverged:
            text += f'; diverged at lr {", ".join(f"{lr:g}" for lr in diverged)}'
        out.append(text + '.')
    if 'none' in highest:
        base = highest['none']
        wider = [(n, lr) for n, lr in highest.items() if n != 'none' and lr > base]
        same = [n for n, lr in highest.items() if n != 'none' and lr <= base]
        steps = {r: i for i, r in enumerate(rates)}
        parts = [
            f'{NAMES.get(n, n)} up to lr {lr:g} ({steps[lr] - steps[base]} grid step'
            f'{"s" if steps[lr] - steps[base] > 1 else ""} higher, {lr / base:.3g}x)'
            for n, lr in sorted(wider, key=lambda item: -item[1])
        ]
        if parts:
            out.append(
                f'Against the unnormalized network (good up to lr {base:g}), the range of good '
                f'learning rates widens for {"; ".join(parts)}'
                + (f', but not for {", ".join(NAMES.get(n, n) for n in same)}.' if same else '.')
            )
        elif same:
            out.append(
                f'No normalization widens the range of good learning rates beyond the '
                f"unnormalized network's (up to lr {base:g})."
            )
    return out


def get_study(arg=None):
    arg = parse_arg(arg, seeds=5, epochs=10.0, smoke=False)
    config = 'configs/digits_mlp.py:act=relu' + (',smoke=True' if arg.smoke else '')
    rates = (0.1, 3.0) if arg.smoke else RATES
    fixed = {'batch_size': 32, 'lr_scaling': 'none'}
    if not arg.smoke:
        fixed['num_epochs'] = arg.epochs
    return Study(
        name='learning_rate',
        config=config,
        grid=grid.product(grid.axis('norm.name', NORMS), grid.axis('learning_rate', rates)),
        seeds=tuple(range(arg.seeds)),
        fixed=fixed,
        report=Report(
            metrics=('eval/error',), x='learning_rate', series='norm.name', findings=findings
        ),
        description=(
            'Which normalizations tolerate high learning rates? Final test error of the 3x100 '
            f'ReLU MLP on digits at batch 32 after {arg.epochs:g} epochs, across peak '
            f'learning rates {", ".join(f"{r:g}" for r in rates)} (log spaced, '
            f'{math.log10(rates[-1] / rates[0]):.1f} decades).'
        ),
    )
