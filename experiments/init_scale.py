"""Does BatchNorm make training insensitive to the weight initialization's scale?

    python -m normlab.sweep --config=experiments/init_scale.py --workdir=runs/init_scale \\
        --parallel=2

48 runs (3 norms x 4 scales x 2 depths x 2 seeds): 7.4 min here with
``--parallel=2`` on the shared, heavily loaded 2-core CPU. Measured (report.md):
the claim holds for BatchNorm. It trains at every scale from 0.01 to 10 at both
depths (test error 4.8-8.6% at depth 3, 6.0-15.3% at depth 10; worst at 10x).
Without normalization the 3-layer network trains only at 0.1 (38.3 ± 4.7%) and 1
(6.7 ± 0.4%), stays at chance at 0.01 and diverges at 10; at depth 10 it fails
everywhere (at scale 1 one seed of two trains). LayerNorm matches BatchNorm at
depth 3 (5.9-11.1%) but at depth 10 fails at every scale at this learning rate
(one seed of two trains at scale 1): its tolerance is not BatchNorm's here.
Measured before main's d5aba98 changed the device-resident shuffle to integer
hashing: a rerun sees the data in another order, so its numbers differ within
seed noise.

The claim (Ioffe & Szegedy 2015, Sec. 3.3: BatchNorm lets us "be less careful about
initialization"): every kernel of a ReLU MLP starts as flax's LeCun normal times a
factor (``model_options.kernel_init_scale``, 0.01 to 10), with BatchNorm, LayerNorm
or no normalization before each ReLU, on ``mnist5k`` (4,000 real MNIST digits),
3 hidden layers of 100 (the paper's shape) and a deep variant of 10; batch 60,
300 steps (4.5 epochs), SGD with Nesterov momentum 0.9 at 0.1, cosine; 2 seeds.
Evaluated at steps 0, 10, 25, 50, 100, 200 and 300: a run *starts* training at the
first evaluation below 80% test error (chance is 90%) and *trains* if it ends
below 50%.

What to expect: a normalized layer's output does not depend on the scale of the
weights before it (``BN(aWx) = BN(Wx)``), so the forward pass at init is the same at
every scale except for the unnormalized classifier head; but its gradient scales as
``1/a``, so the effective learning rate of the hidden weights scales as ``1/a**2``
(van Laarhoven 2017): a tiny init is a huge step size. Without normalization a
ReLU network's output scales as ``a**(depth+1)``: 0.01 gives vanishing logits and
gradients, 10 an exploding loss.

Arguments: ``seeds``, ``steps``, ``smoke``.
"""

from normlab.config import parse_arg
from normlab.studies import Report, Study, curves, grid
from normlab.studies.report import number

SCALES = (0.01, 0.1, 1.0, 10.0)
DEPTHS = (3, 10)
NORMS = ('batch_norm', 'layer_norm', 'none')
NAMES = {'batch_norm': 'BatchNorm', 'layer_norm': 'LayerNorm', 'none': 'no normalization'}
SCALE, DEPTH = 'model_options.kernel_init_scale', 'model_options.depth'
STARTED, TRAINED = 0.8, 0.5  # test error: below chance (0.9) / clearly learned
EVAL_STEPS = (0, 10, 25, 50, 100, 200)


def _runs(table, **where):
    return [
        r
        for r in table.records
        if all(r.params.get(k) == v for k, v in where.items()) and r.status == 'finished'
    ]


def _scales_text(scales) -> str:
    return ', '.join(f'{s:g}' for s in scales)


def _start_text(crossings) -> str:
    """Mean step of the first evaluation below STARTED; '<= s' when that is the first
    evaluation after step 0 (the resolution); 'never' counts the seeds."""
    missed = sum(c.step is None for c in crossings)
    if missed:
        return f'never in {missed} of {len(crossings)} seeds'
    mean = curves.mean_steps(crossings)
    first = all(c.before == 0 for c in crossings)
    return f'<= {mean:.0f}' if first else f'{mean:.0f}'


