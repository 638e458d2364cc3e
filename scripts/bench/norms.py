"""Benchmark 1: normalization layers, normlab against flax.linen and an elementwise floor.

For every (norm, shape, dtype) it times, alternating in one process:

* ``train``: forward + backward in training mode, one jitted call that returns the
  output, the gradients of ``sum(y * dy)`` with respect to the input and the
  parameters, and the updated ``batch_stats`` (BatchNorm);
* ``eval``: the forward pass in inference mode (running statistics for BatchNorm);

for ``normlab.norms.X``, ``flax.linen.X`` (same constructor arguments) and the
*floor*: ``y = x * a + b`` with per-feature ``a``, ``b`` (and its backward, with the
gradients of ``a`` and ``b``), the least memory traffic any per-feature affine layer
needs. Ratios are medians of per-round ratios. bfloat16 rows feed bfloat16 inputs to
layers with ``dtype=bfloat16`` and float32 parameters, as the models do. The process
keeps freed memory mapped (`common.keep_freed_memory`) so that every call does not pay
page faults for its fresh output buffers; ``--default_malloc`` measures with them.

    python -m scripts.bench.norms [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from normlab import norms
from scripts.bench import common

CONV_SHAPES = ((128, 32, 32, 64), (32, 56, 56, 256))
TOKEN_SHAPES = ((64, 512, 768),)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    ours: type
    theirs: type | None  # None: flax.linen has no such layer (the floor only)
    kwargs: dict
    shapes: tuple
    stateful: bool = False


CASES = (
    Case('batch_norm', norms.BatchNorm, nn.BatchNorm, {'momentum': 0.9}, CONV_SHAPES, True),
    Case('group_norm', norms.GroupNorm, nn.GroupNorm, {'num_groups': 32}, CONV_SHAPES),
    Case('instance_norm', norms.InstanceNorm, nn.InstanceNorm, {}, CONV_SHAPES),
    # make_norm('layer_norm') in conv nets: over (H, W, C), scale/bias per channel.
    Case(
        'layer_norm_hwc', norms.LayerNorm, nn.LayerNorm, {'reduction_axes': (1, 2, 3)}, CONV_SHAPES
    ),
    Case('layer_norm', norms.LayerNorm, nn.LayerNorm, {}, TOKEN_SHAPES),
    Case('rms_norm', norms.RMSNorm, nn.RMSNorm, {}, TOKEN_SHAPES),
    # normlab's norms without a flax.linen counterpart, against the floor.
    Case('batch_renorm', norms.BatchRenorm, None, {'momentum': 0.9}, CONV_SHAPES, True),
    Case('frn', norms.FilterResponseNorm, None, {}, CONV_SHAPES),
    Case('evonorm_b0', norms.EvoNormB0, None, {'momentum': 0.9}, CONV_SHAPES, True),
    Case('evonorm_s0', norms.EvoNormS0, None, {'num_groups': 32}, CONV_SHAPES),
)


def _inputs(shape, dtype):
    rng = np.random.default_rng(0)
    # A non-zero mean, as activations after a ReLU or a residual sum have.
    x = jnp.asarray(rng.normal(size=shape) + 0.5, jnp.float32).astype(dtype)
    dy = jnp.asarray(rng.normal(size=shape), jnp.float32).astype(dtype)
    return x, dy


def layer_fns(module: nn.Module, x, stateful: bool):
    """(train, eval) jitted callables of a norm layer and its variables."""
    call = {'use_running_average': False} if stateful else {}
    variables = jax.jit(lambda: module.init(jax.random.key(0, impl='rbg'), x, **call))()
    state = [c for c in variables if c != 'params']  # batch_stats, a step counter

    def train(variables, x, dy):
        def f(params, x):
            v = {**variables, 'params': params}
            if stateful:
                return module.apply(v, x, mutable=state, **call)
            return module.apply(v, x), {}

        y, vjp, updates = jax.vjp(f, variables['params'], x, has_aux=True)
        dparams, dx = vjp(dy)
        return y, dx, dparams, updates

    def evaluate(variables, x):
        if stateful:
            return module.apply(variables, x, use_running_average=True)
        return module.apply(variables, x)

    return jax.jit(train), jax.jit(evaluate), variables


def floor_fns(x, features: int):
    """The elementwise floor ``y = x * a + b`` (per-feature a, b), train and eval."""
    shape = (1,) * (x.ndim - 1) + (features,)
    a = jnp.ones(shape, jnp.float32)
    b = jnp.zeros(shape, jnp.float32)

    def affine(a, b, x):
        return (x * a + b).astype(x.dtype)

    def train(a, b, x, dy):
        y, vjp = jax.vjp(affine, a, b, x)
        return y, vjp(dy)

    return jax.jit(train), jax.jit(affine), (a, b)


def _block(fn):
    return lambda: jax.block_until_ready(fn())


def bench_case(case: Case, shape, dtype, *, rounds: int, budget_s: float) -> list[dict]:
    x, dy = _inputs(shape, dtype)
    kwargs = {**case.kwargs, 'dtype': dtype}
    ours_train, ours_eval, v_ours = layer_fns(case.ours(**kwargs), x, case.stateful)
    if case.theirs is not None:
        theirs_train, theirs_eval, v_theirs = layer_fns(case.theirs(**kwargs), x, case.stateful)
    floor_train, floor_eval, (a, b) = floor_fns(x, shape[-1])
    rows = []
    for mode in ('train', 'eval'):
        if mode == 'train':
            contenders = {
                'normlab': lambda: ours_train(v_ours, x, dy),
                'flax': lambda: theirs_train(v_theirs, x, dy),
                'floor': lambda: floor_train(a, b, x, dy),
            }
        else:
            contenders = {
                'normlab': lambda: ours_eval(v_ours, x),
                'flax': lambda: theirs_eval(v_theirs, x),
                'floor': lambda: floor_eval(a, b, x),
            }
        if case.theirs is None:
            del contenders['flax']
        t0 = time.perf_counter()
        samples = common.alternate(
            {k: _block(f) for k, f in contenders.items()}, rounds=rounds, budget_s=budget_s
        )
        row = {
            'norm': case.name,
            'shape': list(shape),
            'dtype': jnp.dtype(dtype).name,
            'mode': mode,
            'load': common.load(),
            'seconds': round(time.perf_counter() - t0, 1),
        }
        for name, s in samples.items():
            row[name] = s.summary()
        for kind in ('wall', 'cpu'):
            row[f'normlab_vs_floor_{kind}'] = common.paired_ratio(samples, 'normlab', 'floor', kind)
            if 'flax' in samples:
                row[f'normlab_vs_flax_{kind}'] = common.paired_ratio(
                    samples, 'normlab', 'flax', kind
                )
                row[f'flax_vs_floor_{kind}'] = common.paired_ratio(samples, 'flax', 'floor', kind)
        rows.append(row)
        flax = (f'flax {1e3 * row["flax"]["wall_s"]:7.1f} ms  ' if 'flax' in row else ' ' * 18) + (
            f'normlab/flax {row["normlab_vs_flax_wall"]:.2f}  ' if 'flax' in row else ' ' * 19
        )
        print(
            f'{case.name:15s} {str(shape):18s} {row["dtype"]:8s} {mode:5s} '
            f'normlab {1e3 * row["normlab"]["wall_s"]:7.1f} ms  '
            f'floor {1e3 * row["floor"]["wall_s"]:7.1f} ms  {flax}'
            f'normlab/floor {row["normlab_vs_floor_wall"]:.2f}  load {row["load"][0]}',
            flush=True,
        )
    return rows


def run(args) -> dict:
    kept = False if args.default_malloc else common.keep_freed_memory()
    dtypes = [jnp.float32] if args.quick else [jnp.float32, jnp.bfloat16]
    if args.dtypes:
        dtypes = [jnp.dtype(d) for d in args.dtypes.split(',')]
    rounds, budget = (5, 3.0) if args.quick else (args.rounds, args.budget_s)
    rows = []
    for case in CASES:
        if args.norms and case.name not in args.norms.split(','):
            continue
        shapes = case.shapes[:1] if args.quick else case.shapes
        if args.shapes:
            wanted = args.shapes.split(',')
            shapes = [s for s in case.shapes if 'x'.join(map(str, s)) in wanted]
        for shape in shapes:
            for dtype in dtypes:
                rows.extend(bench_case(case, shape, dtype, rounds=rounds, budget_s=budget))
    return {
        'benchmark': 'norms',
        'description': 'normlab vs flax.linen norm layers and the y = x*a+b floor',
        'glibc_keeps_freed_memory': kept,
        'rows': rows,
    }


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--norms', default='', help='comma list of norm names (default all)')
    parser.add_argument('--shapes', default='', help='e.g. 32x56x56x256,... (default all)')
    parser.add_argument('--dtypes', default='', help='float32,bfloat16 (default both)')
    parser.add_argument('--rounds', type=int, default=15)
    parser.add_argument('--budget_s', type=float, default=8.0, help='time per case and mode')
    parser.add_argument(
        '--default_malloc',
        action='store_true',
        help="keep glibc's default of unmapping freed large buffers (see keep_freed_memory)",
    )


main = functools.partial(common.main, run, add_args, __doc__)

if __name__ == '__main__':
    main()
