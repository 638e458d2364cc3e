"""BatchNorm, ghost batches, cross-device statistics and Batch Renorm."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from normlab import norms
from tests.norm_cases import KEY, mesh4, perturb, rand, sharded_bn


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


@pytest.mark.skipif(len(jax.devices()) < 4, reason='needs 4 simulated devices')
def test_cross_device_bn_equals_bn_on_concatenated_batch():
    x = rand((16, 3, 3, 4), loc=100.0)
    local = norms.BatchNorm(use_running_average=False, momentum=0.5)
    v = jax.tree_util.tree_map_with_path(perturb, local.init(KEY, x))
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


def test_batch_renorm_reduces_to_bn_and_to_inference_output():
    x = rand((8, 3), loc=2.0)
    state = {'mean': jnp.array([0.5, 1.0, -1.0]), 'var': jnp.array([2.0, 0.5, 1.0])}
    rn = norms.BatchRenorm(use_running_average=False, r_max=1.0, d_max=0.0)
    v = rn.init(KEY, x)
    v = {**v, 'batch_stats': state}
    y_rn, s = rn.apply(v, x, mutable=True)
    y_bn, _ = norms.BatchNorm(use_running_average=False).apply(v, x, mutable=True)
    np.testing.assert_allclose(y_rn, y_bn, atol=1e-5)
    assert set(s['batch_stats']) == {'mean', 'var'}  # no ramp, no step counter
    # Unclipped, training outputs equal inference outputs (Ioffe 2017, eq. 2).
    free = rn.clone(r_max=1e6, d_max=1e6)
    y_free, _ = free.apply(v, x, mutable=True)
    y_inf = free.clone(use_running_average=True).apply(v, x)
    np.testing.assert_allclose(y_free, y_inf, atol=1e-4)
    ramp = rn.clone(r_max=3.0, d_max=5.0, ramp_steps=10)
    r, d = ramp.clip_limits(jnp.int32(5))
    assert float(r) == pytest.approx(2.0) and float(d) == pytest.approx(2.5)


@pytest.mark.parametrize('ramp_steps', [0, 3])
def test_batch_renorm_trains_in_a_flax_loop_with_mutable_batch_stats(ramp_steps):
    # flax's convention: apply with mutable=['batch_stats'] and nothing else.
    x = rand((8, 3), loc=2.0)
    rn = norms.BatchRenorm(use_running_average=False, ramp_steps=ramp_steps, momentum=0.5)
    v = rn.init(KEY, x)
    assert set(v) == {'params', 'batch_stats'}
    limits = []
    for _ in range(5):
        _, updates = rn.apply(v, x, mutable=['batch_stats'])
        v = {**v, **updates}
        if ramp_steps:
            limits.append(rn.clip_limits(v['batch_stats']['steps']))
    assert not np.allclose(v['batch_stats']['mean'], 0.0)
    if ramp_steps:
        # The ramp's counter advances with the statistics and stops at ramp_steps.
        assert float(v['batch_stats']['steps']) == 3.0
        assert [float(r) for r, _ in limits] == pytest.approx([5 / 3, 7 / 3, 3.0, 3.0, 3.0])
        # An evaluation with batch statistics does not advance it.
        _, s = rn.clone(update_stats=False).apply(
            {**v, 'batch_stats': {**v['batch_stats'], 'steps': jnp.float32(1)}},
            x,
            mutable=['batch_stats'],
        )
        assert float(s['batch_stats']['steps']) == 1.0
    else:
        assert set(v['batch_stats']) == {'mean', 'var'}


@pytest.mark.skipif(len(jax.devices()) < 4, reason='needs 4 simulated devices')
def test_batch_renorm_step_counter_survives_a_pmean_of_batch_stats():
    x = rand((16, 3), loc=2.0)
    rn = norms.BatchRenorm(use_running_average=False, ramp_steps=10, axis_name='data')
    v = rn.init(KEY, x)

    def step(v, x):
        _, s = rn.apply(v, x, mutable=['batch_stats'])
        return jax.lax.pmean(s['batch_stats'], 'data')  # what normlab's trainers do

    stats = jax.jit(jax.shard_map(step, mesh=mesh4(), in_specs=(P(), P('data')), out_specs=P()))(
        v, x
    )
    assert float(stats['steps']) == 1.0
