"""normlab.norms against flax.linen, closed forms, float64 references and many devices."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from normlab import norms
from normlab.norms import functional as F
from normlab.norms.response_norms import tlu

KEY = jax.random.key(0, impl='rbg')  # threefry compiles slowly on CPU


def rand(shape, dtype=jnp.float32, seed=0, loc=0.5, scale=2.0):
    # numpy, not jax.random: XLA:CPU compiles threefry slowly for every new shape.
    x = np.random.default_rng(seed).normal(size=shape) * scale + loc
    return jnp.asarray(x, jnp.float32).astype(dtype)


def run(module, x, *, train=True, variables=None, **call):
    """(output, updated state, variables) of one call of `module`."""
    if variables is None:
        variables = module.init(KEY, x, **call)
        # Non-trivial params so scale/bias bugs show.
        variables = jax.tree_util.tree_map_with_path(_perturb, variables)
    y, state = module.apply(variables, x, mutable=True, **call)
    return y, state, variables


def _perturb(path, leaf):
    if path[0].key != 'params':
        return leaf
    noise = np.random.default_rng(len(str(path))).normal(size=leaf.shape)
    return leaf + 0.3 * jnp.asarray(noise, leaf.dtype)


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
    v = jax.tree_util.tree_map_with_path(_perturb, ours(**kwargs).init(KEY, x, **call))
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


def test_every_registered_norm_runs_in_train_and_eval():
    x = rand((4, 3, 3, 8))
    for name in norms.NORMS:
        kw = {'num_groups': 4} if name in ('group_norm', 'evonorm_s0') else {}
        norm = norms.make_norm(name, **kw)
        v = norm(use_running_average=False).init(KEY, x)
        y, state = norm(use_running_average=False).apply(v, x, mutable=True)
        y_eval = norm(use_running_average=True).apply(v, x)
        assert y.shape == y_eval.shape == x.shape, name
        assert ('batch_stats' in v) == norms.is_stateful(norm) == norms.is_stateful(name), name
        if norms.is_stateful(name):
            changed = jax.tree.map(
                lambda a, b: bool(jnp.any(a != b)), v['batch_stats'], state['batch_stats']
            )
            assert all(jax.tree.leaves(changed)), name


def test_ema_closed_form():
    m = 0.8
    bn = norms.BatchNorm(momentum=m, use_running_average=False)
    x1, x2 = rand((16, 3), seed=1), rand((16, 3), seed=2, loc=3.0)
    v = bn.init(KEY, x1)
    _, s = bn.apply(v, x1, mutable=['batch_stats'])
    _, s = bn.apply({**v, **s}, x2, mutable=['batch_stats'])
    mean = m * m * 0 + m * (1 - m) * x1.mean(0) + (1 - m) * x2.mean(0)
    var = m * m * 1 + m * (1 - m) * x1.var(0) + (1 - m) * x2.var(0)
    np.testing.assert_allclose(s['batch_stats']['mean'], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s['batch_stats']['var'], var, rtol=1e-5)


def test_unbiased_running_var_matches_pytorch_convention():
    x = rand((5, 3))
    bn = norms.BatchNorm(momentum=0.0, use_running_average=False, unbiased_running_var=True)
    _, s = bn.apply(bn.init(KEY, x), x, mutable=['batch_stats'])
    np.testing.assert_allclose(s['batch_stats']['var'], np.var(x, 0, ddof=1), rtol=1e-5)
    assert norms.momentum_from_pytorch(0.1) == pytest.approx(0.9)


def test_group_norm_special_cases():
    x = rand((3, 4, 4, 6))
    v = norms.GroupNorm(num_groups=1).init(KEY, x)
    gn1 = norms.GroupNorm(num_groups=1).apply(v, x)
    ln = norms.LayerNorm(reduction_axes=None, epsilon=1e-6).apply(v, x)
    np.testing.assert_allclose(gn1, ln, atol=1e-5)
    gn_c = norms.GroupNorm(num_groups=None, group_size=1).apply(v, x)
    inorm = norms.InstanceNorm().apply(v, x)
    np.testing.assert_allclose(gn_c, inorm, atol=1e-5)


@pytest.mark.parametrize('single_pass', [True, 'always'], ids=['cpu', 'fused'])
def test_group_norm_mask_gives_statistics_of_real_positions(single_pass):
    # Padded sequences: each example's statistics pool only its real positions.
    x = rand((2, 5, 6), loc=2.0)
    mask = jnp.arange(5)[None, :, None] < 3
    gn = norms.GroupNorm(num_groups=3, use_fast_variance=single_pass)
    v = jax.tree_util.tree_map_with_path(_perturb, gn.init(KEY, x))
    y = gn.apply(v, x, mask=mask)
    np.testing.assert_allclose(y[:, :3], gn.apply(v, x[:, :3]), atol=1e-5)
    np.testing.assert_allclose(y[:, :3], nn.GroupNorm(num_groups=3).apply(v, x[:, :3]), atol=1e-5)


def test_virtual_batch_equal_to_batch_is_plain_bn_and_ghost_batches_split():
    x = rand((8, 2, 2, 3))
    plain = norms.BatchNorm(use_running_average=False)
    v = plain.init(KEY, x)
    y, s = plain.apply(v, x, mutable=['batch_stats'])
    y8, s8 = norms.BatchNorm(use_running_average=False, virtual_batch_size=8).apply(
        v, x, mutable=['batch_stats']
    )
    np.testing.assert_allclose(y, y8, atol=1e-6)
    y2, s2 = norms.BatchNorm(use_running_average=False, virtual_batch_size=2).apply(
        v, x, mutable=['batch_stats']
    )
    chunks = [plain.apply(v, x[i : i + 2], mutable=['batch_stats']) for i in range(0, 8, 2)]
    np.testing.assert_allclose(y2, jnp.concatenate([c[0] for c in chunks]), atol=1e-5)
    mean = np.mean([c[1]['batch_stats']['mean'] for c in chunks], 0)
    np.testing.assert_allclose(s2['batch_stats']['mean'], mean, atol=1e-6)


def test_mask_gives_statistics_of_real_examples():
    x = rand((6, 4))
    mask = jnp.array([1, 1, 1, 1, 0, 0], bool)[:, None]
    bn = norms.BatchNorm(use_running_average=False, momentum=0.0)
    v = bn.init(KEY, x)
    y, s = bn.apply(v, x, mask=mask, mutable=['batch_stats'])
    y4, s4 = bn.apply(v, x[:4], mutable=['batch_stats'])
    np.testing.assert_allclose(y[:4], y4, atol=1e-5)
    np.testing.assert_allclose(s['batch_stats']['var'], s4['batch_stats']['var'], rtol=1e-5)


def test_eval_with_batch_statistics_leaves_batch_stats_alone():
    x = rand((8, 3))
    v = norms.BatchNorm(use_running_average=False).init(KEY, x)
    y_train, _ = norms.BatchNorm(use_running_average=False).apply(v, x, mutable=['batch_stats'])
    # No mutable collection needed, and nothing to update.
    y = norms.BatchNorm(use_running_average=False, update_stats=False).apply(v, x)
    np.testing.assert_allclose(y, y_train, atol=1e-6)


@pytest.mark.parametrize('single_pass', [True, False, 'always'])
@pytest.mark.parametrize('offset', [1e4, 1e5])
def test_large_offset_variance_against_float64(single_pass, offset):
    x = np.random.default_rng(0).normal(size=(256, 4)) + offset
    ref_var = x.var(0)
    ref_y = (x - x.mean(0)) / np.sqrt(ref_var + 1e-5)
    x32 = jnp.asarray(x, jnp.float32)
    bn = norms.BatchNorm(use_running_average=False, use_fast_variance=single_pass, momentum=0.0)
    y, s = bn.apply(bn.init(KEY, x32), x32, mutable=['batch_stats'])
    # float32 rounding of the inputs themselves limits what is reachable.
    x32_var = np.asarray(x32, np.float64).var(0)
    np.testing.assert_allclose(s['batch_stats']['var'], x32_var, rtol=1e-3)
    assert np.max(np.abs(np.asarray(y) - ref_y)) < 0.05
    # flax's E[x^2] - E[x]^2 loses the variance entirely here.
    fv = nn.BatchNorm(use_running_average=False, momentum=0.0)
    _, fs = fv.apply(fv.init(KEY, x32), x32, mutable=['batch_stats'])
    assert np.max(np.abs(fs['batch_stats']['var'] - ref_var) / ref_var) > 0.1


def test_layer_norm_large_offset():
    x = np.random.default_rng(1).normal(size=(4, 512)) * 0.1 + 1e4
    y = norms.LayerNorm(use_scale=False, use_bias=False).apply({}, jnp.float32(x))
    ref = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
    assert np.max(np.abs(np.asarray(y) - ref)) < 0.2
    np.testing.assert_allclose(np.std(y, -1), 1.0, atol=2e-2)


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


def test_no_recompilation_on_second_call():
    traces = []
    bn = norms.BatchNorm(use_running_average=False)
    x = rand((8, 4))
    v = bn.init(KEY, x)

    @jax.jit
    def step(v, x):
        traces.append(1)
        return bn.apply(v, x, mutable=['batch_stats'])

    step(v, x)
    step(v, x + 1)
    assert len(traces) == 1


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


@pytest.mark.skipif(len(jax.devices()) < 4, reason='needs 4 simulated devices')
def test_cross_device_bn_equals_bn_on_concatenated_batch():
    x = rand((16, 3, 3, 4), loc=100.0)
    local = norms.BatchNorm(use_running_average=False, momentum=0.5)
    v = jax.tree_util.tree_map_with_path(_perturb, local.init(KEY, x))
    y_ref, s_ref = local.apply(v, x, mutable=['batch_stats'])
    y, s = sharded_bn(local.clone(axis_name='data'), v, x)
    np.testing.assert_allclose(y, y_ref, atol=1e-4)
    np.testing.assert_allclose(s['batch_stats']['var'], s_ref['batch_stats']['var'], rtol=1e-4)

    def loss_ref(params, x):
        return jnp.sum(jnp.sin(local.apply({**v, 'params': params}, x, mutable=True)[0]))

    def loss_sharded(params, x):
        def f(params, x):
            y, _ = local.clone(axis_name='data').apply(
                {**v, 'params': params}, x, mutable=['batch_stats']
            )
            return jax.lax.psum(jnp.sum(jnp.sin(y)), 'data')

        return jax.shard_map(f, mesh=mesh4(), in_specs=(P(), P('data')), out_specs=P())(params, x)

    g_ref = jax.grad(loss_ref, argnums=(0, 1))(v['params'], x)
    g = jax.jit(jax.grad(loss_sharded, argnums=(0, 1)))(v['params'], x)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-3)


@pytest.mark.skipif(len(jax.devices()) < 4, reason='needs 4 simulated devices')
def test_device_groups_equal_bn_on_each_groups_examples():
    x = rand((16, 5))  # 4 per device; groups of 2 devices = 8 examples
    bn = norms.BatchNorm(use_running_average=False, momentum=0.0)
    v = bn.init(KEY, x)
    y, s = sharded_bn(bn.clone(axis_name='data', virtual_batch_size=8), v, x, None, True)
    for g in range(2):
        y_g, s_g = bn.apply(v, x[8 * g : 8 * g + 8], mutable=['batch_stats'])
        np.testing.assert_allclose(y[8 * g : 8 * g + 8], y_g, atol=1e-5)
        for d in (2 * g, 2 * g + 1):
            np.testing.assert_allclose(s['batch_stats']['var'][d], s_g['batch_stats']['var'], 1e-5)
    # Per-device statistics: virtual_batch_size == local batch.
    y, _ = sharded_bn(bn.clone(axis_name='data', virtual_batch_size=4), v, x, None, True)
    y_d, _ = bn.apply(v, x[4:8], mutable=['batch_stats'])
    np.testing.assert_allclose(y[4:8], y_d, atol=1e-5)


@pytest.mark.skipif(len(jax.devices()) < 4, reason='needs 4 simulated devices')
def test_uneven_masked_shards_pool_real_examples():
    x = rand((16, 3))
    keep = np.ones(16, bool)
    keep[[1, 2, 3, 9]] = False  # devices hold 1, 4, 3 and 4 real examples
    bn = norms.BatchNorm(use_running_average=False, momentum=0.0)
    v = bn.init(KEY, x)
    _, s = sharded_bn(bn.clone(axis_name='data'), v, x, jnp.asarray(keep)[:, None])
    np.testing.assert_allclose(s['batch_stats']['mean'], x[keep].mean(0), atol=1e-5)
    np.testing.assert_allclose(s['batch_stats']['var'], x[keep].var(0), rtol=1e-4)


def test_precise_bn_averages_batch_statistics():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            x = nn.Dense(4)(x)
            return norms.BatchNorm(use_running_average=not train)(x)

    model = Net()
    batches = [rand((8, 3), seed=s, loc=s) for s in range(5)]
    v = model.init(KEY, batches[0], train=False)
    stats = norms.recompute_batch_stats(model, v, batches, train=True)
    h = [nn.Dense(4).apply({'params': v['params']['Dense_0']}, b) for b in batches]
    np.testing.assert_allclose(
        stats['BatchNorm_0']['mean'], np.mean([a.mean(0) for a in h], 0), rtol=1e-5
    )
    np.testing.assert_allclose(
        stats['BatchNorm_0']['var'], np.mean([a.var(0) for a in h], 0), rtol=1e-5
    )
    assert jax.tree.all(jax.tree.map(lambda a, b: a.shape == b.shape, stats, v['batch_stats']))


def test_batch_renorm_reduces_to_bn_and_to_inference_output():
    x = rand((8, 3), loc=2.0)
    state = {'mean': jnp.array([0.5, 1.0, -1.0]), 'var': jnp.array([2.0, 0.5, 1.0])}
    rn = norms.BatchRenorm(use_running_average=False, r_max=1.0, d_max=0.0)
    v = rn.init(KEY, x)
    v = {**v, 'batch_stats': state}
    y_rn, s = rn.apply(v, x, mutable=True)
    y_bn, _ = norms.BatchNorm(use_running_average=False).apply(v, x, mutable=True)
    np.testing.assert_allclose(y_rn, y_bn, atol=1e-5)
    assert int(s['norm_steps']['steps']) == 1
    # Unclipped, training outputs equal inference outputs (Ioffe 2017, eq. 2).
    free = rn.clone(r_max=1e6, d_max=1e6)
    y_free, _ = free.apply(v, x, mutable=True)
    y_inf = free.clone(use_running_average=True).apply(v, x)
    np.testing.assert_allclose(y_free, y_inf, atol=1e-4)
    ramp = rn.clone(r_max=3.0, d_max=5.0, ramp_steps=10)
    r, d = ramp.clip_limits(jnp.int32(5))
    assert float(r) == pytest.approx(2.0) and float(d) == pytest.approx(2.5)


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
    v = jax.tree_util.tree_map_with_path(_perturb, module.init(KEY, x))

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
    v = jax.tree_util.tree_map_with_path(_perturb, b0.init(KEY, x))
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


def test_weight_standardized_conv():
    x = rand((2, 6, 6, 3))
    for scaled in (False, True):
        conv = norms.WeightStandardizedConv(4, (3, 3), scaled=scaled)
        v = conv.init(KEY, x)
        assert set(v['params']) == ({'kernel', 'bias', 'gain'} if scaled else {'kernel', 'bias'})
        k = norms.standardize_kernel(
            v['params']['kernel'],
            epsilon=1e-4,
            scaled=scaled,
            gain=v['params'].get('gain'),
        )
        ref = nn.Conv(4, (3, 3)).apply({'params': {**v['params'], 'kernel': k}}, x)
        np.testing.assert_allclose(conv.apply(v, x), ref, atol=1e-5)
        fan_in = 27 if scaled else 1
        np.testing.assert_allclose(np.var(k, axis=(0, 1, 2)) * fan_in, 1.0, rtol=1e-2)


def test_spectral_norm_state_is_not_batch_stats():
    sn = norms.SpectralNorm(nn.Dense(5))
    x = rand((3, 4))
    v = sn.init(KEY, x, update_stats=True)
    assert set(v) == {'params', norms.SPECTRAL_STATS}
    _, s = sn.apply(v, x, update_stats=True, mutable=[norms.SPECTRAL_STATS])
    w = norms.WeightNorm(nn.Dense(5))
    assert set(w.init(KEY, x)) == {'params'}


BAD = [
    (lambda: norms.GroupNorm(num_groups=4).init(KEY, rand((2, 6))), ['num_groups=4', '6']),
    (
        lambda: norms.GroupNorm(num_groups=None, group_size=4).init(KEY, rand((2, 6))),
        ['group_size=4', '6'],
    ),
    (
        lambda: norms.EvoNormS0(num_groups=4).init(KEY, rand((2, 3, 3, 6))),
        ['EvoNormS0', 'num_groups=4', 'valid num_groups: [1, 2, 3, 6]'],
    ),
    (lambda: norms.EvoNormS0(num_groups=0), ['EvoNormS0', 'num_groups=0', 'positive int']),
    (lambda: norms.BatchNorm(epsilon=0.0), ['epsilon=0.0']),
    (lambda: norms.LayerNorm(epsilon=-1.0), ['epsilon=-1.0']),
    (lambda: norms.BatchNorm(momentum=1.0), ['momentum=1.0', '[0, 1)']),
    (lambda: norms.BatchNorm(momentum=-0.1), ['momentum=-0.1']),
    (
        lambda: norms.BatchNorm(axis=3, use_running_average=True).init(KEY, rand((2, 3))),
        ['axis', '3', '-2..1'],
    ),
    (lambda: norms.LayerNorm(reduction_axes=(5,)).init(KEY, rand((2, 3))), ['5']),
    (lambda: norms.make_norm('batchnorm'), ['batchnorm', 'batch_norm', 'group_norm']),
    (lambda: norms.make_norm('group_norm', groups=4), ['groups', 'num_groups']),
    (lambda: norms.BatchNorm(virtual_batch_size=0), ['virtual_batch_size=0']),
    (
        lambda: norms.BatchNorm(use_running_average=False, virtual_batch_size=3).apply(
            norms.BatchNorm().init(KEY, rand((8, 2)), use_running_average=True),
            rand((8, 2)),
            mutable=['batch_stats'],
        ),
        ['virtual_batch_size=3', '8'],
    ),
    (
        lambda: norms.BatchNorm(use_running_average=False, axis_name='data').apply(
            norms.BatchNorm().init(KEY, rand((8, 2)), use_running_average=True),
            rand((8, 2)),
            mutable=['batch_stats'],
        ),
        ["'data'", 'shard_map'],
    ),
    (
        lambda: norms.BatchNorm(use_running_average=False, virtual_batch_size=16).apply(
            norms.BatchNorm().init(KEY, rand((8, 2)), use_running_average=True),
            rand((8, 2)),
            mutable=['batch_stats'],
        ),
        ['virtual_batch_size=16', 'axis_name'],
    ),
]


@pytest.mark.parametrize('fn,words', BAD)
def test_bad_input_raises_clear_value_error(fn, words):
    with pytest.raises(ValueError) as e:
        fn()
    for w in words:
        assert w in str(e.value), (w, str(e.value))


@pytest.mark.skipif(len(jax.devices()) < 4, reason='needs 4 simulated devices')
@pytest.mark.parametrize(
    'k,words',
    [(12, ['virtual_batch_size=12', '4']), (24, ['virtual_batch_size=24', 'global batch of 16'])],
)
def test_virtual_batch_that_does_not_fit_the_devices(k, words):
    x = rand((16, 3))  # 4 per device
    bn = norms.BatchNorm(use_running_average=False)
    v = bn.init(KEY, x)
    with pytest.raises(ValueError) as e:
        sharded_bn(bn.clone(axis_name='data', virtual_batch_size=k), v, x)
    for w in words:
        assert w in str(e.value)


def test_functional_moments_match_numpy():
    x = rand((5, 7, 3))
    m = F.moments(x, (0, 1))
    np.testing.assert_allclose(m.mean[0, 0], np.mean(x, (0, 1)), rtol=1e-5)
    np.testing.assert_allclose(m.var[0, 0], np.var(x, (0, 1)), rtol=1e-5)
    assert float(m.count) == 35


# (input shape, statistic axes, parameter shape, feature groups): BN, ghost BN, IN,
# per-token LN, GN's grouped view, GN in the input's layout, LN over (H, W, C).
DERIVATIVE_LAYOUTS = [
    ((8, 3, 3, 5), (0, 1, 2), (1, 1, 1, 5), None),
    ((2, 4, 3, 3, 5), (1, 2, 3), (1, 1, 1, 1, 5), None),
    ((4, 3, 3, 5), (1, 2), (1, 1, 1, 5), None),
    ((4, 3, 7), (2,), (1, 1, 7), None),
    ((4, 2, 2, 3, 2), (1, 2, 4), (1, 1, 1, 3, 2), None),
    ((4, 3, 3, 6), (1, 2), (1, 1, 1, 6), 3),
    ((4, 3, 3, 6), (1, 2, 3), (1, 1, 1, 6), None),
]


@pytest.mark.parametrize('single_pass', [True, 'always'], ids=['cpu', 'fused'])
@pytest.mark.parametrize('masked', [False, True], ids=['all', 'masked'])
@pytest.mark.parametrize('use_mean', [True, False], ids=['var', 'rms'])
@pytest.mark.parametrize(
    'layout', DERIVATIVE_LAYOUTS, ids=['bn', 'ghost', 'in', 'ln', 'gn', 'gn_layout', 'hwc']
)
def test_hand_written_derivatives_match_the_textbook_formula(layout, use_mean, masked, single_pass):
    """`moments` + `normalize` (closed-form JVP, transposed for the backward) against
    autodiff of the two-pass textbook formula: gradients (including through the
    statistics themselves), forward mode and second order; with CPU's two passes
    and with the fused single pass other backends use."""
    shape, axes, pshape, groups = layout
    x, scale, bias = rand(shape, loc=3.0), rand(pshape, seed=1, loc=1.0), rand(pshape, seed=2)
    keep = np.random.default_rng(3).random(shape[:-1] + (1,)) > 0.3 if masked else None
    stat = tuple(1 if i in axes else n for i, n in enumerate(shape))
    wy, wm, wv = rand(shape, seed=4), rand(stat, seed=5), rand(stat, seed=6)

    def ours(x, scale, bias):
        m = F.moments(
            x, axes, mask=keep, use_mean=use_mean, single_pass=single_pass, feature_groups=groups
        )
        mean = m.mean if use_mean else 0.0
        return F.normalize(x, mean, m.var, epsilon=1e-3, scale=scale, bias=bias), m

    def textbook(x, scale, bias):
        w = jnp.ones(shape) if keep is None else jnp.broadcast_to(jnp.asarray(keep, x.dtype), shape)

        # Feature groups: sum over each group's features too, then broadcast back.
        def total(v):
            if not groups:
                return jnp.sum(v, axes, keepdims=True)
            split = shape[:-1] + (groups, shape[-1] // groups)
            s = jnp.sum(v.reshape(split), axes + (len(shape),), keepdims=True)
            return jnp.broadcast_to(s, s.shape[:-1] + split[-1:]).reshape(stat)

        count = jnp.maximum(total(w), 1.0)
        mean = total(w * x) / count if use_mean else jnp.zeros(stat)
        var = total(w * (x - mean) ** 2) / count
        y = (x - mean) / jnp.sqrt(var + 1e-3) * scale + bias
        return y, F.Moments(mean, var, count)

    def loss(fn):
        def f(x, scale, bias):
            y, m = fn(x, scale, bias)
            return jnp.sum(jnp.sin(y) * wy) + jnp.sum(m.mean * wm) + jnp.sum(m.var * wv)

        return f

    def close(a, b):
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(u, v, rtol=2e-4, atol=2e-4 * float(jnp.max(jnp.abs(v))))

    args = (x, scale, bias)
    close(
        jax.grad(loss(ours), argnums=(0, 1, 2))(*args), jax.grad(loss(textbook), (0, 1, 2))(*args)
    )
    tangents = (rand(shape, seed=7), rand(pshape, seed=8), rand(pshape, seed=9))
    close(jax.jvp(ours, args, tangents), jax.jvp(textbook, args, tangents))

    def grad_norm(fn):
        return lambda x: jnp.sum(jax.grad(loss(fn))(x, scale, bias) ** 2)

    close(jax.grad(grad_norm(ours))(x), jax.grad(grad_norm(textbook))(x))
