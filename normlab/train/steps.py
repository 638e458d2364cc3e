"""Many train steps per dispatch: one `lax.scan` over a trainer's step, under `shard_map`.

A small model computes a step in microseconds and costs milliseconds when every
step is its own Python iteration and dispatch. `scan_steps` turns a trainer's
per-device step ``(state, batch, seed) -> (state, metrics)`` (``seed``: the run's,
traced, e.g. for dropout) into one call that runs
up to ``steps_per_call`` steps: the batch of each step comes from
``batch_fn(data, seed, step, i)`` (device-resident data batched inside the
program, or row ``i`` of host batches stacked for the call), steps past the
call's ``n`` are skipped by a `lax.cond` (one executable serves every call
length), and a step whose `normlab.train.loop.FINITE` flag is false leaves the
state unchanged.

On CPU, XLA runs convolutions inside a loop body slower than in a program of
their own (BENCHMARKS.md); `default_steps_per_call` therefore keeps one step per
call for convolutional models there, where a step's compute dwarfs its dispatch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from normlab.parallel import DATA_AXIS
from normlab.train.loop import FINITE
from normlab.train.state import all_finite, keep_if


def scan_steps(
    step_fn: Callable, batch_fn: Callable, steps_per_call: int, prepare: Callable | None = None
) -> Callable:
    """``body(state, data, seed, n) -> (state, metrics stacked over steps_per_call)``.

    Call `body` inside `shard_map`; `seed` and `n` are traced, so neither a new
    seed nor a shorter call recompiles. ``prepare(data, seed, first_step) -> data``
    runs once per call, before the steps (e.g. the epochs' permutations), and its
    result is what `batch_fn` sees.
    """
    prepare = prepare or (lambda data, seed, step: data)

    if steps_per_call == 1:  # no loop: XLA:CPU runs convolutions slower inside one

        def single(state, data, seed, n):
            del n  # a call runs at least one step
            data = prepare(data, seed, state.step)
            new, metrics = step_fn(state, batch_fn(data, seed, state.step, 0), seed)
            ok = metrics[FINITE] & all_finite(new)
            metrics = {**metrics, FINITE: ok}
            return keep_if(ok, new, state), jax.tree.map(lambda m: jnp.asarray(m)[None], metrics)

        return single

    def body(state, data, seed, n):
        data = prepare(data, seed, state.step)

        def one(carry, i):
            state, halted = carry

            def run(state):
                return step_fn(state, batch_fn(data, seed, state.step, i), seed)

            # What a skipped step returns: zeros shaped like a step's metrics. A step
            # function may declare them (`metrics_template`); tracing it to find out
            # costs a second trace of the whole step.
            template = getattr(step_fn, 'metrics_template', None)
            shapes = template(state) if template else jax.eval_shape(run, state)[1]

            def skip(state):
                return state, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

            state, metrics = lax.cond((i < n) & ~halted, run, skip, state)
            return (state, halted | ((i < n) & ~metrics[FINITE])), metrics

        (state, _), metrics = lax.scan(one, (state, jnp.bool_(False)), jnp.arange(steps_per_call))
        # The steps checked their loss and gradients; the whole state is checked once
        # per call, against the call's last step (what only overflow could miss).
        last = jnp.arange(steps_per_call) == n - 1
        metrics[FINITE] = metrics[FINITE] & (~last | all_finite(state))
        return state, metrics

    return body


def make_train_call(
    step_fn: Callable,
    mesh: Mesh,
    *,
    steps_per_call: int,
    batch_fn: Callable | None,
    prepare: Callable | None = None,
    options: dict | None = None,
    bundled: bool = False,
):
    """The jitted ``(state, data, seed, n) -> (state, stacked metrics)``, donating state.

    ``bundled``: `state` and `seed` carry a leading run axis (a bundle,
    `normlab.train.bundle`), and so do the metrics. The `jax.vmap` over runs sits
    inside `shard_map`, so every collective (gradients, batch statistics) still
    reduces over the data axis of each run alone.

    With a `batch_fn` (device-resident data), ``data`` is the resident arrays, sharded
    over the data axis, and batches are built on the devices (after ``prepare``, see
    `scan_steps`); with None, ``data`` is host batches stacked to
    ``(steps_per_call, batch, ...)`` (`HostBatches`).
    """
    data_spec = P(DATA_AXIS) if batch_fn is not None else P(None, DATA_AXIS)
    body = scan_steps(step_fn, batch_fn or row_of_stacked, steps_per_call, prepare)
    if bundled:
        body = jax.vmap(body, in_axes=(0, None, 0, None))
    sharded = jax.shard_map(
        body, mesh=mesh, in_specs=(P(), data_spec, P(), P()), out_specs=(P(), P())
    )
    return jax.jit(sharded, donate_argnums=0, compiler_options=options)


class HostBatches:
    """Streamed batches, stacked per call as ``(steps_per_call, batch, ...)`` global
    arrays; `iterator` yields this process's rows of consecutive steps' batches."""

    def __init__(self, iterator: Iterator[dict], mesh: Mesh, steps_per_call: int):
        self.iterator = iterator
        self.k = steps_per_call
        self.sharding = NamedSharding(mesh, P(None, DATA_AXIS))

    def take(self, n: int) -> dict:
        rows = [next(self.iterator) for _ in range(n)]
        rows += [rows[-1]] * (self.k - n)  # rows past n are skipped by the call
        return {
            key: jax.make_array_from_process_local_data(
                self.sharding, np.stack([r[key] for r in rows])
            )
            for key in rows[0]
        }


def row_of_stacked(data, seed, step, i):
    """`batch_fn` for host batches stacked on a leading axis of ``steps_per_call``."""
    del seed, step
    return jax.tree.map(lambda x: x[i], data)


def has_convolutions(fn: Callable, *args) -> bool:
    """Whether tracing ``fn(*args)`` runs a convolution (inspects the jaxpr)."""
    jaxpr = jax.make_jaxpr(fn)(*args)

    def walk(jaxpr) -> bool:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == 'conv_general_dilated':
                return True
            for value in eqn.params.values():  # scan/cond/jvp bodies, custom rules
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    inner = getattr(sub, 'jaxpr', sub)
                    if hasattr(inner, 'eqns') and walk(inner):
                        return True
        return False

    return walk(jaxpr.jaxpr)


def default_steps_per_call(config, *, convolutional: bool) -> int:
    """``config.steps_per_call``, or when None: one step per call for convolutional
    models on CPU, else ``log_every_steps`` (calls never cross a log step anyway)."""
    if config.steps_per_call is not None:
        return config.steps_per_call
    if convolutional and jax.default_backend() == 'cpu':
        return 1
    return config.log_every_steps


def compiler_options(config) -> dict | None:
    """XLA options of a config's train step: ``xla_cpu_fusion=False`` on CPU only."""
    if config.xla_cpu_fusion or jax.default_backend() != 'cpu':
        return None
    # Without the pass XLA:CPU stops recomputing each residual stage's norm-add-ReLU
    # chain inside the transposes that feed the weight-gradient convolutions.
    return {'xla_disable_hlo_passes': 'fusion'}
