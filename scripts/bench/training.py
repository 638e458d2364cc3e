"""Benchmark 2: train-step throughput, normlab (JAX) against a PyTorch CPU ResNet-20.

Each contender is one training step on a fixed random batch (throughput does not
depend on the pixel values): normlab's own train step
(`normlab.train.steps.make_train_call`, one step per call, under `shard_map` on one
device, the optimizer of the config from `normlab.train.optim`, the model from
`normlab.train.classifier.build_model`) and the PyTorch reference in
`scripts/torch_resnet20.py` (channels-last, SGD with momentum, the same batch size).
All steps alternate in one process; compile time is measured
apart, from a cold cache (the persistent compilation cache is off here).

* ``resnet20``: `configs/cifar10_resnet.py` (depth 20) at batch 128 on 32x32x3 inputs, with
  batch_norm, group_norm (16 groups, the config's) and layer_norm, each compiled
  with XLA:CPU's default options and the two option sets of `XLA_VARIANTS`;
* ``digits_cnn``: `configs/digits_cnn.py` (batch 32, 8x8x1), 20 steps per timing,
  default options and the best set;
* ``attempts`` (not with ``--quick``): ResNet-20 with BatchNorm under the other
  XLA:CPU options and precisions that were tried, for BENCHMARKS.md;
* ``convs``: the three convolutions of a training step (forward, input gradient,
  weight gradient) at ResNet-20's three stage shapes, XLA:CPU's YNNPACK and Eigen
  kernels against PyTorch's oneDNN ones: where the rest of the gap is;
* ``conv_attempts`` (not with ``--quick``): the 16-channel weight gradient through
  XLA:CPU's other convolution libraries and as matrix products;
* ``fusion`` (not with ``--quick``): train steps of the digits MLP and CNN and of
  ResNet-20 with and without XLA:CPU's fusion pass (``config.xla_cpu_fusion``).

    python -m scripts.bench.training [--quick] [--out FILE]
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from scripts.bench import common

# XLA:CPU compiles convolutions through YNNPACK by default in jaxlib 0.10; without it
# they go to Eigen. `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`
# in XLA_FLAGS is the same setting for a whole process.
NO_YNN_CONV = {
    'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_REDUCE,'
    'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'
}
# XLA:CPU's producer-consumer fusion duplicates the norm-add-ReLU chains of a residual
# stage into the transposes that feed each weight-gradient convolution, where they
# are recomputed from strided reads; without the pass every op runs once.
NO_FUSION = {'xla_disable_hlo_passes': 'fusion'}
BEST = {**NO_YNN_CONV, **NO_FUSION}
XLA_VARIANTS = {'default': {}, 'no_ynn_conv': NO_YNN_CONV, 'no_ynn_conv+no_fusion': BEST}
# Other ways to get ResNet-20's slowest convolution, tried against Eigen's.
CONV_LIBRARIES = {
    'xnnpack': {
        'xla_cpu_experimental_xnn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION'
    },
    'onednn': {
        'xla_cpu_experimental_onednn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION',
        'xla_cpu_use_onednn': True,
    },
    'onednn_custom_call': {
        'xla_cpu_experimental_onednn_custom_call': True,
        'xla_cpu_use_onednn': True,
    },
}
# Tried on ResNet-20 + BatchNorm (model options, XLA options).
ATTEMPTS = {
    'default': ({}, {}),
    'no_ynn_conv': ({}, NO_YNN_CONV),
    'ynn_off': ({}, {'xla_cpu_experimental_ynn_fusion_type': ''}),
    'no_ynn_conv+fast_math': ({}, {**NO_YNN_CONV, 'xla_cpu_enable_fast_math': True}),
    'no_ynn_conv+no_fusion_emitters': ({}, {**NO_YNN_CONV, 'xla_cpu_use_fusion_emitters': False}),
    'no_ynn_conv+materialized_relu': ({'model_options__act': 'materialized_relu'}, NO_YNN_CONV),
    'no_ynn_conv+no_fusion': ({}, BEST),
    'no_ynn_conv+no_fusion+bfloat16': ({'dtype': 'bfloat16'}, BEST),
    'no_ynn_conv+bfloat16': ({'dtype': 'bfloat16'}, NO_YNN_CONV),
    'no_ynn_conv+no_norm': ({'norm__name': 'none'}, NO_YNN_CONV),
    'onednn_conv': ({}, {**NO_YNN_CONV, **CONV_LIBRARIES['onednn']}),
    'onednn_conv+no_fusion': ({}, {**BEST, **CONV_LIBRARIES['onednn']}),
}


def materialized_relu(x):
    """ReLU behind an optimization barrier, meant to stop XLA from recomputing it.

    An attempt at the duplication `NO_FUSION` removes, from the model side: XLA:CPU
    expands optimization barriers before its fusion pass, so it changes nothing.
    """
    return lax.optimization_barrier(jax.nn.relu(x))


class JaxStep:
    """A compiled normlab train step on a fixed batch; calling it runs `inner` steps."""

    def __init__(self, config_module, arg: str, image_shape, *, xla=None, inner=1, **overrides):
        from normlab import parallel
        from normlab.train import classifier, optim, steps
        from normlab.train.classifier import steps as classifier_steps

        config = config_module.get_config(arg)
        for key, value in overrides.items():  # dotted keys: norm__virtual_batch_size
            if value == 'materialized_relu':
                value = materialized_relu
            *path, leaf = key.split('__')
            node = config
            for part in path:
                node = getattr(node, part)
            with node.ignore_type():  # a function where configs hold an activation's name
                setattr(node, leaf, value)
        model = classifier.build_model(config, 10)
        mesh = parallel.data_mesh()
        tx = optim.make_optimizer(config, 1000, 100)
        self.state = classifier.init_state(config, model, tx, mesh, image_shape)
        step = steps.make_train_call(
            classifier_steps.train_step_fn(model, tx, optim.learning_rate_of(config, 1000, 100)),
            mesh,
            steps_per_call=1,
            batch_fn=None,
        )
        rng = np.random.default_rng(0)
        b = config.batch_size
        batch = {
            'image': rng.normal(size=(b, *image_shape)).astype(np.float32),
            'label': rng.integers(0, 10, b).astype(np.int32),
            'mask': np.ones(b, np.float32),
        }
        stacked = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, 'data'))
        self.batch = {k: jax.device_put(v[None], stacked) for k, v in batch.items()}
        self.args = (np.int32(0), np.int32(1))  # seed (unused by host batches), steps
        self.batch_size = b
        self.inner = inner
        self.params = optim.count_params(self.state.params)
        t0 = time.perf_counter()
        lowered = step.lower(self.state, self.batch, *self.args)
        self.compiled = lowered.compile(compiler_options=xla or {})
        self.compile_s = time.perf_counter() - t0

    def __call__(self):
        for _ in range(self.inner):
            self.state, metrics = self.compiled(self.state, self.batch, *self.args)
        jax.block_until_ready(self.state)
        return metrics


class TorchStep:
    def __init__(self, batch_size: int):
        import torch

        from scripts import torch_resnet20

        self.torch = torch
        model, self.step, self.images, self.labels = torch_resnet20.setup(batch_size)
        self.batch_size = batch_size
        self.inner = 1
        self.params = torch_resnet20.num_params(model)
        self.threads = torch.get_num_threads()
        t0 = time.perf_counter()
        self()
        self.first_step_s = time.perf_counter() - t0

    def __call__(self):
        return self.step(self.images, self.labels)


def _rows(samples, contenders, baseline: str | None, extra: dict) -> list[dict]:
    rows = []
    for name, c in contenders.items():
        s = samples[name].summary()
        examples = c.batch_size * c.inner
        row = {
            'name': name,
            **extra.get(name, {}),
            'batch_size': c.batch_size,
            'params': c.params,
            'step_s': s['wall_s'] / c.inner,
            'cpu_s_per_step': s['cpu_s'] / c.inner,
            'examples_per_s': examples / s['wall_s'],
            'examples_per_cpu_s': examples / s['cpu_s'],
            'rounds': s['rounds'],
            'wall_iqr_s': s['wall_iqr_s'],
        }
        if isinstance(c, JaxStep):
            row['compile_s'] = c.compile_s
        else:
            row['first_step_s'] = c.first_step_s
            row['torch_threads'] = c.threads
        if baseline and name != baseline:
            # > 1: faster than the baseline (throughput ratio from per-round times).
            row[f'speed_vs_{baseline}'] = 1.0 / common.paired_ratio(samples, name, baseline)
            row[f'cpu_speed_vs_{baseline}'] = 1.0 / common.paired_ratio(
                samples, name, baseline, 'cpu'
            )
        rows.append(row)
        print(
            f'  {name:34s} {row["examples_per_s"]:7.1f} ex/s  '
            f'({1e3 * row["step_s"]:7.1f} ms/step, cpu {1e3 * row["cpu_s_per_step"]:7.1f} ms)  '
            + (f'compile {row["compile_s"]:.1f} s  ' if 'compile_s' in row else '')
            + (
                f'vs {baseline} x{row[f"speed_vs_{baseline}"]:.2f}'
                if f'speed_vs_{baseline}' in row
                else ''
            ),
            flush=True,
        )
    return rows


def resnet20(args) -> list[dict]:
    from configs import cifar10_resnet

    norms = ['batch_norm'] if args.quick else ['batch_norm', 'group_norm', 'layer_norm']
    contenders, extra = {}, {}
    for norm in norms:
        for variant, xla in XLA_VARIANTS.items():
            name = f'jax {norm} [{variant}]'
            contenders[name] = JaxStep(
                cifar10_resnet, f'norm={norm},batch_size=128', (32, 32, 3), xla=xla
            )
            extra[name] = {'framework': 'jax', 'norm': norm, 'xla': variant}
            print(f'  compiled {name} in {contenders[name].compile_s:.1f} s', flush=True)
    contenders['torch batch_norm'] = TorchStep(128)
    extra['torch batch_norm'] = {'framework': 'torch', 'norm': 'batch_norm'}
    rounds = 3 if args.quick else args.rounds
    samples = common.alternate(contenders, rounds=rounds, budget_s=args.budget_s, warmup=1)
    return _rows(samples, contenders, 'torch batch_norm', extra)


def digits_cnn(args) -> list[dict]:
    from configs import digits_cnn as config

    norms = ['batch_norm'] if args.quick else ['batch_norm', 'group_norm', 'layer_norm']
    contenders, extra = {}, {}
    for norm in norms:
        for variant in ('default', 'no_ynn_conv+no_fusion'):
            name = f'jax {norm} [{variant}]'
            xla = XLA_VARIANTS[variant]
            contenders[name] = JaxStep(config, f'norm={norm}', (8, 8, 1), xla=xla, inner=20)
            extra[name] = {'framework': 'jax', 'norm': norm, 'xla': variant}
    rounds = 3 if args.quick else args.rounds
    samples = common.alternate(contenders, rounds=rounds, budget_s=args.budget_s / 4)
    return _rows(samples, contenders, None, extra)


def attempts(args) -> list[dict]:
    from configs import cifar10_resnet

    contenders, extra = {}, {}
    for name, (model_overrides, xla) in ATTEMPTS.items():
        if args.attempts and name not in args.attempts.split(','):
            continue
        contenders[name] = JaxStep(
            cifar10_resnet, 'batch_size=128', (32, 32, 3), xla=xla, **model_overrides
        )
        extra[name] = {'framework': 'jax', 'norm': 'batch_norm', 'xla': xla, **model_overrides}
        print(f'  compiled {name} in {contenders[name].compile_s:.1f} s', flush=True)
    contenders['torch'] = TorchStep(128)
    extra['torch'] = {'framework': 'torch', 'norm': 'batch_norm'}
    samples = common.alternate(contenders, rounds=args.rounds, budget_s=args.budget_s)
    return _rows(samples, contenders, 'default', extra)


# ResNet-20's 3x3 convolutions at batch 128: (height = width, channels) per stage.
CONV_STAGES = ((32, 16), (16, 32), (8, 64))


CONV_DIMS = ('NHWC', 'HWIO', 'NHWC')


def _conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=CONV_DIMS)


# The three convolutions of a training step, as functions of (x, w, dy).
CONV_PASSES = {
    'forward': lambda x, w, dy: _conv(x, w),
    'input_grad': lambda x, w, dy: jax.vjp(lambda x: _conv(x, w), x)[1](dy)[0],
    'weight_grad': lambda x, w, dy: jax.vjp(lambda w: _conv(x, w), w)[1](dy)[0],
}


def _conv_inputs(size: int, channels: int, batch: int = 128):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, size, size, channels)).astype(np.float32)
    w = rng.normal(size=(3, 3, channels, channels)).astype(np.float32) * 0.1
    dy = rng.normal(size=x.shape).astype(np.float32)
    return x, w, dy


def _jax_contender(fn, args, xla: dict):
    """`fn` compiled with XLA options `xla`: a call runs it on `args` and waits."""
    compiled = jax.jit(fn).lower(*args).compile(compiler_options=xla)
    return lambda: jax.block_until_ready(compiled(*args))


def _torch_conv_contenders(x, w, dy, passes=('input_grad', 'weight_grad')) -> dict:
    """PyTorch's channels-last convolution: the forward, and forward + each gradient
    (autograd runs the forward too: its time is subtracted when rows are made)."""
    import torch

    cl = torch.channels_last
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    tdy = torch.from_numpy(dy).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=cl)
    grad_of = {
        'input_grad': tx.clone().requires_grad_(),
        'weight_grad': tw.clone().requires_grad_(),
    }

    def forward():
        with torch.no_grad():
            return torch.nn.functional.conv2d(tx, tw, padding=1)

    def grad(name):
        x_in = grad_of[name] if name == 'input_grad' else tx
        w_in = grad_of[name] if name == 'weight_grad' else tw
        y = torch.nn.functional.conv2d(x_in, w_in, padding=1)
        return torch.autograd.grad(y, grad_of[name], tdy)

    out = {'torch forward': forward}
    for name in passes:
        out[f'torch forward+{name}'] = functools.partial(grad, name)
    return out


def _torch_ms(ms: dict, name: str) -> float:
    """A torch gradient's own time: forward + gradient, minus the forward."""
    return ms[f'torch forward+{name}'] - ms['torch forward']


