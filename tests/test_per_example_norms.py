"""Layer, Group, Instance and RMS normalization beyond flax parity."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab import norms
from tests.norm_cases import KEY, perturb, rand


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
    v = jax.tree_util.tree_map_with_path(perturb, gn.init(KEY, x))
    y = gn.apply(v, x, mask=mask)
    np.testing.assert_allclose(y[:, :3], gn.apply(v, x[:, :3]), atol=1e-5)
    np.testing.assert_allclose(y[:, :3], nn.GroupNorm(num_groups=3).apply(v, x[:, :3]), atol=1e-5)


def test_layer_norm_large_offset():
    x = np.random.default_rng(1).normal(size=(4, 512)) * 0.1 + 1e4
    y = norms.LayerNorm(use_scale=False, use_bias=False).apply({}, jnp.float32(x))
    ref = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
    assert np.max(np.abs(np.asarray(y) - ref)) < 0.2
    np.testing.assert_allclose(np.std(y, -1), 1.0, atol=2e-2)
