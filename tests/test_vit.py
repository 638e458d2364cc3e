"""Vision Transformers: every norm x every placement, published sizes, where the norms sit,
QK-norm's bound on the attention logits, which axes each norm reduces, and the
transformer_norms study (its smoke grid end to end, its findings on made-up numbers).

Compiling dominates on CPU, so the full norm x placement product is traced abstractly
(``jax.eval_shape`` of init, a train forward and an eval forward), a per-token and a
batch norm train a step concretely at placements that reach every kind of norm site,
and the published sizes are only traced.
"""

import csv
import functools
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from normlab import models
from normlab.models import vit
from normlab.norms import NORMS, LayerNorm, is_stateful, make_norm
from normlab.studies import load_study
from normlab.studies.results import RunRecord, Table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NORM_OPTIONS = {'group_norm': {'num_groups': 2}, 'evonorm_s0': {'num_groups': 2}}
TINY = {'patch_size': 2, 'width': 8, 'depth': 1, 'num_heads': 2}
IMAGES = (4, 4, 4, 1)  # 4 tokens of 2x2 patches and a class token


def _norm(name):
    return make_norm(name, **NORM_OPTIONS.get(name, {}))


def _tiny(norm_name, **kwargs):
    return models.create('vit', num_classes=5, norm=_norm(norm_name), **{**TINY, **kwargs})


def _batch(seed=0):
    x = jax.random.normal(jax.random.key(seed), IMAGES)
    return x, jnp.arange(IMAGES[0]) % 5


def _train_eval(model):
    """(init, one SGD step, eval) as functions; the step returns the loss before and after."""

    def init(x):
        return model.init(jax.random.key(1), x, train=False)

    def loss(params, variables, x, y):
        state = {k: v for k, v in variables.items() if k != 'params'}
        logits, new_state = model.apply(
            {'params': params, **state}, x, train=True, mutable=list(state)
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state

    def step(variables, x, y):
        (before, state), g = jax.value_and_grad(loss, has_aux=True)(
            variables['params'], variables, x, y
        )
        # A step that first-order theory says lowers the loss by 1e-3.
        size = 1e-3 / jnp.square(optax.global_norm(g))
        params = jax.tree.map(lambda p, d: p - size * d, variables['params'], g)
        after, _ = loss(params, variables, x, y)
        return {**variables, **state, 'params': params}, before, after

    def evaluate(variables, x):
        return model.apply(variables, x, train=False)

    return init, step, evaluate


@pytest.mark.parametrize('placement', vit.NORM_PLACEMENTS)
@pytest.mark.parametrize('norm_name', sorted(NORMS))
def test_every_norm_and_placement_traces(norm_name, placement):
    """Abstractly: init, a train forward and an eval forward, with the expected shapes
    and collections (q/k norms included, so even placement 'none' has norm sites)."""
    model = _tiny(norm_name, norm_placement=placement, qk_norm=True)
    x = jax.ShapeDtypeStruct(IMAGES, jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(1), x)
    mutable = [c for c in variables if c != 'params']
    train = functools.partial(model.apply, train=True, mutable=mutable)
    logits, state = jax.eval_shape(train, variables, x)
    eval_logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
    assert logits.shape == eval_logits.shape == (4, 5)
    assert logits.dtype == eval_logits.dtype == jnp.float32
    assert ('batch_stats' in variables) == is_stateful(_norm(norm_name))
    assert jax.tree.map(jnp.shape, state) == jax.tree.map(
        jnp.shape, {c: variables[c] for c in mutable}
    )


# Concretely, a step of SGD with a per-token and a batch norm at placements that reach
# every kind of norm site: sublayer inputs and outputs (peri), the residual sum (post),
# queries and keys, the final norm. (Every norm runs concretely in tests/test_models.py
# and, on a token stream, in test_which_axes_each_norm_reduces_in_a_transformer.)
CONCRETE = [('layer_norm', 'peri'), ('batch_norm', 'post')]


@pytest.mark.parametrize(('norm_name', 'placement'), CONCRETE)
def test_trains_a_step_and_evaluates_without_recompiling(norm_name, placement):
    model = _tiny(norm_name, norm_placement=placement, qk_norm=True)
    init, step, evaluate = _train_eval(model)
    traces = []

    def traced_step(*args):
        traces.append(1)  # runs only while tracing
        return step(*args)

    train_step = jax.jit(traced_step)
    x, y = _batch()
    variables = jax.jit(init)(x)
    new, before, after = train_step(variables, x, y)
    assert np.isfinite(before) and after < before
    if 'batch_stats' in variables:
        changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables, new)
        assert all(jax.tree.leaves(changed['batch_stats']))
    x2, y2 = _batch(seed=1)
    train_step(new, x2, y2)  # new data, updated state: the same program
    assert len(traces) == 1
    evaluate = jax.jit(evaluate)
    logits = evaluate(new, x)
    assert logits.shape == (4, 5) and np.isfinite(logits).all()
    # Eval mode is per-example: the other images of the batch do not matter.
    other = x.at[1:].set(x2[1:])
    np.testing.assert_allclose(evaluate(new, other)[0], logits[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ('name', 'expected'),
    [('vit_ti16', 5_717_416), ('vit_s16', 22_050_664), ('vit_b16', 86_567_656)],
)
def test_published_sizes_count_their_parameters_and_take_batch_norm(name, expected):
    model = models.create(name, num_classes=1000, norm=make_norm('layer_norm'))
    spec = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), spec)
    assert sum(p.size for p in jax.tree.leaves(variables['params'])) == expected
    width = vit.SIZES[{'vit_ti16': 'Ti', 'vit_s16': 'S', 'vit_b16': 'B'}[name]][0]
    assert variables['params']['pos_embedding'].shape == (1, 197, width)
    # A stateful norm at every site, on a smaller image (the embedding follows it).
    model = model.clone(norm=make_norm('batch_norm'), norm_placement='peri', qk_norm=True)
    spec = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), spec)
    train = functools.partial(model.apply, train=True, mutable=['batch_stats'])
    logits, state = jax.eval_shape(train, variables, spec)
    assert logits.shape == (2, 1000) and set(state) == {'batch_stats'}