def convs(args) -> list[dict]:
    rows = []
    for size, channels in CONV_STAGES[:1] if args.quick else CONV_STAGES:
        inputs = _conv_inputs(size, channels)
        contenders = {
            f'jax {name} [{variant}]': _jax_contender(fn, inputs, XLA_VARIANTS[variant])
            for variant in ('default', 'no_ynn_conv')
            for name, fn in CONV_PASSES.items()
        }
        contenders.update(_torch_conv_contenders(*inputs))
        samples = common.alternate(contenders, rounds=args.rounds * 2, budget_s=args.budget_s / 6)
        ms = {k: 1e3 * v.summary()['wall_s'] for k, v in samples.items()}
        for name in CONV_PASSES:
            row = {
                'shape': [128, size, size, channels],
                'pass': name,
                'xla_default_ms': ms[f'jax {name} [default]'],
                'no_ynn_conv_ms': ms[f'jax {name} [no_ynn_conv]'],
                'torch_ms': ms['torch forward'] if name == 'forward' else _torch_ms(ms, name),
            }
            rows.append(row)
            print(
                f'  {str(row["shape"]):18s} {name:12s} xla default {row["xla_default_ms"]:6.1f} ms'
                f'  no_ynn_conv {row["no_ynn_conv_ms"]:6.1f} ms  torch {row["torch_ms"]:6.1f} ms',
                flush=True,
            )
    return rows


