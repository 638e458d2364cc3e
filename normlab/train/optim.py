"""The optimizer and learning-rate schedule a config asks for (optax).

The scalars in `HYPERPARAMS` live in the optimizer state
(`optax.inject_hyperparams`), not in the compiled program: runs that differ only
in them share one program, and a bundle (`normlab.train.bundle`) trains them
together with one value per run. What of them still shapes the program (whether
there is a momentum buffer or a decay term at all) is read from the config.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from normlab.train import bundle

# Config keys whose values are traced optimizer state (`hyperparams`), declared with
# what splits a bundle (`bundle.OPTIMIZER_SCALARS`). Adam's b1/b2 stay compiled in:
# optax derives ``1 - b1`` from them, which in float32 rounds differently from the
# constant a Python float gives, and would move every Adam run.
HYPERPARAMS = tuple(bundle.OPTIMIZER_SCALARS)


def scaled_learning_rate(config) -> float:
    """The peak learning rate, after the linear scaling rule if asked for.

    Goyal et al. 2017: ``lr = learning_rate * batch_size / base_batch_size``.
    """
    if config.lr_scaling == 'linear':
        return config.learning_rate * config.batch_size / config.base_batch_size
    return config.learning_rate


def hyperparams(config) -> dict[str, jax.Array]:
    """This run's values of `HYPERPARAMS` (``learning_rate``: the scaled peak)."""
    values = {k: config[k] for k in HYPERPARAMS}
    values['learning_rate'] = scaled_learning_rate(config)
    return {k: jnp.float32(v) for k, v in values.items()}


def schedule(config, total_steps: int, steps_per_epoch: int, peak=None) -> optax.Schedule:
    """The learning rate at each step, rising to `peak` (default: the config's scaled
    rate; traced in `make_optimizer`, where each run's peak is its optimizer state)."""
    peak = scaled_learning_rate(config) if peak is None else peak
    warmup = min(int(config.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
    if config.schedule == 'cosine':
        main = optax.cosine_decay_schedule(peak, max(total_steps - warmup, 1))
    elif config.schedule == 'step':
        boundaries = {
            int(f * total_steps) - warmup: config.step_factor for f in config.step_boundaries
        }
        main = optax.piecewise_constant_schedule(peak, boundaries)
    else:
        main = optax.constant_schedule(peak)
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def learning_rate_of(config, total_steps: int, steps_per_epoch: int):
    """``state -> the learning rate its step applies``, for a state whose optimizer
    `make_optimizer` made."""

    def lr(state):
        peak = state.opt_state.hyperparams['learning_rate']
        return schedule(config, total_steps, steps_per_epoch, peak)(state.step)

    return lr


def decay_mask(params, decay_norm_and_bias: bool):
    """True for weights that get weight decay: conv/dense kernels only by default.

    Norm scales and offsets (``scale``, ``bias``, ``tau``, ``v``, WS ``gain``)
    and layer biases are excluded, as in Goyal et al. 2017 and most ResNet code.
    """
    flat = traverse_util.flatten_dict(params)
    mask = {k: decay_norm_and_bias or k[-1] == 'kernel' for k in flat}
    return traverse_util.unflatten_dict(mask)


def make_optimizer(
    config, total_steps: int, steps_per_epoch: int, values: dict | None = None
) -> optax.GradientTransformation:
    """The config's optimizer and schedule, its `HYPERPARAMS` in its state.

    ``values`` (default ``hyperparams(config)``, traced in a bundle's init) only set
    the initial state; every update reads them from the state it is given.
    """
    mask = lambda p: decay_mask(p, config.decay_norm_and_bias)  # noqa: E731

    def build(learning_rate, weight_decay, momentum):
        lr = schedule(config, total_steps, steps_per_epoch, learning_rate)
        chain = []
        if config.agc_clip is not None:
            # Brock et al. 2021: unit-wise clipping; heads are usually exempt,
            # but clipping them is harmless at the small clip values used here.
            chain.append(optax.adaptive_grad_clip(config.agc_clip))
        if config.grad_clip_norm is not None:
            chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
        b1, b2 = config.b1, config.b2
        if config.optimizer == 'adamw':
            chain.append(optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay, mask=mask))
            return optax.chain(*chain)
        if config.weight_decay:  # zero: no decay term (bundles split on this, not the value)
            chain.append(optax.add_decayed_weights(weight_decay, mask=mask))
        if config.optimizer == 'sgd':
            momentum = momentum if config.momentum else None
            chain.append(optax.sgd(lr, momentum=momentum, nesterov=config.nesterov))
        else:
            chain.append(optax.adam(lr, b1=b1, b2=b2))
        return optax.chain(*chain)

    values = hyperparams(config) if values is None else values
    return optax.inject_hyperparams(build, hyperparam_dtype=jnp.float32)(**values)


def count_params(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