def test_position_embedding_follows_the_input_and_pooling():
    def shapes(images, **kwargs):
        model = models.create('vit', num_classes=10, norm=make_norm('layer_norm'), **kwargs)
        spec = jax.ShapeDtypeStruct(images, jnp.float32)
        params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), spec)['params']
        return params['pos_embedding'].shape, 'cls' in params

    assert shapes((1, 8, 8, 1), patch_size=2) == ((1, 17, 64), True)
    assert shapes((1, 28, 28, 1), patch_size=4) == ((1, 50, 64), True)
    assert shapes((1, 28, 28, 1), patch_size=4, pool='mean') == ((1, 49, 64), False)
    model = models.create('vit', num_classes=3, norm=make_norm('rms_norm'), dtype=jnp.bfloat16)
    logits = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x)[0],
        jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32),
    )
    assert logits.dtype == jnp.float32


@pytest.mark.parametrize(
    ('kwargs', 'words'),
    [
        ({'norm_placement': 'middle'}, "norm_placement must be one of .*'post', 'pre', 'peri'"),
        ({'pool': 'max'}, "pool must be one of .*'token', 'mean'"),
        ({'patch_size': 3}, r'patch_size=3\) does not divide'),
        ({'num_heads': 3}, 'width 64 is not divisible by num_heads=3'),
    ],
)
def test_bad_options_fail_with_the_choices(kwargs, words):
    model = models.create('vit', num_classes=3, norm=make_norm('layer_norm'), **kwargs)
    with pytest.raises(ValueError, match=words):
        jax.eval_shape(
            lambda x: model.init(jax.random.key(0), x),
            jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32),
        )


def _sublayer_calls(model, x):
    """Calls of norms, attention and MLP in the first block and after it, in order:
    (module path below the model, input, output)."""
    calls = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        kinds = (vit.Attention, vit.MlpBlock, LayerNorm)
        if isinstance(context.module, kinds) and context.method_name == '__call__':
            path = '/'.join(context.module.path)
            if 'attention/' not in path:  # not the q/k norms
                calls.append((path, args[0], out))
        return out

    variables = model.init(jax.random.key(1), x, train=False)
    with nn.intercept_methods(interceptor):
        model.apply(variables, x, train=False)
    return calls