def conv_attempts(args) -> list[dict]:
    """The 16-channel weight gradient (the largest gap to PyTorch) computed other ways."""
    size, channels = CONV_STAGES[0]
    x, w, dy = inputs = _conv_inputs(size, channels)
    conv_wgrad = CONV_PASSES['weight_grad']

    def nine_dots(x, w, dy):  # one (N*H*W)-long contraction per kernel tap
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        taps = [
            lax.dot_general(
                xp[:, i : i + size, j : j + size], dy, (((0, 1, 2), (0, 1, 2)), ((), ()))
            )
            for i in range(3)
            for j in range(3)
        ]
        return jnp.stack(taps).reshape(w.shape)

    def patches_matmul(x, w, dy):  # im2col: the patches are 9x the activation
        p = lax.conv_general_dilated_patches(x, (3, 3), (1, 1), 'SAME', dimension_numbers=CONV_DIMS)
        g = lax.dot_general(p, dy, (((0, 1, 2), (0, 1, 2)), ((), ())))
        return g.reshape(channels, 3, 3, channels).transpose(1, 2, 0, 3)

    fns = {'eigen (no_ynn_conv)': (conv_wgrad, NO_YNN_CONV)}
    fns.update({name: (conv_wgrad, {**NO_YNN_CONV, **xla}) for name, xla in CONV_LIBRARIES.items()})
    fns['nine dot_generals'] = (nine_dots, NO_YNN_CONV)
    fns['patches + one matmul'] = (patches_matmul, NO_YNN_CONV)
    reference = np.asarray(jax.jit(conv_wgrad)(*inputs))
    contenders = {}
    for name, (fn, xla) in fns.items():
        contenders[name] = _jax_contender(fn, inputs, xla)
        np.testing.assert_allclose(contenders[name](), reference, rtol=1e-3, atol=1e-2)
    contenders.update(_torch_conv_contenders(x, w, dy, passes=('weight_grad',)))
    samples = common.alternate(contenders, rounds=args.rounds * 2, budget_s=args.budget_s / 4)
    ms = {k: 1e3 * v.summary()['wall_s'] for k, v in samples.items()}
    ms['torch'] = _torch_ms(ms, 'weight_grad')
    del ms['torch forward'], ms['torch forward+weight_grad']
    rows = []
    for name, value in ms.items():
        rows.append({'name': name, 'ms': value, 'vs_eigen': value / ms['eigen (no_ynn_conv)']})
        print(f'  {name:24s} {value:7.1f} ms  x{rows[-1]["vs_eigen"]:.2f} of Eigen', flush=True)
    return rows


