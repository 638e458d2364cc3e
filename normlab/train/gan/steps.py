"""The GAN train step: discriminator then generator updates, under `jax.shard_map`.

One call of the step is one *generator* step:

1. ``steps`` discriminator updates (``n_dis``; 1 in DCGAN, often 5 with spectral norm
   in Miyato et al. 2018), each on its own real batch and fresh generated batch. Real
   and generated examples go through D as separate batches, as in DCGAN, so a batch
   norm in D normalizes each with its own statistics.
2. one generator update through the just-updated D (whose state changes are dropped:
   only D's own updates advance its batch statistics and power iterations).

Both networks run on every device's slice of the batch; as in `normlab.train.classifier.steps`,
losses are local sums divided by the *global* batch, so autodiff's transpose of the
replicated parameters sums the gradients over devices (no separate psum), metrics
are `psum`-ed, ``batch_stats`` are `pmean`-ed, and ``out_specs=P()`` turns a
forgotten reduction into a trace-time error.

Noise and fake labels are drawn from ``(seed, step)`` for the whole global batch on
every device, which keeps its own rows, so a run's random numbers do not depend on
the device count and a resumed run draws exactly what an uninterrupted one would.
`normlab.train.steps.scan_steps` runs this step ``steps_per_call`` times per call.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from normlab.parallel import DATA_AXIS
from normlab.train.gan.images import ImageSpace
from normlab.train.gan.losses import GANLoss
from normlab.train.loop import FINITE
from normlab.train.state import TrainState, all_finite, reduce_model_state

# fold_in tags that keep the training and evaluation noise streams apart.
TRAIN_NOISE, EVAL_NOISE = 0, 1


@flax.struct.dataclass
class GANState:
    """Everything a GAN checkpoint holds.

    ``step`` counts generator updates; each network's `TrainState` counts its own.
    ``ema_params`` is the exponential moving average of the generator's parameters
    (None without EMA). ``collapsed_steps`` counts consecutive steps whose
    discriminator loss was below the collapse floor (see `normlab.config.gan.divergence_config`).
    """

    step: jax.Array
    generator: TrainState
    discriminator: TrainState
    ema_params: Any
    collapsed_steps: jax.Array

    def eval_generator_variables(self) -> dict:
        """The generator's variables for sampling: the EMA weights when there are some."""
        params = self.generator.params if self.ema_params is None else self.ema_params
        return {'params': params, **self.generator.model_state}


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """What the step needs from the config, so no hyperparameter hides in the step.

    Attributes:
      loss: the GAN loss (`normlab.train.gan.losses`).
      latent_dim: size of z.
      num_classes: classes to condition on; 0: unconditional.
      d_steps: discriminator updates per generator update.
      r1_weight: R1 penalty gamma (0: off).
      ema_decay: generator EMA decay (None: off).
      seed: the run seed, for the noise.
      space: maps pipeline images to the generator's [-1, 1] space.
    """

    loss: GANLoss
    latent_dim: int
    num_classes: int
    d_steps: int
    r1_weight: float
    ema_decay: float | None
    seed: int
    space: ImageSpace


