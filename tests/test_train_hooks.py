"""Trainer hooks the BatchNorm-claims studies rely on, and the embedded-dataset configs
training for real: per-layer gradient norms, extra evaluation steps (0 = the initial
weights), the train-split evaluation, the init scale of the MLP/CNN kernels."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab import models, norms
from normlab.train import ConfigError, classifier
from normlab.train.classifier.steps import layer_grad_norms


def config_of(module, arg, **overrides):
    c = module.get_config(arg)
    c.wandb.mode = 'disabled'
    for k, v in overrides.items():
        c[k] = v
    return c


def rows(workdir):
    return [json.loads(line) for line in open(workdir / 'metrics.jsonl')]


def test_layer_grad_norms_is_the_l2_norm_of_each_top_level_entry():
    grads = {
        'dense1': {'kernel': 3 * jnp.ones(4), 'bias': jnp.zeros(2)},
        'head': {'b': -jnp.ones(1)},
    }
    out = jax.jit(layer_grad_norms)(grads)
    assert set(out) == {'grad_norm/dense1', 'grad_norm/head'}
    np.testing.assert_allclose(out['grad_norm/dense1'], 6.0)
    np.testing.assert_allclose(out['grad_norm/head'], 1.0)


def test_mnist5k_mlp_learns_and_logs_grad_norms_eval_steps_and_train_split(tmp_path):
    from configs import mnist_mlp

    c = config_of(
        mnist_mlp,
        'dataset=mnist5k',
        num_train_steps=150,
        log_every_steps=50,
        checkpoint_every_steps=1000,
        record_grad_norms=True,
        eval_steps=(0, 1, 5),
        eval_train_split=True,
        record_preactivations=False,
    )
    s = classifier.train_and_evaluate(c, str(tmp_path))
    assert s['eval/error'] < 0.2, s  # 3x100 sigmoid + BN, 150 steps of batch 60
    assert s['eval_train/examples'] == 4000 and s['eval/examples'] == 1000
    logged = rows(tmp_path)
    evals = [r for r in logged if 'eval/error' in r]
    assert [r['step'] for r in evals] == [0, 1, 5, 150]
    assert evals[0]['eval/error'] > 0.7  # the initial weights guess
    train = [r for r in logged if 'train/loss' in r]
    # An evaluation step is a logging boundary: step 1 alone holds the gradients at the
    # initial weights.
    assert [r['step'] for r in train] == [1, 5, 50, 100, 150]
    layers = ['dense1', 'norm1', 'dense2', 'norm2', 'dense3', 'norm3', 'head']
    first = train[0]
    per_layer = [first[f'grad_norm/{k}'] for k in layers]
    assert all(v > 0 for v in per_layer)
    # The layers partition the params: their norms compose the global norm.
    np.testing.assert_allclose(
        math.sqrt(sum(v**2 for v in per_layer)), first['train/grad_norm'], rtol=1e-4
    )


def test_mnist1d_mlp_learns(tmp_path):
    from configs import mnist1d_mlp

    c = config_of(mnist1d_mlp, 'steps=600', checkpoint_every_steps=1000, eval_every_steps=None)
    s = classifier.train_and_evaluate(c, str(tmp_path))
    # Chance is 90% error; the paper's MLP ends at 32% after 8,000 steps.
    assert s['eval/error'] < 0.6, s
    assert s['eval/examples'] == 1000


def test_bad_eval_steps_fail_before_training(tmp_path):
    from configs import mnist1d_mlp

    c = config_of(mnist1d_mlp, 'smoke=True', eval_steps=(3, -1))
    with pytest.raises(ConfigError, match=r'eval_steps=\(3, -1\)'):
        classifier.validate(c, str(tmp_path))


@pytest.mark.parametrize('name', ['mlp', 'cnn'])
def test_kernel_init_scale_multiplies_the_default_init(name):
    x = jnp.ones((2, 8, 8, 1))

    def kernels(scale):
        model = models.create(
            name,
            num_classes=10,
            norm=norms.make_norm('none'),
            widths=(4, 8),
            kernel_init_scale=scale,
        )
        params = model.init(jax.random.key(0), x, train=False)['params']
        return {k: v['kernel'] for k, v in params.items() if 'kernel' in v}

    base = kernels(1.0)
    default = models.create(name, num_classes=10, norm=norms.make_norm('none'), widths=(4, 8))
    flax_default = default.init(jax.random.key(0), x, train=False)['params']
    for layer, kernel in kernels(0.01).items():
        np.testing.assert_allclose(kernel, 0.01 * base[layer], rtol=1e-5)
        np.testing.assert_array_equal(base[layer], flax_default[layer]['kernel'])
    with pytest.raises(ValueError, match='kernel_init_scale must be positive, got 0'):
        kernels(0.0)


def test_mlp_dropout_drops_in_training_only():
    model = models.create('mlp', num_classes=3, norm=norms.make_norm('none'), dropout_rate=0.5)
    x = jnp.ones((4, 6))
    variables = model.init(jax.random.key(0), x, train=False)
    eval_out = model.apply(variables, x, train=False)
    assert (model.apply(variables, x, train=False) == eval_out).all()
    a, b = (
        model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(k)}) for k in (1, 2)
    )
    assert not (a == eval_out).all() and not (a == b).all()
    with pytest.raises(ValueError, match='dropout_rate=1.0'):
        models.create('mlp', num_classes=3, norm=norms.make_norm('none'), dropout_rate=1.0).init(
            jax.random.key(0), x, train=False
        )


def test_dropout_trains_from_the_seed_and_evaluates_without_dropping(tmp_path):
    """Every eval mode runs the network without dropout (batch statistics and precise BN
    too); the masks come from the run's seed, bundled or not."""
    from normlab.studies import command

    def argv(workdir, seed, *extra):
        return [
            '--config=configs/digits_mlp.py:smoke=True',
            f'--workdir={workdir}',
            f'--config.seed={seed}',
            '--config.wandb.mode=disabled',
            '--config.model_options.dropout_rate=0.3',
            *extra,
        ]

    solo = [
        classifier.train_and_evaluate(*command.parse(argv(tmp_path / f's{s}', s))) for s in (0, 1)
    ]
    again = classifier.train_and_evaluate(*command.parse(argv(tmp_path / 'again', 0)))
    assert again['train/loss'] == solo[0]['train/loss']
    without = classifier.train_and_evaluate(
        *command.parse(argv(tmp_path / 'none', 0)[:-1] + ['--config.model_options.dropout_rate=0'])
    )
    assert without['train/loss'] != solo[0]['train/loss']
    parsed = [command.parse(argv(tmp_path / f'b{s}', s)) for s in (0, 1)]
    bundled = classifier.train_bundle([c for c, _ in parsed], [w for _, w in parsed])
    for a, b in zip(solo, bundled, strict=True):
        assert b['eval/error'] == a['eval/error']
        assert b['train/loss'] == pytest.approx(a['train/loss'], rel=1e-5)
    modes = '--config.eval_modes=running,batch,precise'
    out = classifier.train_and_evaluate(*command.parse(argv(tmp_path / 'modes', 0, modes)))
    assert out['eval/error'] == solo[0]['eval/error']
    assert all(math.isfinite(out[f'{m}/loss']) for m in ('eval', 'eval_batch', 'eval_precise'))
