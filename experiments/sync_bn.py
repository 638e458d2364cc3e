"""How many examples should BatchNorm's statistics pool? Ghost, per-device, pairs, global.

    python -m normlab.sweep --config=experiments/sync_bn.py --workdir=runs/sync_bn --parallel=2

A fixed global batch of 32 on 4 devices (simulated CPU devices here: every run gets
``XLA_FLAGS=--xla_force_host_platform_device_count=4``), 8 examples per device.
``norm.virtual_batch_size`` sets how many examples one set of statistics covers:

* 2, 4: ghost batches, sub-batches of each device's 8 (Hoffer et al. 2017);
* 8: per-device BatchNorm, what data parallelism gives without synchronization;
* 16: statistics pooled over pairs of devices;
* 32: global (synchronized, cross-replica) BatchNorm.

The 3x100 ReLU MLP on ``digits``, 10 epochs, 2 seeds (10 runs, 2.3 min with
``--parallel=2`` on the shared 2-core CPU). Measured (report.md): ghost batches of
2 give 44.6 ± 21.0% test error (like a real batch of 2, see the batch_size study),
of 4 3.7 ± 0.2%, per device (8) 1.9 ± 0.8%, device pairs (16) 2.1 ± 0.6% and
global (32) 2.8 ± 0.0%: at 8 examples per device, synchronizing buys nothing
here. The gradient batch is 32 in every run: only the statistics change.
Arguments: ``seeds``, ``epochs``, ``smoke``.
"""

from normlab.config import parse_arg
from normlab.studies import Report, Study, grid
from normlab.studies.report import number

DEVICES = 4
GLOBAL_BATCH = 32
KIND = {2: 'ghost', 4: 'ghost', 8: 'per-device', 16: 'device pairs', 32: 'global'}


def findings(table) -> list[str]:
    m = 'eval/error'
    sizes = sorted(table.values('norm.virtual_batch_size'))
    cells = {
        k: table.cell(m, **{'norm.virtual_batch_size': k})
        for k in sizes
        if table.cell(m, **{'norm.virtual_batch_size': k}).n
    }
    if not cells:
        return ['No run finished.']
    parts = [f'{number(c.mean, m)}% ({KIND.get(k, k)}, {k})' for k, c in cells.items()]
    out = [f'Test error by examples per statistic: {"; ".join(parts)}.']
    local, whole = GLOBAL_BATCH // DEVICES, GLOBAL_BATCH
    if local in cells and whole in cells:
        gap = cells[local].mean - cells[whole].mean
        noise = cells[local].std + cells[whole].std
        if abs(gap) <= max(noise, 0.005):
            out.append(
                f'Synchronizing the statistics across devices buys nothing measurable at '
                f'{local} examples per device ({number(cells[local].mean, m)}% per-device vs '
                f'{number(cells[whole].mean, m)}% global).'
            )
        else:
            better = 'global' if gap > 0 else 'per-device'
            out.append(
                f'{better.capitalize()} statistics are better by {number(abs(gap), m)} points '
                f'(per-device {number(cells[local].mean, m)}%, global '
                f'{number(cells[whole].mean, m)}%).'
            )
    smallest = min(cells)
    if smallest < local and local in cells:
        out.append(
            f'Ghost batches of {smallest} give {number(cells[smallest].mean, m)}% against '
            f'{number(cells[local].mean, m)}% for the whole device batch.'
        )
    return out


def get_study(arg=None):
    arg = parse_arg(arg, seeds=2, epochs=10.0, smoke=False)
    config = 'configs/digits_mlp.py:act=relu' + (',smoke=True' if arg.smoke else '')
    sizes = (4, 8, 32) if arg.smoke else tuple(KIND)
    fixed = {'norm.name': 'batch_norm', 'batch_size': GLOBAL_BATCH}
    if not arg.smoke:
        fixed['num_epochs'] = arg.epochs
    return Study(
        name='sync_bn',
        config=config,
        grid=grid.axis('norm.virtual_batch_size', sizes),
        seeds=tuple(range(arg.seeds)),
        fixed=fixed,
        env={'XLA_FLAGS': f'--xla_force_host_platform_device_count={DEVICES}'},
        report=Report(
            metrics=('eval/error', 'train/error'),
            x='norm.virtual_batch_size',
            series='metric',
            findings=findings,
        ),
        description=(
            f'BatchNorm at a global batch of {GLOBAL_BATCH} on {DEVICES} devices '
            f'({GLOBAL_BATCH // DEVICES} per device), with statistics over 2 and 4 examples '
            '(ghost batches), one device, two devices, and all four (synchronized BN): the '
            '3x100 ReLU MLP on digits.'
        ),
    )