@pytest.mark.parametrize(
    ('placement', 'order'),
    [
        ('post', ['attention', 'attention_norm', 'mlp', 'mlp_norm']),
        ('pre', ['attention_norm_in', 'attention', 'mlp_norm_in', 'mlp', 'final_norm']),
        (
            'peri',
            [
                'attention_norm_in',
                'attention',
                'attention_norm_out',
                'mlp_norm_in',
                'mlp',
                'mlp_norm_out',
                'final_norm',
            ],
        ),
        ('none', ['attention', 'mlp']),
    ],
)
def test_norms_sit_where_the_papers_put_them(placement, order):
    """The call order, and what each norm reads: the residual sum (post), the stream
    (pre/peri inputs) or the sublayer's output (peri outputs)."""
    model = _tiny('layer_norm', norm_placement=placement)
    x, _ = _batch()
    calls = _sublayer_calls(model, x)
    names = [path.removeprefix('block1/') for path, _, _ in calls]
    assert names == order
    seen = {name: (inp, out) for name, (_, inp, out) in zip(names, calls, strict=True)}
    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
    attn_in, attn_out = seen['attention']
    mlp_in, mlp_out = seen['mlp']
    if placement == 'post':
        stream = seen['attention_norm'][0] - attn_out  # the block input
        close(attn_in, stream)
        close(seen['mlp_norm'][0], mlp_in + mlp_out)
        close(mlp_in, seen['attention_norm'][1])
    if placement in ('pre', 'peri'):
        close(attn_in, seen['attention_norm_in'][1])
        close(mlp_in, seen['mlp_norm_in'][1])
        stream = seen['attention_norm_in'][0]
        added = seen['attention_norm_out'][1] if placement == 'peri' else attn_out
        close(seen['mlp_norm_in'][0], stream + added)
    if placement == 'peri':
        close(seen['attention_norm_out'][0], attn_out)
        close(seen['mlp_norm_out'][0], mlp_out)
    if placement == 'none':
        close(mlp_in, attn_in + attn_out)


def test_post_ln_residual_stream_is_normalized_and_diagnostics_stack_by_layer():
    model = models.create(
        'vit', num_classes=5, norm=make_norm('layer_norm'), patch_size=2, width=16, depth=2
    )
    x, _ = _batch()
    for placement in ('post', 'pre'):
        model = model.clone(norm_placement=placement)
        variables = model.init(jax.random.key(1), x, train=False)
        _, state = model.apply(variables, x, train=False, mutable=['intermediates'])
        sown = state['intermediates']['block2']
        # Per example, as the trainer's record_preactivations gathers them over a batch.
        assert sown['residual_rms'][0].shape == sown['attention']['max_logit'][0].shape == (4,)
        d = vit.diagnostics(state['intermediates'])
        assert d['residual_rms'].shape == d['max_logit'].shape == (2,)
        if placement == 'post':  # every block ends in a unit-scale LayerNorm
            np.testing.assert_allclose(d['residual_rms'], 1.0, rtol=1e-3)
        else:
            assert (d['residual_rms'] > 0).all() and not np.allclose(d['residual_rms'], 1.0)
    assert 'intermediates' not in variables  # recorded only when asked for


@pytest.mark.parametrize('norm_name', ['layer_norm', 'rms_norm'])
def test_qk_norm_bounds_the_attention_logits(norm_name):
    """With unit-scale LayerNorm/RMSNorm on q and k, |q| = |k| = sqrt(head_dim) at most,
    so q.k / sqrt(head_dim) <= sqrt(head_dim); without it large q/k weights pass through."""
    head_dim = 8
    x, _ = _batch()
    logits = {}
    for qk_norm in (False, True):
        model = models.create(
            'vit',
            num_classes=5,
            norm=make_norm(norm_name),
            patch_size=2,
            width=2 * head_dim,
            depth=2,
            num_heads=2,
            qk_norm=qk_norm,
        )
        variables = model.init(jax.random.key(1), x, train=False)
        params = jax.tree_util.tree_map_with_path(
            lambda path, p: 30 * p if len(path) > 2 and path[-2].key in ('query', 'key') else p,
            variables['params'],
        )
        _, state = model.apply({'params': params}, x, train=False, mutable=['intermediates'])
        logits[qk_norm] = vit.diagnostics(state['intermediates'])['max_logit']
    bound = math.sqrt(head_dim)
    assert (logits[True] <= bound * (1 + 1e-5)).all() and (logits[True] > 0.3 * bound).all()
    assert (logits[False] > 10 * bound).all()


# Which examples and tokens of a (batch, tokens, features) stream one changed token
# reaches, per norm (module docstring of normlab.models.vit).
TOKEN_ONLY, EXAMPLE, BATCH = 'token', 'example', 'batch'
REACH = {
    'layer_norm': TOKEN_ONLY,
    'rms_norm': TOKEN_ONLY,
    'group_norm': TOKEN_ONLY,
    'dyt': TOKEN_ONLY,
    'none': TOKEN_ONLY,
    'instance_norm': EXAMPLE,
    'frn': EXAMPLE,
    'evonorm_s0': EXAMPLE,
    'batch_norm': BATCH,
    'batch_renorm': BATCH,
    'evonorm_b0': BATCH,
}


