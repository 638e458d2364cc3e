"""make_norm: every registered norm, its options and clear errors for bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab import models, norms
from tests.norm_cases import KEY, rand


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


def _zoo_input(name):
    """The smallest input each model takes (the ImageNet stem needs 32 x 32, the
    published ViTs 16 x 16)."""
    if name == 'dcgan_generator':
        return (2, 100)
    if name in ('cnn', 'mlp'):
        return (2, 8, 8, 1)
    if name.endswith(('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152')):
        return (1, 32, 32, 3)
    if name.startswith('vit_'):  # patch 16: two patches a side
        return (1, 32, 32, 3)
    return (2, 8, 8, 3)


def _zoo_model(model_name, norm_name):
    """The model with its default widths and one block per stage: every norm site
    (stem, each stage's blocks and shortcuts, the head) at its default channel count.
    Depth variants (resnet34/101/152, ...) differ only in blocks per stage."""
    kwargs = {}
    stage_sizes = getattr(models.MODELS[model_name], 'keywords', {}).get('stage_sizes')
    if stage_sizes is not None:
        kwargs['stage_sizes'] = (1,) * len(stage_sizes)
    num_classes = 0 if model_name.startswith('dcgan') else 10
    return models.create(
        model_name, num_classes=num_classes, norm=norms.make_norm(norm_name), **kwargs
    )


def _train_and_eval(model, x):
    v = model.init(jax.random.key(0), x)
    y, state = model.apply(v, x, train=True, mutable=[c for c in v if c != 'params'])
    return v, y, state, model.apply(v, x, train=False)


# Normalizer-free ResNets have no norm sites and take only make_norm('none').
ZOO = [
    (m, n)
    for m in sorted(models.MODELS)
    for n in sorted(norms.NORMS)
    if not m.startswith('nf_') or n == 'none'
]


@pytest.mark.parametrize('model_name,norm_name', ZOO, ids=[f'{m}-{n}' for m, n in ZOO])
def test_every_norm_drops_into_every_model_with_its_defaults(model_name, norm_name, zoo_cache):
    """Traced (`jax.eval_shape`): init, a training and an evaluation forward."""
    model = _zoo_model(model_name, norm_name)
    key = repr(model)  # depth variants reduce to the same network: trace it once
    if key not in zoo_cache:
        spec = jax.ShapeDtypeStruct(_zoo_input(model_name), jnp.float32)
        zoo_cache[key] = jax.eval_shape(functools.partial(_train_and_eval, model), spec)
    _, y, _, y_eval = zoo_cache[key]
    assert y.shape == y_eval.shape and y.dtype == jnp.float32


@pytest.fixture(scope='module')
def zoo_cache():
    return {}


# Compiled and run (each compile costs seconds, the traced test above covers every
# pair): the MLP with every norm, the CNN and resnet20 (16-channel first stage) with
# the norms whose defaults depend on the channel count.
SMALL = [('mlp', n) for n in sorted(norms.NORMS)] + [
    (m, n) for m in ('cnn', 'resnet20') for n in ('evonorm_s0', 'group_norm')
]


@pytest.mark.parametrize('model_name,norm_name', SMALL, ids=[f'{m}-{n}' for m, n in SMALL])
def test_every_norm_runs_in_small_models_with_its_defaults(model_name, norm_name):
    model = _zoo_model(model_name, norm_name)
    x = rand(_zoo_input(model_name))
    _, y, _, y_eval = jax.jit(functools.partial(_train_and_eval, model))(x)
    assert np.isfinite(y).all() and np.isfinite(y_eval).all()


@pytest.mark.parametrize(
    'channels,groups', [(16, 8), (32, 16), (64, 32), (2048, 32), (100, 25), (3, 1), (1, 1)]
)
def test_registry_group_norm_adapts_its_groups_to_the_channels(channels, groups):
    assert norms.make_norm('group_norm')().num_groups_for(channels) == groups
    x = rand((2, 2, 2, channels))
    s0 = norms.make_norm('evonorm_s0')()
    v = s0.init(KEY, x)
    np.testing.assert_array_equal(s0.apply(v, x), norms.EvoNormS0(num_groups=groups).apply(v, x))
    # Constructed directly, GroupNorm keeps flax's defaults: 32 groups or an error.
    assert norms.GroupNorm().num_groups_for(64) == 32
    with pytest.raises(ValueError, match='num_groups=32.*16 channels.*min_group_size'):
        norms.GroupNorm().num_groups_for(16)


def test_registry_group_norm_normalizes_over_its_adapted_groups():
    x = rand((2, 3, 3, 16))
    v = norms.GroupNorm(num_groups=8).init(KEY, x)
    np.testing.assert_array_equal(
        norms.make_norm('group_norm')().apply(v, x), norms.GroupNorm(num_groups=8).apply(v, x)
    )
    # A given num_groups or group_size is the caller's exact choice (configs rely on it).
    gs = norms.make_norm('group_norm', num_groups=None, group_size=4)()
    np.testing.assert_array_equal(gs.apply(v, x), norms.GroupNorm(num_groups=4).apply(v, x))
    assert norms.make_norm('group_norm', num_groups=16)().num_groups_for(16) == 16
    with pytest.raises(ValueError, match='num_groups=32'):
        norms.make_norm('group_norm', num_groups=32)().num_groups_for(16)
    assert norms.make_norm('group_norm', num_groups=16, min_group_size=2)().num_groups_for(16) == 8


@pytest.mark.parametrize('name', sorted(norms.NORMS))
def test_every_registered_norm_takes_a_mask(name):
    """Padding never needs faking: an all-True mask changes nothing."""
    x = rand((4, 3, 3, 8))
    norm = norms.make_norm(name)(use_running_average=False)
    v = norm.init(KEY, x)
    y, s = norm.apply(v, x, mutable=True)
    y_m, s_m = norm.apply(v, x, mask=np.ones((4, 1, 1, 1), bool), mutable=True)
    np.testing.assert_allclose(y_m, y, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(s_m), jax.tree.leaves(s), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', sorted(n for n in norms.NORMS if norms.is_stateful(n)))
def test_every_stateful_norm_trains_in_a_flax_loop(name):
    """flax's convention: apply with mutable=['batch_stats'] and nothing else."""
    x = rand((4, 3, 3, 8))
    for kw in ({}, {'ramp_steps': 2}) if name == 'batch_renorm' else ({},):
        norm = norms.make_norm(name, **kw)
        v = norm(use_running_average=False).init(KEY, x)
        assert set(v) == {'params', 'batch_stats'}
        _, updates = norm(use_running_average=False).apply(v, x, mutable=['batch_stats'])
        assert set(updates) == {'batch_stats'}
        norm(use_running_average=True).apply({**v, **updates}, x)
