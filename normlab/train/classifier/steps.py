"""A classifier's steps, under `jax.shard_map` over the data axis.

Each step sees one device's slice of the global batch. Every value that leaves
it is reduced inside it: the loss and metrics by `psum` over real (mask == 1)
examples, the gradients by autodiff itself (the gradient of a device's loss
term with respect to *replicated* parameters is summed over devices by
`shard_map`'s transpose rules, so the step adds no second psum), and
``batch_stats`` by `pmean` (`normlab.train.state.reduce_model_state`).
``out_specs=P()`` makes a forgotten reduction a trace-time error.

Batches come from device-resident data (`normlab.data.resident`, built inside
the program) or from the host (`tf.data`, stacked per call); evaluation and
precise-BN statistics run over whole splits in one call (`over_batches`).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from normlab.data import resident
from normlab.norms import batch_moments_fn
from normlab.parallel import DATA_AXIS
from normlab.train.loop import FINITE
from normlab.train.state import TrainState, reduce_model_state


def _sums(logits, labels, mask):
    """Loss, correct and count sums over this device's real examples."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return jnp.stack([jnp.sum(ce * mask), jnp.sum(correct * mask), jnp.sum(mask)])


def layer_grad_norms(grads) -> dict:
    """``grad_norm/<layer>``: the L2 norm of each top-level layer's gradient."""
    return {f'grad_norm/{name}': optax.global_norm(g) for name, g in grads.items()}


def dropout_key(seed, step) -> jax.Array:
    """This device's dropout key at `step` of the run of `seed`: every step and device
    drops its own units, and a run's masks depend only on its seed and device layout.
    Threefry, not rbg: rbg's bits under `jax.vmap` (a bundle) differ from a solo run's."""
    key = jax.random.fold_in(jax.random.key(seed, impl='threefry2x32'), step)
    return jax.random.fold_in(key, lax.axis_index(DATA_AXIS))


def train_step_fn(
    model: nn.Module,
    tx,
    lr_of: Callable,
    *,
    record_grad_norms: bool = False,
    dropout: bool = False,
) -> Callable:
    """The per-device ``(state, batch, seed) -> (state, metrics)`` of one SGD step;
    ``lr_of(state)`` is the learning rate the step applies (logged). ``dropout``: the
    model has dropout layers, which get `dropout_key`."""

    def step(state: TrainState, batch, seed):
        mask = batch['mask']
        count = lax.psum(jnp.sum(mask), DATA_AXIS)
        rngs = {'dropout': dropout_key(seed, state.step)} if dropout else None

        def loss_fn(params):
            logits, new_state = model.apply(
                {'params': params, **state.model_state},
                batch['image'],
                train=True,
                mutable=list(state.model_state),
                rngs=rngs,
            )
            loss_sum, correct, _ = _sums(logits, batch['label'], mask)
            return loss_sum / count, (new_state, correct)

        (local_loss, (new_state, correct)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            model_state=reduce_model_state(new_state),
        )
        loss = lax.psum(local_loss, DATA_AXIS)
        grad_norm = optax.global_norm(grads)
        metrics = {
            'train/loss': loss,
            'train/error': 1.0 - lax.psum(correct, DATA_AXIS) / count,
            'train/lr': lr_of(state),
            'train/grad_norm': grad_norm,
            FINITE: jnp.isfinite(loss) & jnp.isfinite(grad_norm),
        }
        if record_grad_norms:
            metrics.update(layer_grad_norms(grads))
        return new, metrics

    def metrics_template(state: TrainState) -> dict:
        """The metrics' shapes without tracing the step (`scan_steps`)."""
        names = ['train/loss', 'train/error', 'train/lr', 'train/grad_norm']
        if record_grad_norms:
            names += [f'grad_norm/{layer}' for layer in state.params]
        scalar = jax.ShapeDtypeStruct((), jnp.float32)
        return {**dict.fromkeys(names, scalar), FINITE: jax.ShapeDtypeStruct((), jnp.bool_)}

    step.metrics_template = metrics_template
    return step


def resident_batches(
    split: resident.Split, batch_size: int, augment: bool, steps_per_call: int
) -> dict:
    """`normlab.train.steps.make_train_call`'s ``batch_fn`` and ``prepare`` for a
    resident `split`: step ``s`` trains on global batch ``s``."""

    def prepare(arrays, seed, first_step):
        plan = resident.epoch_plan(
            seed,
            first_step,
            num_batches=steps_per_call,
            batch_size=batch_size,
            num_examples=split.num_examples,
        )
        return arrays, plan

    def batch_fn(data, seed, step, i):
        del i
        arrays, plan = data
        return resident.train_batch(
            arrays, plan, seed, step, split=split, batch_size=batch_size, augment=augment
        )

    return {'batch_fn': batch_fn, 'prepare': prepare}


