"""normlab's flax namesakes against flax.linen: values, gradients, state, dtypes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab import norms
from tests.norm_cases import KEY, perturb, rand

# (normlab class, flax class, constructor kwargs, call kwargs, input shape)
PARITY = [
    (
        'bn',
        norms.BatchNorm,
        nn.BatchNorm,
        {'momentum': 0.9},
        {'use_running_average': False},
        (6, 3, 3, 5),
    ),
    ('bn_eval', norms.BatchNorm, nn.BatchNorm, {}, {'use_running_average': True}, (4, 5)),
    (
        'bn_axis1',
        norms.BatchNorm,
        nn.BatchNorm,
        {'axis': 1},
        {'use_running_average': False},
        (4, 5, 3),
    ),
    (
        'bn_noaffine',
        norms.BatchNorm,
        nn.BatchNorm,
        {'use_scale': False, 'use_bias': False},
        {'use_running_average': False},
        (8, 4),
    ),
    ('ln', norms.LayerNorm, nn.LayerNorm, {}, {}, (3, 4, 7)),
    ('ln_hwc', norms.LayerNorm, nn.LayerNorm, {'reduction_axes': (1, 2, 3)}, {}, (3, 2, 2, 6)),
    (
        'ln_feat',
        norms.LayerNorm,
        nn.LayerNorm,
        {'reduction_axes': (1, 2), 'feature_axes': (1, 2)},
        {},
        (3, 4, 5),
    ),
    ('gn', norms.GroupNorm, nn.GroupNorm, {'num_groups': 2}, {}, (3, 2, 2, 6)),
    (
        'gn_size',
        norms.GroupNorm,
        nn.GroupNorm,
        {'num_groups': None, 'group_size': 3},
        {},
        (3, 2, 2, 6),
    ),
    ('gn_dense', norms.GroupNorm, nn.GroupNorm, {'num_groups': 4}, {}, (3, 8)),
    ('in', norms.InstanceNorm, nn.InstanceNorm, {}, {}, (3, 4, 4, 5)),
    ('rms', norms.RMSNorm, nn.RMSNorm, {}, {}, (3, 4, 7)),
]


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16], ids=['f32', 'bf16'])
@pytest.mark.parametrize(
    'ours,theirs,kwargs,call,shape', [p[1:] for p in PARITY], ids=[p[0] for p in PARITY]
)
def test_parity_with_flax(ours, theirs, kwargs, call, shape, dtype):
    x = rand(shape, dtype)
    v = jax.tree_util.tree_map_with_path(perturb, ours(**kwargs).init(KEY, x, **call))
    assert jax.tree.structure(v) == jax.tree.structure(theirs(**kwargs).init(KEY, x, **call))

    @functools.partial(jax.jit, static_argnums=0)
    def outputs_and_grads(module, params, x):
        def loss(params, x):
            y, state = module.apply({**v, 'params': params}, x, mutable=True, **call)
            return jnp.sum(jnp.sin(y.astype(jnp.float32))), (y, state)

        grads, (y, state) = jax.grad(loss, argnums=(0, 1), has_aux=True)(params, x)
        return y, state, grads

    params = v.get('params', {})
    y1, s1, g1 = outputs_and_grads(ours(**kwargs), params, x)
    y2, s2, g2 = outputs_and_grads(theirs(**kwargs), params, x)
    assert y1.dtype == y2.dtype
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(np.float32(y1), np.float32(y2), atol=tol, rtol=tol)
    # mutable=True also collects the sown batch_moments: compare batch_stats.
    assert set(s2) <= set(s1)
    for c in s2:
        for a, b in zip(jax.tree.leaves(s1[c]), jax.tree.leaves(s2[c]), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(np.float32(a), np.float32(b), atol=5 * tol, rtol=5 * tol)


def test_half_precision_reduces_in_float32():
    x = rand((16, 4, 4, 8), jnp.bfloat16, loc=20.0)
    bn = norms.BatchNorm(use_running_average=False, dtype=jnp.bfloat16)
    v = bn.init(KEY, x)
    y, s = bn.apply(v, x, mutable=['batch_stats'])
    assert y.dtype == jnp.bfloat16
    assert s['batch_stats']['mean'].dtype == jnp.float32
    y32, _ = bn.clone(dtype=jnp.float32).apply(v, x.astype(jnp.float32), mutable=True)
    np.testing.assert_allclose(np.float32(y), y32, atol=5e-2)
    for cls in (norms.LayerNorm, norms.GroupNorm, norms.RMSNorm):
        m = cls(dtype=jnp.float16) if cls is not norms.GroupNorm else cls(4, dtype=jnp.float16)
        out = m.apply(m.init(KEY, x), x)
        assert out.dtype == jnp.float16 and bool(jnp.all(jnp.isfinite(out)))
