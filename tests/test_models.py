"""Tests for normlab.models: a table of tiny model configs crossed with every registered norm.

Compiling is what costs time on CPU, so the full model x norm product is traced
abstractly (``jax.eval_shape``: every norm site, shape, dtype and collection is checked
without compiling anything), and behaviour that needs numbers runs concretely along
the two axes: every norm in one small conv model, and a few models with batch norm.
Configs use the smallest widths, depths and inputs that still reach every code path
(stems, identity and projection blocks, pooling, conditioning, spectral norm); the
full-size networks are only traced, to count their parameters.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab import models
from normlab.models import common, dcgan, nf_resnet
from normlab.norms import NORMS, SpectralNorm, WeightStandardizedConv, is_stateful, make_norm

# Options that let every norm run on 2-channel-wide test models.
NORM_OPTIONS = {'group_norm': {'num_groups': 2}, 'evonorm_s0': {'num_groups': 2}}

# One tiny config per code path: name -> (create kwargs, input shape, output shape).
# ImageNet stems with bottleneck blocks (v1, v2); CIFAR stems with basic blocks and
# identity (v1) or projection (v2) shortcuts; the blocks are shared between families.
MODELS = {
    'resnet50': ({'width': 2, 'stage_sizes': (1, 1)}, (4, 8, 8, 3), (4, 5)),
    'preact_resnet50': ({'width': 2, 'stage_sizes': (1, 1)}, (4, 8, 8, 3), (4, 5)),
    'resnet20': ({'width': 2, 'stage_sizes': (1, 1)}, (4, 4, 4, 3), (4, 5)),
    'preact_resnet20': (
        {'width': 2, 'stage_sizes': (1, 1), 'shortcut': 'projection'},
        (4, 4, 4, 3),
        (4, 5),
    ),
    'cnn': ({'widths': (2, 4)}, (4, 4, 4, 1), (4, 5)),
    'mlp': ({'widths': (4, 4)}, (4, 3, 3, 1), (4, 5)),
    'dcgan_generator': ({'image_size': 16, 'latent_dim': 3, 'width': 2}, (4, 3), (4, 16, 16, 3)),
    'dcgan_discriminator': ({'width': 2}, (4, 16, 16, 3), (4,)),
}


def _create(name, norm, **kwargs):
    num_classes = 0 if name.startswith('dcgan') else 5
    return models.create(name, num_classes=num_classes, norm=norm, **kwargs)


def _norm(name):
    return make_norm(name, **NORM_OPTIONS.get(name, {}))


def _inputs(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


def _spec(shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _forward(model, x, **call_kwargs):
    """init, a train forward (every state collection mutable) and an eval forward."""
    variables = model.init(jax.random.key(1), x, **call_kwargs)
    mutable = [c for c in variables if c != 'params']  # batch_stats, spectral_stats, ...
    out_train, state = model.apply(variables, x, train=True, mutable=mutable, **call_kwargs)
    out_eval = model.apply(variables, x, train=False, **call_kwargs)
    return variables, out_train, state, out_eval


def _num_params(variables):
    return sum(p.size for p in jax.tree.leaves(variables['params']))


def _check_state(norm_name, variables, state):
    """batch_stats exist, and all change in a train forward, exactly for stateful norms."""
    stateful = is_stateful(_norm(norm_name))
    assert ('batch_stats' in variables) == stateful
    if stateful:
        changed = jax.tree.map(
            lambda a, b: bool(jnp.any(a != b)), variables['batch_stats'], state['batch_stats']
        )
        assert all(jax.tree.leaves(changed)), changed


@pytest.mark.parametrize('norm_name', sorted(NORMS))
@pytest.mark.parametrize('model_name', sorted(MODELS))
def test_every_model_with_every_norm(model_name, norm_name):
    """Traced abstractly: every norm site takes every norm; train and eval forwards have
    the expected shapes, float32 outputs and state collections."""
    kwargs, in_shape, out_shape = MODELS[model_name]
    model = _create(model_name, _norm(norm_name), **kwargs)
    modes, record_mode = _record_calls(NORMS[norm_name], lambda m, kw: m.use_running_average)
    with nn.intercept_methods(record_mode):
        variables, out_train, state, out_eval = jax.eval_shape(
            functools.partial(_forward, model), _spec(in_shape)
        )
    assert out_train.shape == out_eval.shape == out_shape
    assert out_train.dtype == out_eval.dtype == jnp.float32
    assert ('batch_stats' in variables) == is_stateful(_norm(norm_name))
    assert set(state) == set(variables) - {'params'}
    # init, train and eval call the same norm sites; train mode reaches every one of them.
    sites = len(modes) // 3
    assert sites > 0 and len(modes) == 3 * sites
    assert modes[sites:] == [False] * sites + [True] * sites


@pytest.mark.parametrize('norm_name', sorted(NORMS))
def test_every_norm_runs(norm_name):
    """Concretely, one small conv model per norm: finite outputs, batch_stats updated
    exactly for stateful norms, eval mode per-example (batch mates do not matter)."""
    model = models.create('cnn', num_classes=5, norm=_norm(norm_name), widths=(2,))
    x = _inputs((4, 4, 4, 1))
    variables, logits, state, eval_logits = _forward(model, x)
    assert np.isfinite(logits).all() and np.isfinite(eval_logits).all()
    _check_state(norm_name, variables, state)
    other_mates = x.at[1:].set(_inputs((3, 4, 4, 1), seed=1))
    np.testing.assert_allclose(
        model.apply(variables, other_mates, train=False)[0], eval_logits[0], rtol=1e-5, atol=1e-6
    )
    # While train mode does depend on them (evonorm_b0 and batch_renorm may not, at init:
    # the former's instance term can dominate; the latter's forward equals normalizing with
    # the running statistics until r and d are clipped).
    if norm_name == 'batch_norm':
        train_logits, _ = model.apply(variables, other_mates, train=True, mutable=list(state))
        assert not np.allclose(train_logits[0], logits[0])


@pytest.mark.parametrize(
    ('name', 'num_classes', 'expected'),
    [
        ('resnet18', 1000, 11_689_512),
        ('resnet34', 1000, 21_797_672),
        ('resnet50', 1000, 25_557_032),
        ('resnet101', 1000, 44_549_160),
        ('resnet152', 1000, 60_192_808),
        ('resnet20', 10, 269_722),
    ],
)
def test_published_parameter_counts(name, num_classes, expected):
    model = models.create(name, num_classes=num_classes, norm=make_norm('batch_norm'))
    size = 224 if num_classes == 1000 else 32
    variables = jax.eval_shape(model.init, jax.random.key(0), _spec((1, size, size, 3)))
    assert _num_params(variables) == expected


def test_projection_shortcuts_add_parameters():
    def count(**kwargs):
        model = models.create('resnet20', num_classes=10, norm=make_norm('batch_norm'), **kwargs)
        return _num_params(jax.eval_shape(model.init, jax.random.key(0), _spec((1, 32, 32, 3))))

    # Two 1x1 projections (16->32, 32->64), each with its norm's scale and bias.
    assert count(shortcut='projection') - count() == 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64


def test_pre_activation_blocks_have_no_last_norm_to_zero():
    model = _create('preact_resnet20', make_norm('batch_norm'), zero_init_last_norm=True)
    with pytest.raises(ValueError, match='zero_init_last_norm must be False'):
        jax.eval_shape(model.init, jax.random.key(0), _spec((1, 4, 4, 3)))


def test_identity_shortcuts_on_bottleneck_blocks():
    """Zero-padded shortcuts drop every projection: 1x1 convs and (v1) their norms."""

    def count(name, **kwargs):
        model = _create(name, make_norm('batch_norm'), width=2, stage_sizes=(1, 1), **kwargs)
        return _num_params(jax.eval_shape(model.init, jax.random.key(0), _spec((1, 8, 8, 3))))

    # Stage 1 projects 2 -> 8 channels, stage 2 8 -> 16 (bottleneck outputs are 4x wide).
    convs = 2 * 8 + 8 * 16
    assert count('resnet50') - count('resnet50', shortcut='identity') == convs + 2 * (8 + 16)
    assert count('preact_resnet50') - count('preact_resnet50', shortcut='identity') == convs


def test_registry():
    expected = {
        *(f'{p}resnet{d}' for p in ('', 'preact_', 'nf_') for d in (18, 34, 50, 101, 152)),
        *(f'{p}resnet{d}' for p in ('', 'preact_', 'nf_') for d in (20, 32, 44, 56, 110)),
        *('cnn', 'mlp', 'dcgan_generator', 'dcgan_discriminator'),
    }
    assert expected <= set(models.MODELS)
    with pytest.raises(ValueError, match='valid names: .*resnet50'):
        models.create('resnet51', num_classes=10, norm=make_norm('none'))
    with pytest.raises(ValueError, match='already registered'):
        models.register('cnn', models.MODELS['cnn'])
    with pytest.raises(TypeError, match='make_norm'):
        models.create('cnn', num_classes=10, norm=None)
    with pytest.raises(TypeError, match='takes no option widht; its options: widths'):
        models.create('cnn', num_classes=10, norm=make_norm('none'), widht=3)
    assert 'norm_position' not in models.model_fields('nf_resnet20')
    # None is "unset": the model's own default.
    default = models.create('cnn', num_classes=10, norm=make_norm('none'), widths=None)
    assert default.widths == models.MODELS['cnn'].widths


@pytest.mark.parametrize(
    ('name', 'num_classes', 'match'),
    [
        ('cnn', 0, 'positive int, got 0'),
        ('resnet20', None, 'positive int, got None'),
        ('mlp', True, 'positive int, got True'),
        ('dcgan_generator', None, r'int >= 0 \(0: unconditional\), got None'),
        ('dcgan_discriminator', -1, 'got -1'),
    ],
)
def test_num_classes_is_a_count(name, num_classes, match):
    with pytest.raises(ValueError, match=match):
        models.create(name, num_classes=num_classes, norm=make_norm('none'))


@pytest.mark.parametrize(
    ('name', 'shape', 'match'),
    [
        ('resnet18', (2, 8, 8, 3), r'at least 32x32.*\(2, 8, 8, 3\)'),
        ('preact_resnet50', (2, 40, 16, 3), r'at least 32x32.*\(2, 40, 16, 3\)'),
        ('resnet20', (2, 2, 2, 3), r'at least 4x4.*\(2, 2, 2, 3\)'),
        ('nf_resnet50', (2, 16, 16, 3), r'at least 32x32.*\(2, 16, 16, 3\)'),
        ('cnn', (2, 3, 3, 1), r'at least 4x4.*\(2, 3, 3, 1\)'),
        ('cnn', (2, 8, 8), r'rank 4.*\(2, 8, 8\)'),
        ('mlp', (5,), r'rank >= 2.*\(5,\)'),
        ('dcgan_discriminator', (2, 7, 7, 1), r'at least 8.*\(2, 7, 7, 1\)'),
        ('dcgan_discriminator', (2, 8, 16, 1), r'square.*\(2, 8, 16, 1\)'),
        ('dcgan_generator', (2, 5), r'\(batch, 100\).*\(2, 5\)'),
    ],
)
def test_bad_input_shape(name, shape, match):
    model = _create(name, make_norm('none'))
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(model.init, jax.random.key(0), _spec(shape))


@pytest.mark.parametrize(
    ('name', 'shape'),
    [
        ('resnet18', (1, 32, 32, 3)),  # the smallest: a 1x1 map reaches the last stage
        ('preact_resnet50', (1, 33, 57, 1)),
        ('resnet20', (1, 7, 5, 3)),
        ('cnn', (1, 28, 28, 1)),
        ('mlp', (1, 28, 28, 1)),
        ('nf_resnet20', (1, 9, 4, 3)),
    ],
)
def test_any_allowed_input_shape(name, shape):
    # One block per stage: the total stride is what limits the input size.
    depth = {'stage_sizes': (1,) * (4 if name.endswith(('18', '50')) else 3)}
    model = _create(name, make_norm('none'), **(depth if 'resnet' in name else {}))
    variables = jax.eval_shape(model.init, jax.random.key(0), _spec(shape))
    logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, _spec(shape))
    assert logits.shape == (1, 5)


@pytest.mark.parametrize('image_size', [8, 28, 32, 64])
def test_dcgan_image_sizes(image_size):
    generator = models.create(
        'dcgan_generator', num_classes=0, norm=make_norm('batch_norm'), image_size=image_size
    )
    discriminator = models.create('dcgan_discriminator', num_classes=0, norm=make_norm('none'))
    z = _spec((2, generator.latent_dim))
    _, fake, _, _ = jax.eval_shape(functools.partial(_forward, generator), z)
    assert fake.shape == (2, image_size, image_size, 3)
    _, logits, _, _ = jax.eval_shape(functools.partial(_forward, discriminator), fake)
    assert logits.shape == (2,)


def test_dcgan_stage_plan():
    assert dcgan.stage_plan(64) == (4, 4)
    assert dcgan.stage_plan(32) == (4, 3)
    assert dcgan.stage_plan(28) == (7, 2)
    assert dcgan.stage_plan(8) == (4, 1)
    generator = models.create(
        'dcgan_generator', num_classes=0, norm=make_norm('none'), image_size=6
    )
    with pytest.raises(ValueError, match='at least 8.*got 6'):
        jax.eval_shape(generator.init, jax.random.key(0), _spec((1, 100)))


def _record_calls(module_type, read):
    """An interceptor that appends ``read(module, kwargs)`` for each call of a module_type."""
    calls = []

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, module_type) and context.method_name == '__call__':
            calls.append(read(context.module, kwargs))
        return next_fun(*args, **kwargs)

    return calls, interceptor


def test_conditional_gan_with_spectral_norm_composes():
    """Conditional generator -> projection discriminator with spectral norm."""
    generator = models.create(
        'dcgan_generator',
        num_classes=3,
        norm=make_norm('batch_norm'),
        image_size=16,
        latent_dim=3,
        width=2,
        out_channels=1,
    )
    discriminator = models.create(
        'dcgan_discriminator',
        num_classes=3,
        norm=make_norm('layer_norm'),
        width=2,
        spectral_norm=True,
    )
    z, labels = _spec((4, 3)), jnp.array([0, 1, 2, 1])
    g_vars, fake, g_state, _ = jax.eval_shape(
        functools.partial(_forward, generator, labels=labels), z
    )
    assert fake.shape == (4, 16, 16, 1)
    # The class-dependent scale and offset replace the norm's own affine parameters.
    assert g_vars['params']['norm0']['scale']['embedding'].shape == (3, 4)
    assert set(g_vars['params']['norm0']) == {'scale', 'bias'}
    assert set(g_vars['batch_stats']['norm0']['norm']) == {'mean', 'var'}

    calls, interceptor = _record_calls(SpectralNorm, lambda m, kw: kw['update_stats'])
    with nn.intercept_methods(interceptor):
        d_vars, logits, d_state, logits_eval = jax.eval_shape(
            functools.partial(_forward, discriminator, labels=labels), fake
        )
    assert logits.shape == logits_eval.shape == (4,) and logits.dtype == jnp.float32
    # Power iteration state is in its own collection, never in batch_stats; every conv
    # and dense layer (2 + 1) is wrapped; only train mode updates the state.
    assert set(d_vars) == set(d_state) | {'params'} == {'params', 'spectral_stats'}
    assert calls == [True] * 3 + [True] * 3 + [False] * 3
    # Spectral norm wraps layers without renaming their parameters.
    plain = models.create(
        'dcgan_discriminator', num_classes=3, norm=make_norm('layer_norm'), width=2
    )
    plain_vars = jax.eval_shape(
        functools.partial(plain.init, labels=labels), jax.random.key(0), fake
    )
    assert jax.tree.structure(plain_vars['params']) == jax.tree.structure(d_vars['params'])
    with pytest.raises(ValueError, match='pass labels'):
        jax.eval_shape(functools.partial(generator.apply, train=False), g_vars, z)
    with pytest.raises(ValueError, match='unconditional'):
        jax.eval_shape(
            functools.partial(
                _create('dcgan_discriminator', make_norm('none')).init, labels=labels
            ),
            jax.random.key(0),
            fake,
        )


def test_conditional_norm_depends_on_the_class():
    layer = dcgan.ClassConditionalNorm(make_norm('none'), num_classes=3)
    x = jnp.ones((3, 1, 1, 2))
    variables = layer.init(jax.random.key(0), x, jnp.zeros(3, jnp.int32))
    assert set(variables['params']) == {'scale', 'bias'}  # the norm has no affine of its own
    variables['params']['bias']['embedding'] = jnp.array([[0.0, 0.0], [1.0, 2.0], [0.0, 0.0]])
    out = layer.apply(variables, x, jnp.array([0, 1, 2]))
    np.testing.assert_array_equal(out[:, 0, 0], [[1, 1], [2, 3], [1, 1]])


def test_mlp_sows_preactivations():
    """The BatchNorm paper's MLP records the sigmoid input of every hidden layer on request."""
    model = models.create('mlp', num_classes=10, norm=make_norm('batch_norm'))
    x = _spec((8, 28, 28, 1))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert set(variables) == {'params', 'batch_stats'}  # init records nothing extra
    _, state = jax.eval_shape(
        functools.partial(model.apply, mutable=['batch_stats', 'intermediates']), variables, x
    )
    shapes = {k: v[0].shape for k, v in state['intermediates'].items()}
    assert shapes == {f'preact{k}': (8, 100) for k in (1, 2, 3)}  # 3 x 100 by default