# Models on which XLA:CPU's fusion pass was measured (config module, argument, input).
FUSION_CASES = {
    'digits_mlp batch 2': ('digits_mlp', 'norm=batch_norm,batch_size=2', (8, 8, 1), 50),
    'digits_mlp batch 64': ('digits_mlp', 'norm=batch_norm,batch_size=64', (8, 8, 1), 50),
    'digits_cnn batch 32': ('digits_cnn', 'norm=batch_norm', (8, 8, 1), 20),
    'resnet20 batch 128': ('cifar10_resnet', 'norm=batch_norm,batch_size=128', (32, 32, 3), 1),
}


def fusion(args) -> list[dict]:
    """Train steps with and without XLA:CPU's fusion pass (`config.xla_cpu_fusion`)."""
    rows = []
    for case, (module, arg, shape, inner) in FUSION_CASES.items():
        config = importlib.import_module(f'configs.{module}')
        contenders = {
            'fusion': JaxStep(config, arg, shape, xla=NO_YNN_CONV, inner=inner),
            'no_fusion': JaxStep(config, arg, shape, xla=BEST, inner=inner),
        }
        samples = common.alternate(contenders, rounds=args.rounds, budget_s=args.budget_s / 8)
        row = {
            'case': case,
            'fusion_ms': 1e3 * samples['fusion'].summary()['wall_s'] / inner,
            'no_fusion_ms': 1e3 * samples['no_fusion'].summary()['wall_s'] / inner,
            'no_fusion_speed': 1.0 / common.paired_ratio(samples, 'no_fusion', 'fusion'),
            'no_fusion_cpu_speed': 1.0 / common.paired_ratio(samples, 'no_fusion', 'fusion', 'cpu'),
        }
        rows.append(row)
        print(
            f'  {case:22s} fusion {row["fusion_ms"]:7.2f} ms  '
            f'no fusion {row["no_fusion_ms"]:7.2f} ms  '
            f'speed without fusion x{row["no_fusion_speed"]:.2f}',
            flush=True,
        )
    return rows