def findings(table) -> list[str]:
    """At which init scales each norm starts and finishes training, per depth."""
    m = 'eval/error'
    out = []
    scales = sorted(table.values(SCALE))
    for depth in sorted(table.values(DEPTH)):
        trained_at = {}
        for norm in [n for n in NORMS if n in table.values('norm.name')]:
            trains, fails, diverged, starts = [], [], [], []
            for scale in scales:
                where = {'norm.name': norm, SCALE: scale, DEPTH: depth}
                if not table.has(**where):
                    continue
                cell = table.cell(m, **where)
                if cell.n == 0:
                    (diverged if cell.diverged else fails).append(scale)
                    continue
                worst = max(cell.values)  # every seed must train
                (trains if worst < TRAINED and not cell.diverged else fails).append(scale)
                runs = _runs(table, **where)
                start = [curves.steps_to_error(r, STARTED) for r in runs]
                starts.append(f'{scale:g}: {_start_text(start)}')
            trained_at[norm] = trains
            errors = [table.cell(m, **{'norm.name': norm, SCALE: s, DEPTH: depth}) for s in trains]
            span = (
                f' (test error {number(min(c.mean for c in errors), m)}-'
                f'{number(max(c.mean for c in errors), m)}%)'
                if errors
                else ''
            )
            text = f'Depth {depth}, {NAMES[norm]}: ' + (
                f'trains at init scale {_scales_text(trains)}{span}'
                if trains
                else 'trains at no scale'
            )
            if fails:
                text += f'; fails (>= {TRAINED:.0%} error in some seed) at {_scales_text(fails)}'
            if diverged:
                text += f'; diverges at {_scales_text(diverged)}'
            text += (
                f'. Steps to below {STARTED:.0%} test error (mean over seeds), by scale: '
                f'{"; ".join(starts)}.'
            )
            out.append(text)
        if 'batch_norm' in trained_at and 'none' in trained_at:
            bn, none = set(trained_at['batch_norm']), set(trained_at['none'])
            if bn > none:
                verdict = (
                    'appears: BatchNorm trains at every scale the plain network does, and more'
                )
            elif bn == none:
                verdict = 'does not appear: both train at the same scales'
            else:
                verdict = 'does not appear: the plain network trains at scales BatchNorm does not'
            out.append(
                f'Depth {depth}: the claim that BatchNorm tolerates a careless initialization '
                f'{verdict} ({len(bn)} of {len(scales)} scales against {len(none)}).'
            )
    return out or ['No run finished.']


def get_study(arg=None):
    arg = parse_arg(arg, seeds=2, steps=300, smoke=False)
    config = 'configs/mnist_mlp.py:dataset=mnist5k,act=relu' + (',smoke=True' if arg.smoke else '')
    if arg.smoke:
        # Two runs; the plain one diverges within its 6 steps.
        points = grid.product(
            grid.axis('norm.name', ['batch_norm', 'none']),
            grid.axis(SCALE, [10.0]),
            grid.axis(DEPTH, [3]),
        )
        fixed = {'num_train_steps': 6, 'eval_steps': (0, 2)}
    else:
        points = grid.product(
            grid.axis('norm.name', list(NORMS)), grid.axis(SCALE, SCALES), grid.axis(DEPTH, DEPTHS)
        )
        fixed = {
            'num_train_steps': arg.steps,
            'eval_steps': tuple(s for s in EVAL_STEPS if s < arg.steps),
        }
    fixed.update({'model_options.widths': (100,), 'record_preactivations': False})
    return Study(
        name='init_scale',
        config=config,
        grid=points,
        seeds=tuple(range(arg.seeds)),
        fixed=fixed,
        report=Report(
            metrics=('eval/error', 'train/loss'), x=SCALE, series='norm.name', findings=findings
        ),
        description=(
            'Does BatchNorm make training insensitive to the scale of the initial weights? '
            'Test error of a ReLU MLP on mnist5k after a fixed budget with every kernel '
            "initialized at 0.01x to 10x flax's default, with BatchNorm, LayerNorm or no "
            'normalization, 3 and 10 hidden layers.'
        ),
    )
