"""normlab.train.optim against closed forms: every learning-rate schedule, the linear
scaling rule, and which parameters weight decay reaches."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from normlab import models
from normlab.config import classifier_config
from normlab.norms import WeightStandardizedConv, make_norm
from normlab.train import optim

TOTAL = 100
STEPS_PER_EPOCH = 10


def config(**overrides):
    c = classifier_config()
    c.learning_rate, c.batch_size, c.base_batch_size = 0.4, 64, 128  # peak 0.2 (linear)
    c.update(overrides)
    return c


def lr_at(c, steps):
    lr = optim.schedule(c, TOTAL, STEPS_PER_EPOCH)
    return np.array([float(lr(s)) for s in steps])


def test_linear_scaling_rule():
    assert optim.scaled_learning_rate(config()) == pytest.approx(0.4 * 64 / 128)
    assert optim.scaled_learning_rate(config(lr_scaling='none')) == 0.4


def test_constant_schedule():
    np.testing.assert_allclose(lr_at(config(schedule='constant'), [0, 50, TOTAL]), 0.2)


def test_cosine_schedule():
    steps = np.array([0, 25, 50, 75, TOTAL])
    expected = 0.2 * 0.5 * (1 + np.cos(np.pi * steps / TOTAL))
    np.testing.assert_allclose(lr_at(config(schedule='cosine'), steps), expected, atol=1e-7)


def test_warmup_then_cosine():
    c = config(schedule='cosine', warmup_epochs=2.0)  # 20 steps of linear warmup
    warmup = 2 * STEPS_PER_EPOCH
    steps = np.array([0, 5, 10, warmup, 60, TOTAL])
    expected = np.where(
        steps < warmup,
        0.2 * steps / warmup,
        0.2 * 0.5 * (1 + np.cos(np.pi * (steps - warmup) / (TOTAL - warmup))),
    )
    np.testing.assert_allclose(lr_at(c, steps), expected, atol=1e-7)


@pytest.mark.parametrize('warmup_epochs', [0.0, 3.0])
def test_step_schedule_drops_at_fractions_of_training(warmup_epochs):
    """Boundaries are fractions of the whole run, warmup included."""
    c = config(schedule='step', step_boundaries=(0.5, 0.75), step_factor=0.1)
    c.warmup_epochs = warmup_epochs
    steps = [40, 49, 50, 74, 75, TOTAL]
    expected = [0.2, 0.2, 0.02, 0.02, 0.002, 0.002]
    np.testing.assert_allclose(lr_at(c, steps), expected, rtol=1e-6)


def test_warmup_longer_than_training_is_clipped():
    c = config(schedule='constant', warmup_epochs=50.0)  # 500 steps asked, 100 run
    np.testing.assert_allclose(lr_at(c, [0, TOTAL - 1, TOTAL]), [0.0, 0.2, 0.2], atol=1e-7)


@pytest.fixture(scope='module')
def params():
    """Every kind of parameter: conv kernels and biases, WS gains, norm scales and
    offsets, the head's kernel and bias."""
    model = models.create(
        'cnn',
        num_classes=3,
        norm=make_norm('batch_norm'),
        widths=(2,),
        conv=functools.partial(WeightStandardizedConv, scaled=True),
    )
    init = jax.jit(functools.partial(model.init, train=False))
    return init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))['params']


def test_weight_decay_mask_keeps_to_kernels(params):
    flat = traverse_util.flatten_dict(optim.decay_mask(params, decay_norm_and_bias=False))
    leaves = {path[-1] for path in flat}
    assert {'kernel', 'gain', 'scale', 'bias'} <= leaves
    assert all(decay == (path[-1] == 'kernel') for path, decay in flat.items())
    everything = optim.decay_mask(params, decay_norm_and_bias=True)
    assert all(jax.tree.leaves(everything))


@pytest.mark.parametrize('optimizer', ['sgd', 'adamw'])
def test_weight_decay_reaches_exactly_the_masked_parameters(params, optimizer):
    """With zero gradients an update is pure decay: ``-lr * wd * w`` on kernels only."""
    c = config(optimizer=optimizer, weight_decay=0.1, momentum=0.0, lr_scaling='none')
    c.schedule, c.warmup_epochs = 'constant', 0.0
    params = jax.tree.map(lambda p: p + 1.0, params)  # no zero-initialized leaf
    tx = optim.make_optimizer(c, TOTAL, STEPS_PER_EPOCH)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    flat_params = traverse_util.flatten_dict(params)
    for path, update in traverse_util.flatten_dict(updates).items():
        expected = -0.4 * 0.1 * flat_params[path] if path[-1] == 'kernel' else 0.0
        np.testing.assert_allclose(update, expected, rtol=1e-6, err_msg='/'.join(path))


def test_count_params():
    assert optim.count_params({'a': {'kernel': jnp.zeros((3, 4))}, 'b': jnp.zeros(5)}) == 17
