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


def crand(shape, seed=0):
    """Complex normal inputs with a complex offset, as complex64."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=shape) + 1j * rng.normal(size=shape) * 0.5 + (0.3 - 0.7j)
    return jnp.asarray(z, jnp.complex64)


# (normlab class, flax class, constructor kwargs, call kwargs, input shape): every
# flax namesake on complex inputs, BatchNorm in training and evaluation.
COMPLEX = [
    ('bn', norms.BatchNorm, nn.BatchNorm, {'momentum': 0.9}, {'use_running_average': False}),
    (
        'bn_two_pass',
        norms.BatchNorm,
        nn.BatchNorm,
        {'use_fast_variance': False},
        {'use_running_average': False},
    ),
    ('bn_eval', norms.BatchNorm, nn.BatchNorm, {}, {'use_running_average': True}),
    ('ln', norms.LayerNorm, nn.LayerNorm, {}, {}),
    ('gn', norms.GroupNorm, nn.GroupNorm, {'num_groups': 2}, {}),
    ('in', norms.InstanceNorm, nn.InstanceNorm, {}, {}),
    ('rms', norms.RMSNorm, nn.RMSNorm, {}, {}),
]


@pytest.mark.parametrize('masked', [False, True], ids=['all', 'masked'])
@pytest.mark.parametrize(
    'ours,theirs,kwargs,call', [c[1:] for c in COMPLEX], ids=[c[0] for c in COMPLEX]
)
def test_complex_inputs_match_flax(ours, theirs, kwargs, call, masked):
    """flax's convention: a complex mean and the real variance E|x - E[x]|^2."""
    x = crand((8, 3, 3, 4))
    mask = None
    if masked:  # flax reshapes GroupNorm's mask, so it has x's shape
        mask = np.random.default_rng(1).random(x.shape) > 0.3
        # Two real elements in every LayerNorm row: flax's gradients are NaN with one.
        mask[..., :2] = True
    kwargs = {**kwargs, 'dtype': jnp.complex64}
    v = jax.tree_util.tree_map_with_path(perturb, ours(**kwargs).init(KEY, x, **call))
    w = crand(x.shape, seed=2)
    # Outputs at masked positions are meaningless (flax's and ours differ there).
    real = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask, x.shape)

    def outputs_and_grads(module):
        def loss(params, x):
            y, state = module.apply({**v, 'params': params}, x, mask=mask, mutable=True, **call)
            terms = jnp.where(real, jnp.real(jnp.conj(w) * jnp.sin(y)), 0.0)
            return jnp.sum(terms), (jnp.where(real, y, 0.0), state)

        return jax.grad(loss, argnums=(0, 1), has_aux=True)(v['params'], x)

    (g1, (y1, s1)), (g2, (y2, s2)) = (
        outputs_and_grads(ours(**kwargs)),
        outputs_and_grads(theirs(**kwargs)),
    )
    assert y1.dtype == y2.dtype == jnp.complex64
    np.testing.assert_allclose(y1, y2, atol=2e-5, rtol=2e-5)
    for a, b in zip(
        jax.tree.leaves(s1.get('batch_stats')), jax.tree.leaves(s2.get('batch_stats')), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_complex_batch_norm_outputs_have_unit_variance():
    x = crand((256, 2))
    bn = norms.BatchNorm(use_running_average=False, dtype=jnp.complex64, use_scale=False)
    y, _ = bn.apply(bn.init(KEY, x), x, mutable=['batch_stats'])
    np.testing.assert_allclose(
        jnp.mean(jnp.abs(y - y.mean(0, keepdims=True)) ** 2, 0), 1.0, rtol=1e-3
    )


@pytest.mark.parametrize(
    'module',
    [
        norms.BatchRenorm(use_running_average=False),
        norms.FilterResponseNorm(),
        norms.EvoNormB0(use_running_average=False),
        norms.EvoNormS0(num_groups=2),
    ],
    ids=['batch_renorm', 'frn', 'evonorm_b0', 'evonorm_s0'],
)
def test_norms_without_a_complex_convention_refuse_complex_inputs(module):
    with pytest.raises(ValueError, match='does not support complex inputs.*complex64'):
        module.init(KEY, crand((4, 2, 2, 4)))
