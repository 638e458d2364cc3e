"""Dynamic Tanh: the formula (values and gradients), its parameters and its registry entry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab import norms
from normlab.norms import DynamicTanh, dynamic_tanh, is_stateful, make_norm


def _params(c, seed=1):
    ka, ks, kb = jax.random.split(jax.random.key(seed), 3)
    return {
        'alpha': jax.random.uniform(ka, (), minval=0.2, maxval=2.0),
        'scale': jax.random.normal(ks, (c,)),
        'bias': jax.random.normal(kb, (c,)),
    }


def test_values_and_gradients_match_the_formula():
    x = 3 * jax.random.normal(jax.random.key(0), (2, 5, 6))
    dy = jax.random.normal(jax.random.key(2), x.shape)
    params = _params(6)
    y, vjp = jax.vjp(lambda p, x: DynamicTanh().apply({'params': p}, x), params, x)
    a, s, b = (np.asarray(params[k], np.float64) for k in ('alpha', 'scale', 'bias'))
    x64, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    t = np.tanh(a * x64)
    np.testing.assert_allclose(y, s * t + b, rtol=1e-5, atol=1e-6)
    grads, dx = vjp(dy)
    sech2 = 1 - t**2  # d tanh(u) / du
    np.testing.assert_allclose(dx, dy * s * a * sech2, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads['alpha'], np.sum(dy * s * x64 * sech2), rtol=1e-4)
    np.testing.assert_allclose(grads['scale'], np.sum(dy * t, axis=(0, 1)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads['bias'], np.sum(dy, axis=(0, 1)), rtol=1e-5, atol=1e-6)
    # The pure function the module (and the NNX shell) calls.
    alpha, scale, bias = params['alpha'], params['scale'][None, None], params['bias'][None, None]
    np.testing.assert_allclose(dynamic_tanh(x, alpha, scale, bias), y, rtol=1e-6)
    np.testing.assert_allclose(dynamic_tanh(x, alpha, None, None), t, rtol=1e-5, atol=1e-6)


def test_parameters_and_options():
    x = jnp.ones((3, 4))
    variables = DynamicTanh().init(jax.random.key(0), x)
    assert set(variables) == {'params'}  # no state
    shapes = jax.tree.map(jnp.shape, variables['params'])
    assert shapes == {'alpha': (), 'scale': (4,), 'bias': (4,)}
    assert float(variables['params']['alpha']) == 0.5  # the paper's alpha_0
    v = DynamicTanh(alpha_init=2.0, use_bias=False).init(jax.random.key(0), x)
    assert set(v['params']) == {'alpha', 'scale'} and float(v['params']['alpha']) == 2.0
    v = DynamicTanh(use_scale=False, use_bias=False).init(jax.random.key(0), x)
    assert set(v['params']) == {'alpha'}
    # scale_init=zeros (zero-init of a residual branch) gives the bias alone.
    zero = DynamicTanh(scale_init=jax.nn.initializers.zeros, bias_init=jax.nn.initializers.ones)
    np.testing.assert_array_equal(zero.apply(zero.init(jax.random.key(0), x), 5 * x), 1.0)


def test_dtypes_follow_flax():
    x = jnp.ones((2, 4), jnp.bfloat16)
    dyt = DynamicTanh()
    variables = dyt.init(jax.random.key(0), x)
    assert dyt.apply(variables, x).dtype == jnp.float32  # promoted with float32 params
    assert DynamicTanh(dtype=jnp.bfloat16).apply(variables, x).dtype == jnp.bfloat16


def test_registered_stateless_and_takes_the_common_keywords():
    assert norms.NORMS['dyt'] is DynamicTanh and not is_stateful('dyt')
    norm = make_norm('dyt', alpha_init=0.25)
    x = jax.random.normal(jax.random.key(0), (4, 3))
    layer = norm(use_running_average=True, dtype=jnp.float32, param_dtype=jnp.float32)
    variables = layer.init(jax.random.key(1), x)
    assert float(variables['params']['alpha']) == 0.25
    y = layer.apply(variables, x)
    train = norm(use_running_average=False)
    np.testing.assert_array_equal(train.apply(variables, x), y)  # same in both modes
    # Elementwise: a mask changes nothing.
    np.testing.assert_array_equal(layer.apply(variables, x, mask=jnp.ones((4, 1), bool)), y)
    with pytest.raises(ValueError, match='epsilon.*valid: alpha_init'):
        make_norm('dyt', epsilon=1e-5)
