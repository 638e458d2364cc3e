"""Normalization in a small Vision Transformer: DyT against LayerNorm; placement, QK-norm and
the range of learning rates that train.

    python -m normlab.sweep --config=experiments/transformer_norms.py \\
        --workdir=runs/transformer_norms --parallel=2

RUNTIME_AND_RESULT

Two published questions, on ``digits`` (1,437 training images of 8x8 pixels) with the
``vit`` of ``configs/digits_vit.py`` at width 32 (2x2 patches: 16 tokens and a class
token, 4 blocks of 4 heads, ~55k parameters), AdamW at batch 64 for 10 epochs (a 1-epoch
linear warm-up, then cosine decay), peak learning rates 1e-3 to 1e-1, 2 seeds:

1. Does Dynamic Tanh match LayerNorm? Zhu et al. (CVPR 2025) replace every LayerNorm of a
   pre-LN ViT-B by ``scale * tanh(alpha * x) + bias`` and report 82.3% -> 82.5% ImageNet
   top-1. Here LayerNorm, RMSNorm, DyT, BatchNorm (over batch x tokens) and no
   normalization, pre-LN, each at its best learning rate.
2. Do pre-/peri-LN and QK-norm widen the range of learning rates that train? Wortsman et
   al. 2023 ("Small-scale proxies for large-scale Transformer training instabilities")
   plot final loss against learning rate: QK-layernorm keeps small models training at
   rates where attention logits otherwise grow and training fails. Here LayerNorm in
   post-, pre- and peri-LN placement, each with and without ``qk_norm``. A rate *trains*
   when the final training loss is below 0.1 (from ln 10 = 2.3 at initialization) with
   every seed finite; the LR sensitivity is Wortsman et al.'s: the mean over rates of
   ``min(loss, ln 10)`` minus the best loss (diverged runs count as ln 10), lower is
   more tolerant.

Arguments (``experiments/transformer_norms.py:seeds=3,epochs=20``): ``seeds``,
``epochs``, ``smoke`` (a seconds-long grid for tests).
"""

import math

from normlab.config import parse_arg
from normlab.studies import Report, Study, grid
from normlab.studies.report import number

NORM, PLACEMENT, QK, LR = (
    'norm.name',
    'model_options.norm_placement',
    'model_options.qk_norm',
    'learning_rate',
)
RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
NORMS = ('layer_norm', 'rms_norm', 'dyt', 'batch_norm', 'none')
PLACEMENTS = ('post', 'pre', 'peri')
NAMES = {
    'layer_norm': 'LayerNorm',
    'rms_norm': 'RMSNorm',
    'dyt': 'DyT',
    'batch_norm': 'BatchNorm',
    'none': 'no normalization',
}
INITIAL_LOSS = math.log(10)  # uniform logits over 10 classes
TRAINED_LOSS = 0.1


def rows(norms, placements) -> grid.Grid:
    """Every norm pre-LN without QK-norm; LayerNorm in every placement, with and without."""
    by_norm = [{NORM: n, PLACEMENT: 'pre', QK: False} for n in norms]
    by_placement = [
        {NORM: 'layer_norm', PLACEMENT: p, QK: qk}
        for p in placements
        for qk in (False, True)
        if (p, qk) != ('pre', False)  # already in by_norm
    ]
    return tuple(by_norm + by_placement)


def _curve(table, row, metric):
    """(rate, cell) of one row at every rate it was run at."""
    return [
        (lr, table.cell(metric, **row, **{LR: lr}))
        for lr in sorted(table.values(LR))
        if table.has(**row, **{LR: lr})
    ]


def _trains(cell) -> bool:
    return cell.n > 0 and not cell.diverged and cell.mean < TRAINED_LOSS


def sensitivity(curve) -> float:
    """Wortsman et al.'s LR sensitivity: mean of min(loss, ln 10) - best loss."""
    losses = [
        min(c.mean, INITIAL_LOSS) if c.n and not c.diverged else INITIAL_LOSS for _, c in curve
    ]
    return sum(losses) / len(losses) - min(losses)


def _best(table, row):
    """(rate, error cell) at the rate with the lowest mean test error, or None."""
    measured = [(lr, c) for lr, c in _curve(table, row, 'eval/error') if c.n]
    return min(measured, key=lambda item: item[1].mean) if measured else None


def _pct(cell) -> str:
    text = f'{number(cell.mean, "eval/error")}%'
    return text + (f' ± {number(cell.std, "eval/error")}' if cell.n > 1 else '')


def _rates(rates) -> str:
    return f'{min(rates):g} to {max(rates):g}' if rates else 'none'


def _label(row) -> str:
    return f'{NAMES.get(row[NORM], row[NORM])}, {row[PLACEMENT]}-LN' + (
        ', QK-norm' if row[QK] else ''
    )


