"""Precise BatchNorm for NNX: recompute a model's `nnx.BatchStat` from a stream of batches.

The method (Wu & Johnson 2021) and the averaging are `normlab.norms.precise_bn`'s:
with the weights frozen, every stateful norm's batch statistics are averaged
over many batches (each weighted equally) and replace its running ones. The
model runs on a copy with its norms in training mode, recording the statistics
of each batch (the ones the Linen layers `sow`); the copy's own updates are
thrown away, so only the ``mean`` / ``var`` of those norms change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
from flax import nnx

from normlab.nnx.shell import StatefulNorm
from normlab.norms.batch_norm import BATCH_MOMENTS
from normlab.norms.precise_bn import average_over_batches, mean_over_calls


def _key(path) -> str:
    return '/'.join(map(str, path))


def batch_moments_fn(model: nnx.Module, **call_kwargs) -> Callable[[Any, Any], dict]:
    """A jitted ``(state, batch) -> moments`` for one batch, where ``state = nnx.state(model)``.

    The moments are keyed by each stateful norm's path (``'block/bn'``) and
    hold the statistics it would store (``mean``, ``var``). A batch is one
    array or a tuple of positional arguments of the model; `call_kwargs` go to
    every call (e.g. ``train=True`` for a model that passes its own mode to its
    norms).
    """
    graphdef = nnx.graphdef(model)

    def moments(state, batch):
        copy = nnx.merge(graphdef, state)
        stateful = [(p, m) for p, m in nnx.iter_modules(copy) if isinstance(m, StatefulNorm)]
        for _, m in stateful:
            m.use_running_average = False
            m._record_batch_moments = True
        copy(*(batch if isinstance(batch, tuple) else (batch,)), **call_kwargs)
        out = {}
        for path, m in stateful:
            calls = getattr(m, BATCH_MOMENTS, None)
            if calls is not None:  # a norm the batch did not reach records nothing
                calls = calls.get_value()
                out[_key(path)] = mean_over_calls(
                    {k: tuple(a for c in calls for a in c[k]) for k in calls[0]}
                )
        return out

    return jax.jit(moments)


def recompute_batch_stats(
    model: nnx.Module,
    batches: Iterable[Any],
    *,
    num_batches: int | None = None,
    moments_fn: Callable[[Any, Any], dict] | None = None,
    **call_kwargs,
) -> None:
    """Sets every stateful norm's ``mean`` / ``var`` to its average over `batches`, in place.

    Args:
      model: an NNX model with `normlab.nnx` norms.
      batches: an iterable of model inputs (arrays or tuples of arguments).
      num_batches: stop after this many batches (None: exhaust `batches`).
      moments_fn: replaces `batch_moments_fn(model, **call_kwargs)`, e.g. a
        `shard_map`-ed version that pools statistics over devices.
      **call_kwargs: passed to every call of the model.

    Example::

      recompute_batch_stats(model, (b['image'] for b in batches), num_batches=200)
      model.eval()
    """
    if not any(isinstance(m, StatefulNorm) for _, m in nnx.iter_modules(model)):
        raise ValueError('recompute_batch_stats: the model has no stateful normlab.nnx norm')
    fn = moments_fn or batch_moments_fn(model, **call_kwargs)
    state = nnx.state(model)
    averaged = average_over_batches(lambda batch: fn(state, batch), batches, num_batches)
    for path, m in nnx.iter_modules(model):
        for name, value in averaged.get(_key(path), {}).items():
            getattr(m, name)[...] = value
