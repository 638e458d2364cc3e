"""Train and eval steps of a classifier, under `jax.shard_map` over the data axis.

Each step sees one device's slice of the global batch. Every value that
leaves it is reduced inside it: the loss and metrics by `psum` over real
(mask == 1) examples, the gradients by autodiff itself (the gradient of a
device's loss term with respect to *replicated* parameters is summed over
devices by `shard_map`'s transpose rules, so the step adds no second psum),
and ``batch_stats`` by `pmean` (per-device statistics differ; pooled ones are
already equal). `out_specs=P()` makes a forgotten reduction a trace-time error.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from normlab.norms import BATCH_MOMENTS
from normlab.parallel import DATA_AXIS
from normlab.train.diagnostics import layer_grad_norms


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint holds. ``model_state`` is every non-param
    collection (``batch_stats``, ``norm_steps``, ...)."""

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: dict

    def variables(self) -> dict:
        return {'params': self.params, **self.model_state}


def _reduce_model_state(model_state: dict) -> dict:
    out = dict(model_state)
    if 'batch_stats' in out:
        out['batch_stats'] = lax.pmean(out['batch_stats'], DATA_AXIS)
    return out


def _sums(logits, labels, mask):
    """Loss, correct and count sums over this device's real examples."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return jnp.sum(ce * mask), jnp.sum(correct * mask), jnp.sum(mask)


def compiler_options(config) -> dict | None:
    """XLA options of a config's train step: ``xla_cpu_fusion=False`` on CPU only."""
    if config.xla_cpu_fusion or jax.default_backend() != 'cpu':
        return None
    # Without the pass XLA:CPU stops recomputing each residual stage's norm-add-ReLU
    # chain inside the transposes that feed the weight-gradient convolutions.
    return {'xla_disable_hlo_passes': 'fusion'}


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    lr_fn,
    *,
    options: dict | None = None,
    record_grad_norms: bool = False,
):
    """The jitted ``(state, batch) -> (state, metrics)`` step; `options` go to XLA.

    ``record_grad_norms`` adds each layer's gradient norm to the metrics
    (`normlab.train.diagnostics.layer_grad_norms`).
    """

    def step(state: TrainState, batch):
        mask = batch['mask']
        count = lax.psum(jnp.sum(mask), DATA_AXIS)

        def loss_fn(params):
            logits, new_state = model.apply(
                {'params': params, **state.model_state},
                batch['image'],
                train=True,
                mutable=list(state.model_state),
            )
            loss_sum, correct, _ = _sums(logits, batch['label'], mask)
            return loss_sum / count, (new_state, correct)

        (local_loss, (new_state, correct)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            'train/loss': lax.psum(local_loss, DATA_AXIS),
            'train/error': 1.0 - lax.psum(correct, DATA_AXIS) / count,
            'train/lr': lr_fn(state.step),
            'train/grad_norm': optax.global_norm(grads),
        }
        if record_grad_norms:
            metrics.update(layer_grad_norms(grads))
        new = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            model_state=_reduce_model_state(new_state),
        )
        return new, metrics

    sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=(P(), P()))
    return jax.jit(sharded, donate_argnums=0, compiler_options=options)


def make_eval_step(model: nn.Module, mesh: Mesh, *, batch_statistics: bool = False):
    """Sums of loss, correct predictions and examples over a padded batch.

    ``batch_statistics=True`` normalizes with the statistics of the batch
    itself (train-mode norms) and throws their updates away.
    """

    def step(variables, batch):
        if batch_statistics:
            mutable = [c for c in variables if c != 'params']
            logits, _ = model.apply(variables, batch['image'], train=True, mutable=mutable)
        else:
            logits = model.apply(variables, batch['image'], train=False)
        sums = _sums(logits, batch['label'], batch['mask'])
        return tuple(lax.psum(s, DATA_AXIS) for s in sums)

    sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P())
    return jax.jit(sharded)


def make_moments_step(model: nn.Module, mesh: Mesh):
    """Per-batch statistics of every BatchNorm-like layer, averaged over devices,
    for precise BN (`normlab.norms.recompute_batch_stats`)."""

    def step(variables, images):
        mutable = [c for c in variables if c != 'params'] + [BATCH_MOMENTS]
        _, state = model.apply(variables, images, train=True, mutable=mutable)
        moments = jax.tree.map(
            lambda calls: jnp.mean(jnp.stack(calls), axis=0),
            state.get(BATCH_MOMENTS, {}),
            is_leaf=lambda t: isinstance(t, tuple),
        )
        return lax.pmean(moments, DATA_AXIS)

    sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P())
    return jax.jit(sharded)


def make_intermediates_step(model: nn.Module, mesh: Mesh):
    """Inference-mode values sown into ``intermediates``, gathered over the batch."""

    def step(variables, images):
        _, state = model.apply(variables, images, train=False, mutable=['intermediates'])
        return jax.tree.map(
            lambda calls: calls[0],
            state.get('intermediates', {}),
            is_leaf=lambda t: isinstance(t, tuple),
        )

    sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P(DATA_AXIS))
    return jax.jit(sharded)
