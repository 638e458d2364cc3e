"""FRN + TLU and the EvoNorms against their formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from normlab import norms
from normlab.norms.response_norms import tlu
from tests.norm_cases import KEY, mesh4, perturb, rand


def test_frn_and_evonorm_closed_forms():
    x = rand((2, 3, 3, 4))
    frn = norms.FilterResponseNorm()
    v = frn.init(KEY, x)
    nu2 = jnp.mean(x**2, axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(frn.apply(v, x), jnp.maximum(x / jnp.sqrt(nu2 + 1e-6), 0), atol=1e-5)
    s0 = norms.EvoNormS0(num_groups=2)
    v = s0.init(KEY, x)
    g = x.reshape(2, 3, 3, 2, 2)
    std = jnp.sqrt(g.var(axis=(1, 2, 4), keepdims=True) + 1e-5)
    ref = (x * jax.nn.sigmoid(x)).reshape(g.shape) / std
    np.testing.assert_allclose(s0.apply(v, x), ref.reshape(x.shape), atol=1e-5)
    b0 = norms.EvoNormB0(use_running_average=False)
    v = b0.init(KEY, x)
    y, s = b0.apply(v, x, mutable=['batch_stats'])
    bvar = x.var(axis=(0, 1, 2), keepdims=True)
    ivar = x.var(axis=(1, 2), keepdims=True)
    ref = x / jnp.maximum(jnp.sqrt(bvar + 1e-5), x + jnp.sqrt(ivar + 1e-5))
    np.testing.assert_allclose(y, ref, atol=1e-5)


def _frn_ref(p, x):
    p = {k: a.reshape(1, 1, 1, -1) for k, a in p.items()}
    nu2 = jnp.mean(x**2, axis=(1, 2), keepdims=True)
    return jnp.maximum(p['scale'] * x / jnp.sqrt(nu2 + 1e-6) + p['bias'], p['tau'])


def _s0_ref(p, x):
    p = {k: a.reshape(1, 1, 1, -1) for k, a in p.items()}
    g = x.reshape(x.shape[:-1] + (2, -1))
    std = jnp.sqrt(g.var(axis=(1, 2, 4), keepdims=True) + 1e-5)
    y = (x * jax.nn.sigmoid(p['v'] * x)).reshape(g.shape) / std
    return y.reshape(x.shape) * p['scale'] + p['bias']


def _b0_ref(p, x):
    p = {k: a.reshape(1, 1, 1, -1) for k, a in p.items()}
    bvar = x.var(axis=(0, 1, 2), keepdims=True)
    ivar = x.var(axis=(1, 2), keepdims=True)
    denom = jnp.maximum(jnp.sqrt(bvar + 1e-5), p['v'] * x + jnp.sqrt(ivar + 1e-5))
    return x / denom * p['scale'] + p['bias']


@pytest.mark.parametrize(
    'module,ref',
    [
        (norms.FilterResponseNorm(), _frn_ref),
        (norms.EvoNormS0(num_groups=2), _s0_ref),
        (norms.EvoNormB0(use_running_average=False), _b0_ref),
    ],
    ids=['frn', 'evonorm_s0', 'evonorm_b0'],
)
def test_response_norm_values_and_gradients_match_their_formulas(module, ref):
    x = rand((4, 3, 3, 4), loc=0.5)
    v = jax.tree_util.tree_map_with_path(perturb, module.init(KEY, x))

    def ours(params, x):
        return module.apply({**v, 'params': params}, x, mutable=['batch_stats'])[0]

    np.testing.assert_allclose(ours(v['params'], x), ref(v['params'], x), atol=1e-5)
    w = rand(x.shape, seed=3)
    g = jax.grad(lambda p, x: jnp.sum(jnp.sin(ours(p, x)) * w), (0, 1))(v['params'], x)
    g_ref = jax.grad(lambda p, x: jnp.sum(jnp.sin(ref(p, x)) * w), (0, 1))(v['params'], x)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(len(jax.devices()) < 4, reason='needs 4 simulated devices')
def test_cross_device_evonorm_b0_equals_the_concatenated_batch():
    x = rand((16, 3, 3, 4), loc=2.0)
    b0 = norms.EvoNormB0(use_running_average=False)
    v = jax.tree_util.tree_map_with_path(perturb, b0.init(KEY, x))
    y_ref, s_ref = b0.apply(v, x, mutable=['batch_stats'])

    def f(x):
        return b0.clone(axis_name='data').apply(v, x, mutable=['batch_stats'])

    specs = dict(in_specs=P('data'), out_specs=(P('data'), P()))
    y, s = jax.jit(jax.shard_map(f, mesh=mesh4(), **specs))(x)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    np.testing.assert_allclose(s['batch_stats']['var'], s_ref['batch_stats']['var'], rtol=1e-5)


@pytest.mark.parametrize(
    'module',
    [norms.FilterResponseNorm(), norms.EvoNormB0(use_running_average=False)],
    ids=['frn', 'evonorm_b0'],
)
def test_response_norms_keep_nan_so_a_diverging_run_stops(module):
    x = rand((2, 3, 3, 4))
    v = module.init(KEY, x)
    y, _ = module.apply(v, x.at[0, 0, 0, 0].set(jnp.nan), mutable=['batch_stats'])
    assert bool(jnp.isnan(y[0, 0, 0, 0]))
    bad = jax.tree.map(lambda a: a.at[0].set(jnp.nan) if a.ndim else a, v['params'])
    y, _ = module.apply({**v, 'params': bad}, x, mutable=['batch_stats'])
    assert bool(jnp.any(jnp.isnan(y)))


def test_tlu_gradient_at_a_tie_goes_to_tau():
    dz, dtau = jax.grad(lambda z, t: jnp.sum(tlu(z, t)), (0, 1))(jnp.ones(3), jnp.ones(3))
    np.testing.assert_array_equal(dz, 0.0)
    np.testing.assert_array_equal(dtau, 1.0)
