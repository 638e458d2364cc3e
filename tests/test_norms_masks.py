"""Masked positions may hold anything: NaN, inf or huge padding reaches no statistic,
no output at a real position and no gradient, on every path of every norm."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from normlab import norms
from tests.norm_cases import KEY, mesh4, perturbed, rand

# What padding may hold; the first is the clean reference.
FILLS = (0.0, jnp.nan, jnp.inf, -1e30)
EXAMPLES = np.array([1, 1, 0, 1, 0, 1], bool)  # examples 2 and 4 are padding
SHAPE = (6, 3, 3, 8)

# Every registered norm with its registry defaults, and the paths the defaults miss.
CASES = {name: norms.make_norm(name) for name in norms.NORMS} | {
    'bn_two_pass': functools.partial(norms.BatchNorm, use_fast_variance=False),
    'bn_fused': functools.partial(norms.BatchNorm, use_fast_variance='always'),
    'bn_ghost': functools.partial(norms.BatchNorm, virtual_batch_size=3),
    'bn_axis1': functools.partial(norms.BatchNorm, axis=1),
    'renorm_ramp': functools.partial(norms.BatchRenorm, ramp_steps=4, momentum=0.5),
    'gn_fused': functools.partial(norms.GroupNorm, num_groups=2, use_fast_variance='always'),
    'gn_two_pass': functools.partial(norms.GroupNorm, num_groups=4, use_fast_variance=False),
    'ln_fused': functools.partial(norms.LayerNorm, use_fast_variance='always'),
    'in_fused': functools.partial(norms.InstanceNorm, use_fast_variance='always'),
    'rms_fused': functools.partial(norms.RMSNorm, use_fast_variance='always'),
    'frn_learned_eps': functools.partial(norms.FilterResponseNorm, learnable_epsilon=True),
}


def _mask(kind):
    if kind == 'examples':
        return EXAMPLES[:, None, None, None]
    keep = np.random.default_rng(1).random(SHAPE[:3] + (1,)) > 0.4
    keep[:, 0, 0] = True  # every example keeps a real position
    return keep


def _outputs_and_grads(norm, v, keep, weights):
    """Jitted (x -> y, grads w.r.t. params and x, state) of a loss over real positions."""

    def loss(params, x):
        y, state = norm.apply({**v, 'params': params}, x, mask=keep, mutable=True)
        real = jnp.broadcast_to(keep, y.shape)
        state = {c: s for c, s in state.items() if c != 'params'}
        return jnp.sum(jnp.where(real, jnp.sin(y) * weights, 0.0)), (y, state)

    grad = jax.grad(loss, argnums=(0, 1), has_aux=True)
    return jax.jit(lambda x: grad(v.get('params', {}), x))


@pytest.mark.parametrize('kind', ['examples', 'positions'])
@pytest.mark.parametrize('case', sorted(CASES))
def test_masked_positions_reach_nothing(case, kind):
    norm = CASES[case](use_running_average=False)
    x = rand(SHAPE, loc=1.0)
    keep = _mask(kind)
    v = perturbed(norm, x, mask=keep)
    real = np.broadcast_to(keep, SHAPE)
    run = _outputs_and_grads(norm, v, keep, rand(SHAPE, seed=2))
    (g_ref, (y_ref, s_ref)) = run(jnp.where(keep, x, 0.0))
    for leaf in jax.tree.leaves((g_ref, y_ref[real], s_ref)):
        assert np.isfinite(leaf).all(), case
    np.testing.assert_array_equal(g_ref[1][~real], 0.0)  # padding gets no gradient
    for fill in FILLS[1:]:
        g, (y, s) = run(jnp.where(keep, x, fill))
        np.testing.assert_array_equal(y[real], y_ref[real])
        for a, b in zip(jax.tree.leaves((g, s)), jax.tree.leaves((g_ref, s_ref)), strict=True):
            np.testing.assert_array_equal(a, b)
    if kind == 'examples' and case != 'bn_ghost':
        # The real examples are normalized (and tracked) as if alone in the batch.
        y_alone, s_alone = norm.apply(v, x[EXAMPLES], mutable=True)
        np.testing.assert_allclose(y_ref[EXAMPLES], y_alone, rtol=1e-5, atol=1e-5)
        for c in s_ref:
            for a, b in zip(jax.tree.leaves(s_ref[c]), jax.tree.leaves(s_alone[c]), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    'factory',
    [norms.BatchNorm, functools.partial(norms.BatchNorm, virtual_batch_size=3)],
    ids=['batch', 'ghost_batch'],
)
def test_a_batch_of_padding_leaves_the_running_statistics_alone(factory):
    x = rand((6, 4), loc=3.0)
    bn = factory(use_running_average=False, momentum=0.5)
    v = bn.init(KEY, x)
    keep = np.array([1, 1, 1, 0, 0, 0], bool)[:, None]
    _, s = bn.apply(v, jnp.where(keep, x, jnp.nan), mask=keep, mutable=['batch_stats'])
    # Ghost batches: the all-padding second group does not pull the average to 0.
    _, s_real = bn.clone(virtual_batch_size=None).apply(v, x[:3], mutable=['batch_stats'])
    for k in ('mean', 'var'):
        np.testing.assert_allclose(s['batch_stats'][k], s_real['batch_stats'][k], rtol=1e-5)
    _, s = bn.apply(v, jnp.full_like(x, jnp.nan), mask=np.zeros((6, 1), bool), mutable=True)
    for k in ('mean', 'var'):
        np.testing.assert_array_equal(s['batch_stats'][k], v['batch_stats'][k])


CROSS_DEVICE = {
    'bn': functools.partial(norms.BatchNorm, momentum=0.5),
    'bn_two_pass': functools.partial(norms.BatchNorm, momentum=0.5, use_fast_variance=False),
    'bn_fused': functools.partial(norms.BatchNorm, momentum=0.5, use_fast_variance='always'),
    'bn_device_groups': functools.partial(norms.BatchNorm, momentum=0.5, virtual_batch_size=8),
    'renorm': functools.partial(norms.BatchRenorm, momentum=0.5, ramp_steps=4),
    'evonorm_b0': functools.partial(norms.EvoNormB0, momentum=0.5),
}


@pytest.mark.skipif(len(jax.devices()) < 4, reason='needs 4 simulated devices')
@pytest.mark.parametrize('case', sorted(CROSS_DEVICE))
def test_masked_positions_reach_nothing_across_devices(case):
    x = rand((16, 2, 2, 3), loc=2.0)
    keep_rows = np.ones(16, bool)
    keep_rows[[1, 4, 5, 6, 7, 14]] = False  # device 1 holds padding only
    keep = keep_rows[:, None, None, None]
    local = CROSS_DEVICE[case](use_running_average=False)
    norm = local.clone(axis_name='data')
    v = perturbed(local, x)
    w = rand(x.shape, seed=3)

    def step(params, x, keep, w):
        def loss(params, x):
            y, s = norm.apply({**v, 'params': params}, x, mask=keep, mutable=['batch_stats'])
            real = jnp.broadcast_to(keep, y.shape)
            return jax.lax.psum(jnp.sum(jnp.where(real, jnp.sin(y) * w, 0.0)), 'data'), (y, s)

        (g_params, g_x), (y, s) = jax.grad(loss, (0, 1), has_aux=True)(params, x)
        # Per-device statistics (device groups) are stacked to compare them all.
        s = jax.tree.map(lambda a: a[None], s)
        return jax.lax.psum(g_params, 'data'), g_x, y, s

    specs = dict(in_specs=(P(), P('data'), P('data'), P('data')), out_specs=(P(), *[P('data')] * 3))
    run = jax.jit(jax.shard_map(step, mesh=mesh4(), **specs))
    ref = run(v['params'], jnp.where(keep, x, 0.0), keep, w)
    real = np.broadcast_to(keep, x.shape)
    for leaf in jax.tree.leaves((ref[0], ref[1], ref[2][real], ref[3])):
        assert np.isfinite(leaf).all()
    np.testing.assert_array_equal(ref[1][~real], 0.0)
    for fill in FILLS[1:]:
        out = run(v['params'], jnp.where(keep, x, fill), keep, w)
        np.testing.assert_array_equal(out[2][real], ref[2][real])
        for a, b in zip(
            jax.tree.leaves((out[0], out[1], out[3])),
            jax.tree.leaves((ref[0], ref[1], ref[3])),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)
    if case != 'bn_device_groups':
        # Pooled over devices: the statistics of the real examples of the global batch.
        y_alone, s_alone = local.apply(v, x[keep_rows], mutable=['batch_stats'])
        np.testing.assert_allclose(ref[2][keep_rows], y_alone, rtol=1e-4, atol=1e-4)
        for a, b in zip(
            jax.tree.leaves(ref[3]['batch_stats']),
            jax.tree.leaves(s_alone['batch_stats']),
            strict=True,
        ):
            np.testing.assert_allclose(a, np.broadcast_to(b, a.shape), rtol=1e-4, atol=1e-5)


def _full_size_selects(jaxpr, shape):
    """`select_n` (jnp.where) equations with a full-size output, in every sub-jaxpr."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == 'select_n' and eqn.outvars[0].aval.shape == shape:
            count += 1
        for sub in jax.core.jaxprs_in_params(eqn.params):
            count += _full_size_selects(sub, shape)
    return count


# The TLU's derivative masks dy once (`response_norms.tlu`): FRN and EvoNorm-B0.
TLU_SELECTS = {'frn': 1, 'evonorm_b0': 1}


@pytest.mark.parametrize('name', sorted(norms.NORMS))
def test_without_a_mask_no_where_is_emitted(name):
    """The unmasked path pays nothing for masks: no full-size `where`, forward or backward."""
    x = rand((4, 3, 3, 8))
    norm = norms.make_norm(name)(use_running_average=False)
    v = norm.init(KEY, x)

    def train(params, x, mask=None):
        def loss(params, x):
            y, _ = norm.apply({**v, 'params': params}, x, mask=mask, mutable=True)
            return jnp.sum(jnp.sin(y))

        return jax.grad(loss, (0, 1))(params, x)

    params = v.get('params', {})
    selects = _full_size_selects(jax.make_jaxpr(train)(params, x).jaxpr, x.shape)
    assert selects == TLU_SELECTS.get(name, 0)
    mask = np.ones((4, 1, 1, 1), bool)
    assert _full_size_selects(jax.make_jaxpr(train)(params, x, mask).jaxpr, x.shape) > selects