def noise(seed: int, stream: int, index, batch_size: int, shape: tuple, num_classes: int):
    """``z`` of shape ``(batch_size, *shape)`` and labels ``(batch_size, *shape[:-1])``
    drawn from ``(seed, stream, index)``; labels are 0 when unconditional."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), index)
    kz, ky = jax.random.split(key)
    z = jax.random.normal(kz, (batch_size, *shape), jnp.float32)
    labels = jax.random.randint(ky, (batch_size, *shape[:-1]), 0, max(num_classes, 1))
    return z, labels


def ema_decay_at(decay: float, step) -> jax.Array:
    """``min(decay, (1 + t) / (10 + t))``: early averages are not stuck at the init
    weights (the ``num_updates`` rule of TensorFlow's ExponentialMovingAverage)."""
    t = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def train_step_fn(
    generator: nn.Module,
    discriminator: nn.Module,
    g_tx: optax.GradientTransformation,
    d_tx: optax.GradientTransformation,
    options: StepOptions,
    *,
    global_batch_size: int,
    d_loss_floor: float,
):
    """The per-device ``(state, batch, seed) -> (state, metrics)`` of one generator step
    (the noise's seed is ``options.seed``: GAN runs train alone).

    ``batch['image']`` is this device's ``(local_batch, d_steps, H, W, C)`` normalized
    pipeline images (one real batch per discriminator update, stacked on axis 1) and
    ``batch['label']`` ``(local_batch, d_steps)`` when conditional. The noise of the
    whole global batch is drawn from ``(seed, step)`` on every device and each takes
    its rows, so it does not depend on the device count. A step whose
    discriminator loss is below `d_loss_floor` (-inf: never) counts towards collapse.
    """
    o = options
    loss = o.loss
    conditional = o.num_classes > 0
    count = float(global_batch_size)  # examples per batch, all devices

    def labels_or_none(y):
        return y if conditional else None

    def step(state: GANState, batch, seed):
        del seed  # the same value as o.seed
        local = batch['image'].shape[0]
        z, fake_labels = noise(
            o.seed,
            TRAIN_NOISE,
            state.step,
            global_batch_size,
            (o.d_steps + 1, o.latent_dim),
            o.num_classes,
        )
        first = lax.axis_index(DATA_AXIS) * local
        z = lax.dynamic_slice_in_dim(z, first, local)
        fake_labels = lax.dynamic_slice_in_dim(fake_labels, first, local)
        images = jnp.moveaxis(batch['image'], 1, 0)
        d_steps, _, h, w, c = images.shape
        real = o.space.to_gan(images.reshape(d_steps * local, h, w, c))
        real = real.reshape(d_steps, local, *real.shape[1:])
        z = jnp.moveaxis(z, 1, 0)  # (d_steps + 1, local, latent)
        fake_labels = jnp.moveaxis(fake_labels, 1, 0)
        real_labels = jnp.moveaxis(batch['label'], 1, 0) if conditional else fake_labels[:-1]

        g_state = state.generator
        g_mutable = list(g_state.model_state)

        def generate(variables, z, y):
            return generator.apply(
                variables, z, labels=labels_or_none(y), train=True, mutable=g_mutable
            )

        def discriminate(variables, x, y):
            mutable = [c for c in variables if c != 'params']
            return discriminator.apply(
                variables, x, labels=labels_or_none(y), train=True, mutable=mutable
            )

        def d_update(d: TrainState, inputs):
            x_real, y_real, z_d, y_fake = inputs
            fake, _ = generate(g_state.variables(), z_d, y_fake)
            fake = lax.stop_gradient(fake)

            def loss_fn(params):
                r, d_state = discriminate({'params': params, **d.model_state}, x_real, y_real)
                f, d_state = discriminate({'params': params, **d_state}, fake, y_fake)
                loss_sum = jnp.sum(loss.d_real(r)) + jnp.sum(loss.d_fake(f))
                penalty = jnp.zeros(())
                if o.r1_weight:
                    # Per-example input gradients: valid because the config check
                    # rejects batch-coupling norms in D when r1_weight > 0.
                    def d_sum(x):
                        out, _ = discriminate({'params': params, **d.model_state}, x, y_real)
                        return jnp.sum(out)

                    grad_x = jax.grad(d_sum)(x_real)
                    penalty = 0.5 * o.r1_weight * jnp.sum(grad_x**2)
                return (loss_sum + penalty) / count, (d_state, r, f, loss_sum, penalty)

            (_, (d_state, r, f, loss_sum, penalty)), grads = jax.value_and_grad(
                loss_fn, has_aux=True
            )(d.params)
            updates, opt_state = d_tx.update(grads, d.opt_state, d.params)
            d = d.replace(
                step=d.step + 1,
                params=optax.apply_updates(d.params, updates),
                opt_state=opt_state,
                model_state=reduce_model_state(d_state),
            )
            correct = jnp.sum((r > 0).astype(jnp.float32)) + jnp.sum((f < 0).astype(jnp.float32))
            metrics = {
                'train/d_loss': lax.psum(loss_sum, DATA_AXIS) / count,
                'train/d_real': lax.psum(jnp.sum(r), DATA_AXIS) / count,
                'train/d_fake': lax.psum(jnp.sum(f), DATA_AXIS) / count,
                'train/d_accuracy': lax.psum(correct, DATA_AXIS) / (2 * count),
                'train/d_grad_norm': optax.global_norm(grads),
            }
            if o.r1_weight:
                metrics['train/r1_penalty'] = lax.psum(penalty, DATA_AXIS) / count
            return d, metrics

        # An unrolled loop, not lax.scan: on CPU, XLA compiled the convolutions inside
        # a scan body ~8x slower (measured: 800 vs 95 ms per step on 16x16 digits).
        d_new, all_metrics = state.discriminator, []
        for i in range(d_steps):
            d_new, m = d_update(d_new, (real[i], real_labels[i], z[i], fake_labels[i]))
            all_metrics.append(m)
        d_metrics = jax.tree.map(lambda *m: sum(m) / len(m), *all_metrics)

        def g_loss_fn(params):
            fake, new_g_state = generate(
                {'params': params, **g_state.model_state}, z[-1], fake_labels[-1]
            )
            f, _ = discriminate(d_new.variables(), fake, fake_labels[-1])
            loss_sum = jnp.sum(loss.g_fake(f))
            return loss_sum / count, (new_g_state, loss_sum)

        (_, (new_g_state, g_loss_sum)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
            g_state.params
        )
        updates, g_opt_state = g_tx.update(g_grads, g_state.opt_state, g_state.params)
        g_params = optax.apply_updates(g_state.params, updates)
        g_new = g_state.replace(
            step=g_state.step + 1,
            params=g_params,
            opt_state=g_opt_state,
            model_state=reduce_model_state(new_g_state),
        )
        ema = state.ema_params
        if o.ema_decay is not None:
            decay = ema_decay_at(o.ema_decay, state.step)
            ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, g_params)
        below = d_metrics['train/d_loss'] < d_loss_floor
        collapsed = jnp.where(below, state.collapsed_steps + 1, 0)
        metrics = {
            **d_metrics,
            'train/g_loss': lax.psum(g_loss_sum, DATA_AXIS) / count,
            'train/g_grad_norm': optax.global_norm(g_grads),
            'collapsed_steps': collapsed,
        }
        new = state.replace(
            step=state.step + 1,
            generator=g_new,
            discriminator=d_new,
            ema_params=ema,
            collapsed_steps=collapsed,
        )
        metrics[FINITE] = all_finite(metrics)  # losses and gradient norms
        return new, metrics

    return step
