"""make_norm: every registered norm, its options and clear errors for bad input."""

import jax
import jax.numpy as jnp
import pytest

from normlab import norms
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
