"""Benchmark 3: step time on 1, 2, 4 and 8 simulated CPU devices, global vs per-device BN.

ResNet-20 (`configs/cifar10_resnet.py`, BatchNorm) at a fixed per-device batch, with
normlab's data-parallel train step (`shard_map` over the ``data`` axis). Each device
count runs in its own process (``XLA_FLAGS=--xla_force_host_platform_device_count=N``),
which alternates, on the same batch:

* ``global``: ``norm.virtual_batch_size=None``: statistics pooled over all devices
  (one collective per BatchNorm layer and direction);
* ``per_device``: ``norm.virtual_batch_size`` = the per-device batch: no collective.

The ratio global / per_device is the cost of the cross-device reduction. Simulated
devices share the machine's two cores, so the step time itself grows with N (N
times the work); only the ratio at each N is meaningful.

    python -m scripts.bench.scaling [--quick] [--out FILE]
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile

from scripts.bench import common


def worker(args) -> dict:
    import jax

    from configs import cifar10_resnet
    from scripts.bench.training import NO_YNN_CONV, JaxStep

    n = jax.device_count()
    assert n == args.devices, (n, args.devices)
    per_device = args.per_device_batch
    batch = f'batch_size={per_device * n}'
    contenders = {
        name: JaxStep(
            cifar10_resnet, batch, (32, 32, 3), xla=NO_YNN_CONV, norm__virtual_batch_size=vbs
        )
        for name, vbs in (('global', None), ('per_device', per_device))
    }
    samples = common.alternate(contenders, rounds=args.rounds, budget_s=args.budget_s)
    row = {'devices': n, 'per_device_batch': per_device, 'global_batch': per_device * n}
    for name, c in contenders.items():
        s = samples[name].summary()
        row[name] = {**s, 'compile_s': c.compile_s}
    row['global_vs_per_device_wall'] = common.paired_ratio(samples, 'global', 'per_device')
    row['global_vs_per_device_cpu'] = common.paired_ratio(samples, 'global', 'per_device', 'cpu')
    row['load'] = common.load()
    return row


def run(args) -> dict:
    if args.worker:
        return {'row': worker(args)}
    counts = [1, 4] if args.quick else [1, 2, 4, 8]
    rows = []
    for n in counts:
        env = dict(os.environ)
        env['XLA_FLAGS'] = (
            f'{env.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count={n}'.strip()
        )
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, 'row.json')
            cmd = [
                sys.executable,
                '-m',
                'scripts.bench.scaling',
                '--worker',
                f'--devices={n}',
                f'--per_device_batch={args.per_device_batch}',
                f'--rounds={3 if args.quick else args.rounds}',
                f'--budget_s={args.budget_s}',
                f'--out={out}',
            ]
            subprocess.run(cmd, env=env, check=True)
            with open(out) as f:
                row = json.load(f)['row']
        rows.append(row)
        print(
            f'  {n} device(s) x {row["per_device_batch"]}: global '
            f'{1e3 * row["global"]["wall_s"]:.0f} ms  per-device '
            f'{1e3 * row["per_device"]["wall_s"]:.0f} ms  '
            f'global/per-device {row["global_vs_per_device_wall"]:.3f} '
            f'(cpu {row["global_vs_per_device_cpu"]:.3f})  load {row["load"][0]}',
            flush=True,
        )
    return {
        'benchmark': 'scaling',
        'description': __doc__.splitlines()[0],
        'xla': 'no_ynn_conv',
        'rows': rows,
    }


def add_args(parser) -> None:
    parser.add_argument('--worker', action='store_true', help=argparse_hidden())
    parser.add_argument('--devices', type=int, default=1)
    parser.add_argument('--per_device_batch', type=int, default=16)
    parser.add_argument('--rounds', type=int, default=8)
    parser.add_argument('--budget_s', type=float, default=120.0, help='time per device count')


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


main = functools.partial(common.main, run, add_args, __doc__)

if __name__ == '__main__':
    main()
