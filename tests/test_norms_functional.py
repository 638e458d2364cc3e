"""The functional core: moments and normalize against numpy and the textbook formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab.norms import functional as F
from tests.norm_cases import rand


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

        count = total(w)  # 0 for a statistic without a real element
        n = jnp.maximum(count, 1.0)
        mean = total(w * x) / n if use_mean else jnp.zeros(stat)
        var = total(w * (x - mean) ** 2) / n
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


@pytest.mark.parametrize('single_pass', [True, False, 'always'], ids=['cpu', 'two_pass', 'fused'])
@pytest.mark.parametrize('use_mean', [True, False], ids=['var', 'rms'])
@pytest.mark.parametrize(
    'layout', [DERIVATIVE_LAYOUTS[i] for i in (0, 1, 3, 5)], ids=['bn', 'ghost', 'ln', 'gn']
)
def test_masked_nan_reaches_no_derivative_of_any_order(layout, use_mean, single_pass):
    """NaN padding (in the input and in its tangent) against zero padding: the same
    gradients, forward-mode derivatives and second derivatives, all finite."""
    shape, axes, pshape, groups = layout
    x, scale, bias = rand(shape, loc=3.0), rand(pshape, seed=1, loc=1.0), rand(pshape, seed=2)
    keep = np.random.default_rng(3).random(shape[:-1] + (1,)) > 0.3
    stat = tuple(1 if i in axes else n for i, n in enumerate(shape))
    wy, wm, wv = rand(shape, seed=4), rand(stat, seed=5), rand(stat, seed=6)

    def loss(x, scale, bias):
        m = F.moments(
            x, axes, mask=keep, use_mean=use_mean, single_pass=single_pass, feature_groups=groups
        )
        y = F.normalize(x, m.mean, m.var, epsilon=1e-3, scale=scale, bias=bias, mask=keep)
        real = jnp.sum(jnp.where(keep, jnp.sin(y) * wy, 0.0))
        return real + jnp.sum(m.mean * wm) + jnp.sum(m.var * wv)

    def derivatives(fill):
        xf = jnp.where(keep, x, fill)
        t = jnp.where(keep, rand(shape, seed=7), fill)
        grads = jax.grad(loss, (0, 1, 2))(xf, scale, bias)
        tangent = jax.jvp(loss, (xf, scale, bias), (t, rand(pshape, seed=8), rand(pshape)))[1]
        second = jax.grad(lambda x: jnp.sum(jax.grad(loss)(x, scale, bias) ** 2))(xf)
        return grads, tangent, second

    ref = derivatives(0.0)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(ref))
    for a, b in zip(jax.tree.leaves(derivatives(jnp.nan)), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(a, b)