def findings(table) -> list[str]:
    present = [
        dict(zip((NORM, PLACEMENT, QK), k, strict=True))
        for k in dict.fromkeys((p[NORM], p[PLACEMENT], p[QK]) for p in table.points)
    ]
    out = [
        f'(A learning rate trains when the final training loss is below {TRAINED_LOSS:g} '
        'for every seed; LR sensitivity is the mean excess of min(loss, ln 10) over the best '
        'loss across rates, Wortsman et al. 2023.)'
    ]
    summary = {}
    for row in present:
        losses = _curve(table, row, 'train/loss')
        best = _best(table, row)
        if best is None:
            continue
        training = [lr for lr, c in losses if _trains(c)]
        diverged = [lr for lr, c in losses if c.diverged]
        summary[(row[NORM], row[PLACEMENT], row[QK])] = (best, training, sensitivity(losses))
        text = (
            f'{_label(row)}: best test error {_pct(best[1])} at lr {best[0]:g}; trains at lr '
            f'{_rates(training)} ({len(training)} of {len(losses)} rates), LR sensitivity '
            f'{sensitivity(losses):.2f}'
        )
        out.append(text + (f'; diverged at lr {_rates(diverged)}.' if diverged else '.'))

    ln, dyt = summary.get(('layer_norm', 'pre', False)), summary.get(('dyt', 'pre', False))
    if ln and dyt:
        (_, a), (_, b) = ln[0], dyt[0]
        gap = b.mean - a.mean
        noise = max(0.01, 2 * (a.std + b.std))
        if abs(gap) <= noise:
            verdict = 'matches LayerNorm'
        else:
            verdict = 'is worse than LayerNorm' if gap > 0 else 'beats LayerNorm'
        out.append(
            f'DyT {verdict} here: {_pct(b)} against {_pct(a)} test error, each at its best '
            f'rate (a difference of {number(abs(gap), "eval/error")} points; within '
            f'{number(noise, "eval/error")} counts as a match). Zhu et al. 2025 report '
            '82.3% -> 82.5% ImageNet top-1 for ViT-B.'
        )

    def widest(key):
        return summary[key][1] if key in summary else None

    parts, effect = [], False
    post = widest(('layer_norm', 'post', False))
    for placement in ('pre', 'peri'):
        other = widest(('layer_norm', placement, False))
        if post is not None and other is not None:
            wider = len(other) > len(post)
            effect |= wider
            parts.append(
                f"{placement}-LN trains at {len(other)} rates against post-LN's {len(post)}"
                f' ({"wider" if wider else "not wider"})'
            )
    for placement in PLACEMENTS:
        plain, qk = (
            widest(('layer_norm', placement, False)),
            widest(('layer_norm', placement, True)),
        )
        if plain is not None and qk is not None:
            wider = len(qk) > len(plain) or (
                len(qk) == len(plain)
                and summary[('layer_norm', placement, True)][2]
                < summary[('layer_norm', placement, False)][2] - 0.05
            )
            effect |= wider
            parts.append(
                f'QK-norm in {placement}-LN: {len(qk)} rates against {len(plain)}, LR '
                f'sensitivity {summary[("layer_norm", placement, True)][2]:.2f} against '
                f'{summary[("layer_norm", placement, False)][2]:.2f} '
                f'({"wider" if wider else "not wider"})'
            )
    if parts:
        out.append('Range of learning rates that train (LayerNorm): ' + '; '.join(parts) + '.')
        if not effect:
            out.append(
                'At this scale neither the placement nor QK-norm widens the range of '
                'learning rates that train: the effect Wortsman et al. report does not appear.'
            )
    return out


def get_study(arg=None):
    arg = parse_arg(arg, seeds=2, epochs=10.0, smoke=False)
    if arg.smoke:
        config = 'configs/digits_vit.py:smoke=True'
        points = rows(('layer_norm', 'dyt'), ('post',))
        rates = (1e-2,)
        fixed = {}
    else:
        config = 'configs/digits_vit.py'
        points = rows(NORMS, PLACEMENTS)
        rates = RATES
        fixed = {'num_epochs': arg.epochs, 'warmup_epochs': 1.0, 'model_options.width': 32}
    return Study(
        name='transformer_norms',
        config=config,
        grid=grid.product(points, grid.axis(LR, rates)),
        seeds=tuple(range(arg.seeds)),
        fixed=fixed,
        report=Report(metrics=('eval/error', 'train/loss'), x=LR, series=NORM, findings=findings),
        description=(
            'Does DyT match LayerNorm in a ViT, and do pre-/peri-LN and QK-norm widen the '
            'range of learning rates that train? A 4-block ViT on 8x8 digits with LayerNorm, '
            'RMSNorm, DyT, BatchNorm or no normalization (pre-LN), and LayerNorm post-, pre- '
            f'and peri-LN with and without QK-norm, at peak learning rates '
            f'{", ".join(f"{r:g}" for r in rates)} (AdamW).'
        ),
    )
