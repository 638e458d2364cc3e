"""Benchmark 5: a dispatch-bound run, normlab's training path against a hand-written scan.

The digits 3x100 ReLU MLP with BatchNorm at batch 2 for 10 epochs (7,180 steps of
`configs/digits_mlp.py:batch_size=2`):

* ``normlab``: `normlab.train.classifier.train_and_evaluate`, the path
  ``python -m normlab.main`` takes (device-resident data, `steps_per_call` steps
  per dispatch, logging and checkpoints as the config says). Its training time is
  ``train_s - compile_s`` of the summary: every train call after the first
  (compiling) one, with the loop's logging and checkpointing.
* ``reference``: the same network written with plain flax.linen + optax (Dense,
  flax BatchNorm, ReLU; SGD with Nesterov momentum, cosine schedule, weight decay
  on kernels), the training images on the device and every batch's indices
  precomputed on the host, all steps in one jitted `lax.scan`: the floor of what
  a loop can cost. Timed after compilation.

    python -m scripts.bench.dispatch [--quick] [--out FILE]
"""

from __future__ import annotations

import functools
import os
import tempfile
import time

from scripts.bench import common


def _normlab(config) -> dict:
    from normlab.train import classifier

    with tempfile.TemporaryDirectory(prefix='normlab-dispatch-bench-') as workdir:
        s = classifier.train_and_evaluate(config, os.path.join(workdir, 'run'))
    return {
        'train_s': s['train_s'] - s['compile_s'],
        'first_call_s': s['compile_s'],
        'eval_error': s['eval/error'],
        'steps': s['steps'],
    }


def _reference(config, total_steps: int, steps_per_epoch: int) -> dict:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import tensorflow_datasets as tfds

    from normlab import data

    spec = data.get_spec('digits')
    ds = data.prepared_builder('digits').as_dataset(split='train', batch_size=-1)
    columns = tfds.as_numpy(ds)
    images = (columns['image'].astype(np.float32) / 255 - spec.mean[0]) / spec.std[0]
    images = jnp.asarray(images.reshape(len(images), -1))
    labels = jnp.asarray(columns['label'].astype(np.int32))
    b = config.batch_size
    rng = np.random.default_rng(config.seed)
    epochs = -(-total_steps * b // len(images))
    order = np.concatenate([rng.permutation(len(images)) for _ in range(epochs)])
    batches = jnp.asarray(order[: total_steps * b].reshape(total_steps, b))

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            for width in config.model_options.widths:
                x = nn.Dense(width)(x)
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
                x = nn.relu(x)
            return nn.Dense(10)(x)

    model = MLP()
    variables = model.init(jax.random.key(0), images[:2], train=False)
    peak = config.learning_rate * b / config.base_batch_size
    lr = optax.cosine_decay_schedule(peak, total_steps)
    mask = lambda p: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda path, _: path[-1].key == 'kernel', p
    )
    tx = optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=mask),
        optax.sgd(lr, momentum=0.9, nesterov=True),
    )
    state = (variables['params'], variables['batch_stats'], tx.init(variables['params']))

    def step(state, idx):
        params, stats, opt = state

        def loss_fn(p):
            logits, new = model.apply(
                {'params': p, 'batch_stats': stats},
                images[idx],
                train=True,
                mutable=['batch_stats'],
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()
            return loss, new['batch_stats']

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), stats, opt), loss

    run = jax.jit(lambda state, batches: jax.lax.scan(step, state, batches))
    t0 = time.perf_counter()
    compiled = run.lower(state, batches).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, losses = compiled(state, batches)
    jax.block_until_ready(losses)
    return {'train_s': time.perf_counter() - t0, 'compile_s': compile_s, 'steps': total_steps}


def run(args) -> dict:
    from normlab import runtime

    runtime.setup()
    from configs import digits_mlp
    from normlab.train import classifier

    config = digits_mlp.get_config('batch_size=2')
    config.wandb.mode = 'disabled'
    if args.quick:
        config.num_epochs = 2.0
    total_steps, steps_per_epoch = classifier.num_train_steps(config)
    out = {'benchmark': 'dispatch', 'description': __doc__.splitlines()[0], 'rows': []}
    load = common.load()
    reference = _reference(config, total_steps, steps_per_epoch)
    ours = _normlab(config)
    row = {
        'case': f'digits mlp batch_norm batch 2, {total_steps} steps',
        'normlab_s': round(ours['train_s'], 2),
        'reference_s': round(reference['train_s'], 2),
        'ratio': round(ours['train_s'] / reference['train_s'], 2),
        'normlab_first_call_s': round(ours['first_call_s'], 1),
        'reference_compile_s': round(reference['compile_s'], 1),
        'normlab_eval_error': ours['eval_error'],
        'load_before': load,
        'load_after': common.load(),
    }
    out['rows'].append(row)
    print(
        f'  normlab {row["normlab_s"]:.2f} s, reference {row["reference_s"]:.2f} s: '
        f'{row["ratio"]:.2f}x (normlab first call incl. setup {row["normlab_first_call_s"]} s, '
        f'reference compile {row["reference_compile_s"]} s)',
        flush=True,
    )
    return out


main = functools.partial(common.main, run, None, __doc__)

if __name__ == '__main__':
    main()
