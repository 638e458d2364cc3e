"""Precise BatchNorm: population statistics recomputed after training.

Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm" (arXiv:2105.07576): the
EMA of batch statistics lags behind the weights and over-weights the last
few batches. Precise BN freezes the weights and averages the statistics of
many batches, an unbiased estimate of the population statistics the model
was trained to expect. Every BatchNorm-like layer `sow`s the statistics of
the batch it normalized into the ``batch_moments`` collection whenever the
caller makes that collection mutable; this module averages them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from normlab.norms.batch_norm import BATCH_MOMENTS


def batch_moments_fn(model: nn.Module, **apply_kwargs) -> Callable[[Any, Any], Any]:
    """A jitted ``(variables, batch) -> moments`` for one batch.

    The model runs in training mode (``apply_kwargs``, e.g. ``train=True``) so
    its norms use batch statistics; every state collection is mutable and its
    updates are thrown away: only the sown statistics are returned, as a tree
    that mirrors ``batch_stats``. A batch is one array or a tuple of
    positional arguments.
    """

    def moments(variables, batch):
        args = batch if isinstance(batch, tuple) else (batch,)
        mutable = [c for c in variables if c != 'params'] + [BATCH_MOMENTS]
        _, state = model.apply(variables, *args, mutable=mutable, **apply_kwargs)
        return mean_over_calls(state.get(BATCH_MOMENTS, {}))

    return jax.jit(moments)


def mean_over_calls(sown):
    """Sown statistics averaged over calls: a layer called several times sowed one per call."""
    return jax.tree.map(
        lambda calls: jnp.mean(jnp.stack(calls), axis=0),
        sown,
        is_leaf=lambda t: isinstance(t, tuple),
    )


def average_over_batches(fn, batches, num_batches: int | None = None):
    """The mean of the trees ``fn(batch)`` over `batches`, each batch weighted equally."""
    total, n = None, 0
    for batch in batches:
        if num_batches is not None and n >= num_batches:
            break
        m = fn(batch)
        total = m if total is None else jax.tree.map(jnp.add, total, m)
        n += 1
    if n == 0:
        raise ValueError('recompute_batch_stats: got no batches')
    return jax.tree.map(lambda t: t / n, total)


def recompute_batch_stats(
    model: nn.Module,
    variables: dict,
    batches: Iterable[Any],
    *,
    num_batches: int | None = None,
    moments_fn: Callable[[Any, Any], Any] | None = None,
    **apply_kwargs,
) -> dict:
    """Fresh ``batch_stats``: the true average over `batches` of each layer's statistics.

    Args:
      model: the flax model.
      variables: its variables (``params``, ``batch_stats``, ...); unchanged.
      batches: an iterable of model inputs (arrays or tuples of arguments).
      num_batches: stop after this many batches (None: exhaust `batches`).
      moments_fn: replaces `batch_moments_fn(model, **apply_kwargs)`, e.g. a
        `shard_map`-ed version that pools statistics over devices.
      **apply_kwargs: passed to ``model.apply``; ``train=True`` for normlab
        models.

    Returns:
      A new ``batch_stats`` collection with every statistic the layers sowed
      replaced by its average over the batches (means and biased variances,
      each batch weighted equally), and every other leaf kept.

    Example::

      stats = recompute_batch_stats(model, variables, (b['image'] for b in ds),
                                    num_batches=200, train=True)
      variables = {**variables, 'batch_stats': stats}
    """
    if 'batch_stats' not in variables:
        raise ValueError('recompute_batch_stats: the model has no batch_stats to recompute')
    fn = moments_fn or batch_moments_fn(model, **apply_kwargs)
    averaged = average_over_batches(lambda batch: fn(variables, batch), batches, num_batches)
    averaged = traverse_util.flatten_dict(averaged)
    stats = traverse_util.flatten_dict(jax.device_get(variables['batch_stats']))
    missing = sorted('/'.join(k) for k in averaged if k not in stats)
    if missing:
        raise ValueError(f'recompute_batch_stats: sown statistics {missing} are not batch_stats')
    stats.update(averaged)
    return traverse_util.unflatten_dict(stats)
