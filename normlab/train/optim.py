"""The optimizer and learning-rate schedule a config asks for (optax)."""

from __future__ import annotations

import jax
import optax
from flax import traverse_util


def scaled_learning_rate(config) -> float:
    """The peak learning rate, after the linear scaling rule if asked for.

    Goyal et al. 2017: ``lr = learning_rate * batch_size / base_batch_size``.
    """
    if config.lr_scaling == 'linear':
        return config.learning_rate * config.batch_size / config.base_batch_size
    return config.learning_rate


def schedule(config, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
    peak = scaled_learning_rate(config)
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


def decay_mask(params, decay_norm_and_bias: bool):
    """True for weights that get weight decay: conv/dense kernels only by default.

    Norm scales and offsets (``scale``, ``bias``, ``tau``, ``v``, WS ``gain``)
    and layer biases are excluded, as in Goyal et al. 2017 and most ResNet code.
    """
    flat = traverse_util.flatten_dict(params)
    mask = {k: decay_norm_and_bias or k[-1] == 'kernel' for k in flat}
    return traverse_util.unflatten_dict(mask)


def make_optimizer(config, lr: optax.Schedule) -> optax.GradientTransformation:
    mask = lambda p: decay_mask(p, config.decay_norm_and_bias)  # noqa: E731
    chain = []
    if config.agc_clip is not None:
        # Brock et al. 2021: unit-wise clipping; heads are usually exempt,
        # but clipping them is harmless at the small clip values used here.
        chain.append(optax.adaptive_grad_clip(config.agc_clip))
    if config.grad_clip_norm is not None:
        chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.optimizer == 'adamw':
        chain.append(
            optax.adamw(lr, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay, mask=mask)
        )
        return optax.chain(*chain)
    if config.weight_decay:
        chain.append(optax.add_decayed_weights(config.weight_decay, mask=mask))
    if config.optimizer == 'sgd':
        chain.append(optax.sgd(lr, momentum=config.momentum or None, nesterov=config.nesterov))
    else:
        chain.append(optax.adam(lr, b1=config.b1, b2=config.b2))
    return optax.chain(*chain)


def count_params(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