def test_mlp_preactivation_values():
    kwargs, in_shape, _ = MODELS['mlp']
    model = _create('mlp', make_norm('batch_norm'), **kwargs)
    x = _inputs(in_shape)
    variables = model.init(jax.random.key(0), x)
    logits, state = model.apply(variables, x, mutable=['batch_stats', 'intermediates'])
    pre = {k: v[0] for k, v in state['intermediates'].items()}
    # Train-mode batch norm before the sigmoid: each unit's input is zero-mean.
    np.testing.assert_allclose(jnp.mean(pre['preact1'], axis=0), 0.0, atol=1e-5)
    head = variables['params']['head']
    np.testing.assert_allclose(
        jax.nn.sigmoid(pre['preact2']) @ head['kernel'] + head['bias'][None], logits, rtol=1e-5
    )
    # With the norm after the activation, the sigmoid's input is the raw affine map.
    after = _create('mlp', make_norm('batch_norm'), norm_position='after_activation', **kwargs)
    _, state = after.apply(variables, x, mutable=['batch_stats', 'intermediates'])
    dense1 = variables['params']['dense1']
    np.testing.assert_allclose(
        state['intermediates']['preact1'][0],
        x.reshape(x.shape[0], -1) @ dense1['kernel'] + dense1['bias'][None],
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize('name', sorted(MODELS))
def test_norm_after_activation(name):
    kwargs, in_shape, out_shape = MODELS[name]
    model = _create(name, make_norm('batch_norm'), norm_position='after_activation', **kwargs)
    _, out, _, _ = jax.eval_shape(functools.partial(_forward, model), _spec(in_shape))
    assert out.shape == out_shape
    with pytest.raises(ValueError, match='norm_position'):
        bad = _create(name, make_norm('none'), norm_position='sideways', **kwargs)
        jax.eval_shape(bad.init, jax.random.key(0), _spec(in_shape))


def test_weight_standardized_convs_and_bfloat16():
    for name in ('resnet20', 'preact_resnet50', 'cnn'):
        kwargs, in_shape, out_shape = MODELS[name]
        model = _create(
            name, _norm('group_norm'), conv=WeightStandardizedConv, dtype=jnp.bfloat16, **kwargs
        )
        variables, _, _, logits = jax.eval_shape(
            functools.partial(_forward, model), _spec(in_shape)
        )
        assert logits.shape == out_shape and logits.dtype == jnp.float32
        assert variables['params']['head']['kernel'].dtype == jnp.float32  # params stay f32


def test_zero_init_last_norm():
    kwargs, in_shape, _ = MODELS['resnet50']
    for zero_init in (True, False):
        model = _create(
            'resnet50', make_norm('batch_norm'), zero_init_last_norm=zero_init, **kwargs
        )
        calls, interceptor = _record_calls(
            NORMS['batch_norm'], lambda m, kw: (m.name, m.scale_init)
        )
        with nn.intercept_methods(interceptor):
            jax.eval_shape(model.init, jax.random.key(0), _spec(in_shape))
        scales = {name: float(init(None, (1,))[0]) for name, init in calls}
        # Bottleneck blocks: norm3 is the last before the addition.
        assert scales['norm3'] == (0.0 if zero_init else 1.0)
        assert scales['norm1'] == scales['proj_norm'] == scales['norm_init'] == 1.0


def test_no_recompilation_on_second_call():
    kwargs, in_shape, _ = MODELS['mlp']
    model = _create('mlp', make_norm('batch_norm'), **kwargs)
    x = _inputs(in_shape)
    variables = model.init(jax.random.key(0), x)
    traces = []

    @jax.jit
    def train_forward(variables, x):
        traces.append(None)  # runs only while tracing
        return model.apply(variables, x, train=True, mutable=['batch_stats'])

    _, state = train_forward(variables, x)
    train_forward({**variables, **state}, _inputs(in_shape, seed=1))
    assert len(traces) == 1


def test_activations():
    assert common.get_activation(nn.relu) is nn.relu
    with pytest.raises(ValueError, match='valid names'):
        common.get_activation('relu7')
    model = _create('mlp', make_norm('none'), act='tanh', widths=(3,))
    assert jax.eval_shape(model.init, jax.random.key(0), _spec((2, 4)))['params']['dense1']


@pytest.mark.parametrize('name', ['nf_resnet20', 'nf_resnet50'])
def test_nf_resnet_structure(name):
    model = _create(name, make_norm('none'), width=2, stage_sizes=(1, 1))
    variables, logits, state, _ = jax.eval_shape(
        functools.partial(_forward, model), _spec((2, 8, 8, 3))
    )
    assert set(variables) == {'params'} and logits.shape == (2, 5)
    # Scaled WS convs (with bias and gain) and one skip gain per block; a transition
    # block projects its shortcut.
    block = variables['params']['stage2_block1']
    convs = {'conv1', 'conv2', 'conv3'} if name == 'nf_resnet50' else {'conv1', 'conv2'}
    assert set(block) == convs | {'proj_conv', 'skip_gain'}
    assert set(block['conv1']) == {'kernel', 'bias', 'gain'}
    with pytest.raises(ValueError, match='normalizer-free'):
        jax.eval_shape(
            _create(name, make_norm('batch_norm')).init, jax.random.key(0), _spec((1, 32, 32, 3))
        )


def test_nf_resnet_signal_propagation_schedule():
    """Block j of a stage divides its input by beta_j, the expected std of the residual
    stream: 1 into a transition block, then sqrt(1 + k * alpha^2) after k blocks."""
    alpha = 0.3
    model = _create('nf_resnet20', make_norm('none'), width=2, stage_sizes=(3, 2), alpha=alpha)
    calls, interceptor = _record_calls(nf_resnet.NFBlock, lambda m, kw: (m.name, m.beta, m.alpha))
    with nn.intercept_methods(interceptor):
        jax.eval_shape(model.init, jax.random.key(0), _spec((1, 4, 4, 3)))
    expected_std = {
        'stage1_block1': 1.0,
        'stage1_block2': (1 + alpha**2) ** 0.5,
        'stage1_block3': (1 + 2 * alpha**2) ** 0.5,
        'stage2_block1': (1 + 3 * alpha**2) ** 0.5,
        'stage2_block2': (1 + alpha**2) ** 0.5,  # reset by the transition block
    }
    assert {name: a for name, _, a in calls} == dict.fromkeys(expected_std, alpha)
    assert {name: pytest.approx(1 / b) for name, b, _ in calls} == expected_std


def test_nf_activation_gains_match_their_definition():
    # gamma = 1 / std(act(z)), z ~ N(0, 1), by quadrature.
    z = np.linspace(-12, 12, 20_001)
    density = np.exp(-(z**2) / 2) / np.sqrt(2 * np.pi)
    for name, gain in nf_resnet.ACTIVATION_GAINS.items():
        g = np.asarray(common.ACTIVATIONS[name](jnp.asarray(z)), np.float64)
        mean = np.trapezoid(g * density, z)
        var = np.trapezoid((g - mean) ** 2 * density, z)
        assert gain == pytest.approx(1 / np.sqrt(var), rel=1e-3), name