def over_batches(mesh: Mesh, body: Callable, num_batches: int, *, fused: bool) -> Callable:
    """``(variables, data, extra) -> sum over j < num_batches of body(variables, data,
    extra, j)``.

    `body` runs per device inside `shard_map` (its results already reduced over the
    data axis); ``data`` is sharded over the data axis, ``extra`` (a tuple, e.g. a
    seed) replicated. ``fused``: one call with a `lax.scan` over the batches; else one
    jitted call per batch (convolutions on CPU), summed on the devices.
    """
    specs = (P(), P(DATA_AXIS), P())
    if fused:

        def whole(variables, data, extra):
            shapes = jax.eval_shape(body, variables, data, extra, 0)
            zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

            def one(total, j):
                return jax.tree.map(jnp.add, total, body(variables, data, extra, j)), None

            return lax.scan(one, zero, jnp.arange(num_batches))[0]

        return jax.jit(jax.shard_map(whole, mesh=mesh, in_specs=specs, out_specs=P()))
    per_batch = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(*specs, P()), out_specs=P()))

    def looped(variables, data, extra):
        total = per_batch(variables, data, extra, 0)
        for j in range(1, num_batches):
            total = jax.tree.map(jnp.add, total, per_batch(variables, data, extra, j))
        return total

    return looped


def _logits(model: nn.Module, variables, images, *, batch_statistics: bool):
    if batch_statistics:
        mutable = [c for c in variables if c != 'params']
        return model.apply(variables, images, train=True, mutable=mutable)[0]
    return model.apply(variables, images, train=False)


def make_resident_eval(
    model: nn.Module,
    mesh: Mesh,
    split: resident.Split,
    batch_size: int,
    *,
    batch_statistics,
    fused: bool,
):
    """``(variables, arrays) -> [loss sum, correct, count]`` over the whole split.

    ``batch_statistics=True`` normalizes with the statistics of each batch itself
    (train-mode norms) and throws their updates away.
    """

    def body(variables, arrays, extra, j):
        del extra
        batch = resident.eval_batch(arrays, j, split=split, batch_size=batch_size)
        logits = _logits(model, variables, batch['image'], batch_statistics=batch_statistics)
        return lax.psum(_sums(logits, batch['label'], batch['mask']), DATA_AXIS)

    total = over_batches(mesh, body, resident.num_eval_batches(split, batch_size), fused=fused)
    return lambda variables, arrays: total(variables, arrays, ())


def make_eval_step(model: nn.Module, mesh: Mesh, *, batch_statistics: bool = False):
    """``(variables, batch) -> [loss sum, correct, count]`` of one host batch."""

    def step(variables, batch):
        logits = _logits(model, variables, batch['image'], batch_statistics=batch_statistics)
        return lax.psum(_sums(logits, batch['label'], batch['mask']), DATA_AXIS)

    sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P())
    return jax.jit(sharded)


def _device_moments(model: nn.Module):
    """Per device: the batch moments every BatchNorm-like layer sowed
    (`normlab.norms.batch_moments_fn`), pooled over devices."""
    moments = batch_moments_fn(model, train=True)

    def fn(variables, images):
        return lax.pmean(moments(variables, images), DATA_AXIS)

    return fn


def make_moments_step(model: nn.Module, mesh: Mesh):
    """``(variables, images) -> moments`` of one host batch, for precise BN."""
    sharded = jax.shard_map(
        _device_moments(model), mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P()
    )
    return jax.jit(sharded)


def make_resident_moments(
    model: nn.Module,
    mesh: Mesh,
    split: resident.Split,
    batch_size: int,
    num_batches: int,
    *,
    augment: bool,
    fused: bool,
):
    """``(variables, arrays, seed) -> moments`` averaged over `num_batches` training
    batches of the stream of `seed`, as training draws them."""
    moments = _device_moments(model)

    def body(variables, arrays, extra, j):
        (seed,) = extra
        plan = resident.epoch_plan(
            seed, j, num_batches=1, batch_size=batch_size, num_examples=split.num_examples
        )
        batch = resident.train_batch(
            arrays, plan, seed, j, split=split, batch_size=batch_size, augment=augment
        )
        return moments(variables, batch['image'])

    total = over_batches(mesh, body, num_batches, fused=fused)
    return lambda variables, arrays, seed: jax.tree.map(
        lambda t: t / num_batches, total(variables, arrays, (seed,))
    )


def make_intermediates_step(model: nn.Module, mesh: Mesh, split: resident.Split | None, bs: int):
    """Inference-mode values sown into ``intermediates`` on the first eval batch,
    gathered over the batch: ``(variables, data) -> (sown, mask)``."""

    def step(variables, data):
        batch = resident.eval_batch(data, 0, split=split, batch_size=bs) if split else data
        _, state = model.apply(variables, batch['image'], train=False, mutable=['intermediates'])
        sown = jax.tree.map(
            lambda calls: calls[0],
            state.get('intermediates', {}),
            is_leaf=lambda t: isinstance(t, tuple),
        )
        return sown, batch['mask']

    sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P(DATA_AXIS))
    return jax.jit(sharded)
