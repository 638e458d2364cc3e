"""The BatchNorm paper's Figure 1 (Ioffe & Szegedy 2015): a 3x100 sigmoid MLP, with and without BN.

    python -m normlab.sweep --config=experiments/bn_paper_mnist.py --workdir=runs/bn_paper
    python -m normlab.sweep --config=experiments/bn_paper_mnist.py:dataset=mnist \\
        --workdir=runs/bn_paper_mnist      # MNIST prepared (`tfds build mnist`)

Figure 1(a) is test accuracy over training; 1(b, c) the 15th, 50th and 85th
percentiles of one sigmoid's input over training, without and with BatchNorm. Here
the trainer logs, at every evaluation (``eval_every_steps``), ``eval/error`` and the
percentiles of each hidden layer's sigmoid input over the first test batch and all
of the layer's units (``record_preactivations``: ``preact3/p15`` ... for the last
hidden layer, the one plotted). Writes ``test_accuracy.png`` and
``preact3_percentiles.png`` next to the table.

On ``digits`` (default, offline): batch 60, 30 epochs (~700 steps), 2 seeds, 2.5
CPU-minutes. Measured, as in the paper: with BatchNorm the test accuracy passes 90%
after ~27 steps, without it after ~216; the median sigmoid input stays at 0 with
BatchNorm (range 0.02) and wanders over 0.43 without it, whose 15-85th percentile
band widens from 0.95 to 2.7. Arguments:
``dataset`` (digits | mnist), ``seeds``, ``epochs``, ``smoke``.
"""

from normlab.config import parse_arg
from normlab.studies import Report, Study, grid, plots
from normlab.studies.report import number

LAYER = 'preact3'
PERCENTILES = tuple(f'{LAYER}/p{q}' for q in (15, 50, 85))
ACCURACY_MARK = 0.9  # "steps to reach 90% test accuracy"
NAMES = {'none': 'Without BatchNorm', 'batch_norm': 'With BatchNorm'}


def _mean(values):
    values = list(values)
    return sum(values) / len(values) if values else float('nan')


def _first_step(history, key, predicate):
    return next((row['step'] for row in history if key in row and predicate(row[key])), None)


def findings(table) -> list[str]:
    """Training speed and the drift of the sigmoid inputs, from each run's history."""
    out = []
    for norm in table.values('norm.name'):
        runs = [r for r in table.records if r.params['norm.name'] == norm]
        runs = [r for r in runs if r.status == 'finished']
        if not runs:
            continue
        name = NAMES.get(norm, norm)
        error = table.cell('eval/error', **{'norm.name': norm})
        reach = [
            _first_step(r.history(['eval/error']), 'eval/error', lambda e: 1 - e >= ACCURACY_MARK)
            for r in runs
        ]
        reached = [s for s in reach if s is not None]
        speed = (
            f'passes {ACCURACY_MARK:.0%} test accuracy after {_mean(reached):.0f} steps'
            + (f' ({len(reached)} of {len(runs)} seeds)' if len(reached) < len(runs) else '')
            if reached
            else f'never reaches {ACCURACY_MARK:.0%} test accuracy'
        )
        text = f'{name}, the MLP {speed} and ends at {number(error.mean, "eval/error")}% error.'
        curves = [r.history(PERCENTILES) for r in runs]
        if all(curves):
            median = [[row[PERCENTILES[1]] for row in c if PERCENTILES[1] in row] for c in curves]
            spread = [
                [row[PERCENTILES[2]] - row[PERCENTILES[0]] for row in c if PERCENTILES[0] in row]
                for c in curves
            ]
            drift = _mean(max(m) - min(m) for m in median)
            text += (
                f' The median input of a last-layer sigmoid moves over a range of {drift:.2f} '
                f'during training and its 15-85th percentile band goes from '
                f'{_mean(s[0] for s in spread):.2f} to {_mean(s[-1] for s in spread):.2f} wide.'
            )
        out.append(text)
    return out or ['No run finished.']


def curve_plots(records, outdir) -> list[str]:
    paths = [
        plots.plot_curves(
            records,
            ['eval/error'],
            f'{outdir}/test_accuracy.png',
            line_by='norm.name',
            transform=lambda e: 1.0 - e,
            ylabel='test accuracy',
            title='Figure 1(a): test accuracy during training',
        )
    ]
    if any(r.history(PERCENTILES[:1]) for r in records if r.status == 'finished'):
        paths.append(
            plots.plot_curves(
                records,
                PERCENTILES,
                f'{outdir}/{LAYER}_percentiles.png',
                panel_by='norm.name',
                labels={k: f'{k.split("/p")[1]}th percentile' for k in PERCENTILES},
                ylabel='sigmoid input (last hidden layer)',
                title='Figure 1(b, c): 15/50/85th percentiles of a sigmoid input',
            )
        )
    return paths


def get_study(arg=None):
    arg = parse_arg(arg, dataset='digits', seeds=2, epochs=0.0, smoke=False)
    if arg.dataset not in ('digits', 'mnist'):
        raise ValueError(f'dataset={arg.dataset!r}: choose digits or mnist')
    config = f'configs/mnist_mlp.py:dataset={arg.dataset}' + (',smoke=True' if arg.smoke else '')
    # ~25 evaluations over training: the curves' resolution.
    epochs = arg.epochs or (30.0 if arg.dataset == 'digits' else 10.0)
    steps_per_epoch = {'digits': 1437, 'mnist': 60000}[arg.dataset] // 60
    fixed = {'record_preactivations': True}
    if arg.smoke:
        fixed['eval_every_steps'] = 3
    else:
        fixed['num_epochs'] = epochs
        fixed['eval_every_steps'] = max(int(epochs * steps_per_epoch) // 25, 1)
    return Study(
        name='bn_paper_mnist',
        config=config,
        grid=grid.axis('norm.name', ['none', 'batch_norm']),
        seeds=tuple(range(arg.seeds)),
        fixed=fixed,
        report=Report(
            metrics=('eval/error', 'train/loss'),
            x=None,
            series='norm.name',
            findings=findings,
            plots=curve_plots,
        ),
        description=(
            'Does BatchNorm make a sigmoid MLP train faster by keeping its activations '
            "stable? The BatchNorm paper's Figure 1: the 3x100 sigmoid MLP with and without "
            f'BatchNorm on {arg.dataset}, batch 60.'
        ),
    )
