"""Where the time goes: per-kernel times of a compiled step from the JAX profiler.

Runs a jitted function a few times under `jax.profiler.trace`, reads the Perfetto
trace back and prints each XLA:CPU thunk (fusion, convolution, YNNPACK call) with its
mean time per call, what it computes (the ops inside a fusion) and its output shape,
then totals by kind. Needs ``--xla_cpu_enable_xprof_traceme=true`` in XLA_FLAGS,
which this module sets when it starts JAX itself.

    python -m scripts.bench.profile norm group_norm 128,32,32,64 [--mode=eval]
    python -m scripts.bench.profile resnet20 [--norm=batch_norm] [--xla=no_ynn_conv]

Per-kernel times on a shared machine are noisy; the shares and the ranking are what
this is for. Timings of record come from the other benchmark modules.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

if __name__ == '__main__':
    os.environ['XLA_FLAGS'] = (
        os.environ.get('XLA_FLAGS', '') + ' --xla_cpu_enable_xprof_traceme=true'
    ).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def _instructions(hlo: str) -> dict[str, str]:
    out = {}
    for line in hlo.splitlines():
        m = re.match(r'\s*(?:ROOT )?%(\S+) = (.*)', line)
        if m and m.group(1) not in out:
            out[m.group(1)] = m.group(2)
    return out


def _body_ops(hlo: str, instr: str) -> str:
    m = re.search(r'calls=%([\w.\-]+)', instr)
    if not m:
        return (
            re.match(r'\S+ ([\w\-]+)\(', instr).group(1)
            if re.match(r'\S+ ([\w\-]+)\(', instr)
            else ''
        )
    body = re.search(r'\n%' + re.escape(m.group(1)) + r' [^\n]*\{\n(.*?)\n\}', hlo, re.S)
    if not body:
        return ''
    skip = {'parameter', 'constant', 'bitcast', 'broadcast', 'reshape', 'tuple'}
    ops = re.findall(r'= \S+ ([\w\-]+)\(', body.group(1))
    return ' '.join(o for o in ops if o not in skip)


def profile(run, hlo: str, *, calls: int = 3, top: int = 25) -> dict:
    """Per-thunk mean times (ms per call) of `run()`, which executes the compiled
    program whose HLO text is `hlo` and blocks until it is done."""
    for _ in range(2):
        run()
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(calls):
                run()
        path = sorted(glob.glob(os.path.join(tmp, '**', '*.json.gz'), recursive=True))[-1]
        with gzip.open(path) as f:
            events = json.load(f)['traceEvents']
    instrs = _instructions(hlo[hlo.find('ENTRY') :])
    total = collections.Counter()
    for e in events:
        if e.get('ph') == 'X' and e['name'] in instrs:
            total[e['name']] += e['dur'] / 1e3 / calls
    kinds = collections.Counter()
    rows = []
    for name, ms in total.most_common():
        instr = instrs[name]
        ops = _body_ops(hlo, instr)
        kind = 'ynn ' if '__ynn' in instr else ''
        kind += (
            'convolution'
            if 'convolution' in ops
            else 'reduce'
            if 'reduce' in ops
            else 'transpose'
            if 'transpose' in ops or 'copy' in ops
            else 'dot'
            if 'dot' in ops
            else 'elementwise'
        )
        kinds[kind] += ms
        rows.append({'name': name, 'ms': ms, 'kind': kind, 'ops': ops, 'out': instr.split(' ')[0]})
    for r in rows[:top]:
        head = f'{r["ms"]:8.2f} ms  {r["kind"]:16s} {r["name"]:28s}'
        print(f'{head} {r["out"][:36]:36s} {r["ops"][:60]}')
    print('by kind:', ', '.join(f'{k} {v:.1f} ms' for k, v in kinds.most_common()))
    print(f'sum of kernels: {sum(kinds.values()):.1f} ms per call')
    return {'rows': rows, 'kinds': dict(kinds)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('what', choices=['norm', 'resnet20'])
    parser.add_argument('name', nargs='?', default='batch_norm', help='norm (for `norm`)')
    parser.add_argument('shape', nargs='?', default='128,32,32,64')
    parser.add_argument('--mode', default='train', choices=['train', 'eval'])
    parser.add_argument('--lib', default='normlab', choices=['normlab', 'flax'])
    parser.add_argument('--dtype', default='float32')
    parser.add_argument('--norm', default='batch_norm', help='norm (for `resnet20`)')
    parser.add_argument('--xla', default='default', help='a name in training.XLA_VARIANTS')
    parser.add_argument('--top', type=int, default=25)
    args = parser.parse_args(argv)
    if args.what == 'norm':
        from scripts.bench import norms

        case = next(c for c in norms.CASES if c.name == args.name)
        shape = tuple(int(s) for s in args.shape.split(','))
        x, dy = norms._inputs(shape, jnp.dtype(args.dtype))
        cls = case.ours if args.lib == 'normlab' else case.theirs
        train, evaluate, v = norms.layer_fns(cls(**case.kwargs, dtype=x.dtype), x, case.stateful)
        fn, fargs = (train, (v, x, dy)) if args.mode == 'train' else (evaluate, (v, x))
        compiled = fn.lower(*fargs).compile()
        profile(lambda: jax.block_until_ready(compiled(*fargs)), compiled.as_text())
    else:
        from configs import cifar10_resnet
        from scripts.bench.training import XLA_VARIANTS, JaxStep

        step = JaxStep(cifar10_resnet, f'norm={args.norm}', (32, 32, 3), xla=XLA_VARIANTS[args.xla])
        profile(step, step.compiled.as_text(), calls=2, top=args.top)


if __name__ == '__main__':
    sys.exit(main())
