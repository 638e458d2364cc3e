"""The train state every trainer checkpoints, and the operations on it all trainers share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax import lax

from normlab.parallel import DATA_AXIS


@flax.struct.dataclass
class TrainState:
    """One network's parameters, optimizer state and other collections.

    ``model_state`` is every non-param collection (``batch_stats``,
    ``spectral_stats``, ...).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: dict

    def variables(self) -> dict:
        return {'params': self.params, **self.model_state}

    @classmethod
    def create(cls, variables: dict, tx: optax.GradientTransformation) -> TrainState:
        """The state before the first step, from a model's ``init`` variables."""
        variables = dict(variables)
        params = variables.pop('params')
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            model_state=variables,
        )


def reduce_model_state(model_state: dict) -> dict:
    """Inside the step: per-device batch statistics differ, so average them over the
    data axis; every other collection is already replicated."""
    out = dict(model_state)
    if 'batch_stats' in out:
        out['batch_stats'] = lax.pmean(out['batch_stats'], DATA_AXIS)
    return out


def all_finite(*trees) -> jax.Array:
    """Whether every floating-point value in `trees` is finite (a traced bool)."""
    leaves = [
        x
        for t in trees
        for x in jax.tree.leaves(t)
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    ]
    if not leaves:
        return jnp.bool_(True)
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves]))


def keep_if(ok: jax.Array, new, old):
    """`new` where `ok`, else `old`, leaf by leaf: a diverged step leaves the state as
    it was, so the last good state is still there when the host sees the flag."""
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def initialize(fn: Callable[..., Any], out_shardings, *args):
    """``jax.jit(fn, out_shardings=...)(*args)``, compiled without backend optimization
    on CPU.

    An init runs once per run, yet XLA:CPU spends most of its compile time
    optimizing it (each initializer's RNG unrolled); without backend optimization it
    compiles several times faster and agrees to an ulp or two, and a run always
    uses the same setting, so a seed still fixes the weights. `out_shardings`
    (replicated over a multi-process mesh) creates the state where it belongs,
    without the cross-process equality check a `device_put` of host values runs.
    """
    return compile_init(fn, out_shardings, *args)(*args)


def compile_init(fn: Callable[..., Any], out_shardings, *args):
    """`initialize`'s executable for arguments like `args`, to call for many (a bundle's
    runs: one compile for every seed)."""
    options = {'xla_backend_optimization_level': 0} if jax.default_backend() == 'cpu' else {}
    jitted = jax.jit(fn, out_shardings=out_shardings)
    return jitted.lower(*args).compile(compiler_options=options)