@pytest.mark.parametrize('norm_name', sorted(NORMS))
def test_which_axes_each_norm_reduces_in_a_transformer(norm_name):
    assert set(REACH) == set(NORMS)
    norm = vit.per_token(_norm(norm_name))(use_running_average=False)
    x = jax.random.normal(jax.random.key(0), (3, 4, 6))
    variables = norm.init(jax.random.key(1), x)
    mutable = [c for c in variables if c != 'params']

    def apply(x):
        return norm.apply(variables, x, mutable=mutable)[0] if mutable else norm.apply(variables, x)

    changed = np.any(apply(x.at[0, 0].add(3.0)) != apply(x), axis=-1)
    expected = np.zeros((3, 4), bool)
    expected[{TOKEN_ONLY: (0, 0), EXAMPLE: 0, BATCH: slice(None)}[REACH[norm_name]]] = True
    np.testing.assert_array_equal(changed, expected)


def test_study_smoke_grid_end_to_end(tmp_path):
    workdir = str(tmp_path / 'runs')
    env = {
        **os.environ,
        'PYTHONPATH': REPO,
        'WANDB_MODE': 'offline',
        'XLA_FLAGS': '--xla_force_host_platform_device_count=1',
    }
    proc = subprocess.run(
        [
            sys.executable,
            '-m',
            'normlab.sweep',
            '--config=experiments/transformer_norms.py:smoke=True,seeds=1',
            f'--workdir={workdir}',
            '--parallel=2',
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    with open(os.path.join(workdir, 'results.csv')) as f:
        rows = list(csv.DictReader(f))
    assert all(r['status'] == 'finished' for r in rows) and len(rows) == 2
    for r in rows:
        with open(os.path.join(workdir, r['run'], 'config.json')) as f:
            config = json.load(f)
        options = config['model_options']
        assert (config['norm']['name'], options['norm_placement'], options['qk_norm']) == (
            r['norm.name'],
            r['model_options.norm_placement'],
            r['model_options.qk_norm'] == 'True',
        )
    assert {r['norm.name'] for r in rows} == {'dyt', 'layer_norm'}
    report = open(os.path.join(workdir, 'report.md')).read()
    assert 'DyT, pre-LN: best test error' in report
    assert 'LayerNorm, post-LN, QK-norm: best test error' in report


def _synthetic_findings(highest_rate, error):
    """The study's findings on made-up results: a row trains (loss 0.01) up to
    ``highest_rate(row)`` and fails above (loss 2.0, or diverged at 0.1); its test error
    is ``error(row)``."""
    study = load_study('experiments/transformer_norms.py')
    records = []
    for run in study.runs():
        p = run.point
        row = (p['norm.name'], p['model_options.norm_placement'], p['model_options.qk_norm'])
        ok = p['learning_rate'] <= highest_rate(row)
        summary = {'train/loss': 0.01 if ok else 2.0, 'eval/error': error(row) if ok else 0.8}
        status = 'diverged' if not ok and p['learning_rate'] == 0.1 else 'finished'
        records.append(RunRecord(run.name, status, {**p, 'seed': run.seed}, summary))
    return study.report.findings(Table(study, records))


def test_study_findings_answer_from_the_numbers():
    # QK-norm and pre/peri-LN train up to higher rates; DyT 3 points worse than LayerNorm.
    text = ' '.join(
        _synthetic_findings(
            lambda row: 0.1 if row[2] else (0.03 if row[1] != 'post' else 0.01),
            lambda row: 0.08 if row[0] == 'dyt' else 0.05,
        )
    )
    assert 'DyT is worse than LayerNorm here: 8.0% ± 0.0 against 5.0% ± 0.0' in text
    assert 'pre-LN: 3 rates against 2 for post-LN, LR sensitivity 0.57 against 1.07 (wider)' in text
    assert 'QK-norm in post-LN: 4 rates against 2 for without' in text
    assert (
        'LayerNorm, post-LN: best test error 5.0% ± 0.0 at lr 0.003; trains at lr 0.003 to '
        '0.01 (2 of 4 rates), LR sensitivity 1.07; diverged at lr 0.1.' in text
    )
    assert 'does not appear' not in text
    # Everything alike: DyT matches, and the report says the effect does not appear.
    text = ' '.join(_synthetic_findings(lambda row: 0.01, lambda row: 0.05))
    assert 'DyT matches LayerNorm here' in text
    assert 'neither the placement nor QK-norm widens' in text and '(wider)' not in text
