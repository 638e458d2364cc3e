"""Shared inputs and runners of the norm tests."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

KEY = jax.random.key(0, impl='rbg')  # threefry compiles slowly on CPU


def rand(shape, dtype=jnp.float32, seed=0, loc=0.5, scale=2.0):
    # numpy, not jax.random: XLA:CPU compiles threefry slowly for every new shape.
    x = np.random.default_rng(seed).normal(size=shape) * scale + loc
    return jnp.asarray(x, jnp.float32).astype(dtype)


def perturb(path, leaf):
    if path[0].key != 'params':
        return leaf
    """Non-trivial params so scale/bias bugs show (a `tree_map_with_path` function)."""
    noise = np.random.default_rng(len(str(path))).normal(size=leaf.shape)
    return leaf + 0.3 * jnp.asarray(noise, leaf.dtype)


def perturbed(module, x, **call):
    """`module`'s variables for `x`, with non-trivial params so scale/bias bugs show."""
    return jax.tree_util.tree_map_with_path(perturb, module.init(KEY, x, **call))


def mesh4():
    return Mesh(np.array(jax.devices()[:4]), ('data',))


def sharded_bn(module, v, x, mask=None, per_device_stats=False):
    """Train-mode BN under shard_map on 4 devices.

    Returns the outputs and the updated state, replicated (checked by
    shard_map) or, with `per_device_stats`, stacked over devices.
    """

    def f(v, x, mask):
        y, s = module.apply(v, x, mask=mask, mutable=['batch_stats'])
        return y, (jax.tree.map(lambda a: a[None], s) if per_device_stats else s)

    mask = jnp.ones(x.shape[:1] + (1,) * (x.ndim - 1), bool) if mask is None else mask
    state_spec = P('data') if per_device_stats else P()
    specs = dict(in_specs=(P(), P('data'), P('data')), out_specs=(P('data'), state_spec))
    return jax.jit(jax.shard_map(f, mesh=mesh4(), **specs))(v, x, mask)