PARTS = ('resnet20', 'digits_cnn', 'attempts', 'convs', 'conv_attempts', 'fusion')
NOT_QUICK = ('attempts', 'conv_attempts', 'fusion')


def run(args) -> dict:
    if importlib.util.find_spec('torch') is None:
        raise SystemExit(
            'error: the training benchmark compares with PyTorch, which is not installed: '
            "`make bench` or `pip install -e '.[bench]'` (torch==2.13.0, CPU)"
        )
    out = {'benchmark': 'training', 'description': __doc__.splitlines()[0]}
    for part in PARTS:
        if args.parts and part not in args.parts.split(','):
            continue
        if part in NOT_QUICK and args.quick:
            continue
        print(f'{part}:', flush=True)
        out[part] = {'load_before': common.load()}
        out[part]['rows'] = globals()[part](args)
        out[part]['load_after'] = common.load()
    return out


def add_args(parser) -> None:
    parser.add_argument(
        '--parts', default='', help=f'comma list of {",".join(PARTS)} (default all)'
    )
    parser.add_argument('--attempts', default='', help='comma list of ATTEMPTS names (default all)')
    parser.add_argument('--rounds', type=int, default=8)
    parser.add_argument('--budget_s', type=float, default=240.0, help='time per part')


main = functools.partial(common.main, run, add_args, __doc__)

if __name__ == '__main__':
    jnp.zeros(())  # start the backend before torch spins up its threads
    main()
