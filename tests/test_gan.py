"""GAN training end to end on digits, resume, bad configs (the metrics: test_metrics.py).

Runs on the 4 simulated CPU devices of conftest.py, so every cross-device reduction
of the GAN step is exercised. The feature classifier is trained once (a few steps)
into a cache shared by the tests here, and they share one persistent XLA compilation
cache: the end-to-end runs compile the same step as the step test, so after the
first compile they only look it up (this is what makes them fast on 2 CPU cores).
"""

import glob
import json
import os
import shutil

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache as cc

from configs import digits_dcgan
from normlab import data, parallel
from normlab.train import ConfigError, gan, registry
from normlab.train.checkpointing import Checkpointer
from normlab.train.gan import feature_classifier
from tests.wandb_records import read_records

TIMING = ('wall_s', 'compile_s', 'examples_per_s', 'train_s')


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('normlab_cache'))


@pytest.fixture(scope='module', autouse=True)
def compilation_cache(tmp_path_factory):
    before = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
    )
    jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('xla')))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    cc.reset_cache()  # the cache is set up at the first compile of the session
    yield
    jax.config.update('jax_compilation_cache_dir', before[0])
    jax.config.update('jax_persistent_cache_min_compile_time_secs', before[1])
    cc.reset_cache()


def smoke_config(cache_dir, **overrides):
    """The smoke config with every kind of state: batch norm in both networks,
    spectral norm in D too, class-conditional, EMA."""
    c = digits_dcgan.get_config('smoke=True,conditional=True')
    c.discriminator.spectral_norm = True
    c.eval.cache_dir = cache_dir
    c.wandb.mode = 'disabled'
    for key, value in overrides.items():
        target = c
        *path, last = key.split('.')
        for p in path:
            target = target[p]
        target[last] = value
    return c


# --- the feature network ----------------------------------------------------------------


def test_the_rotation_task_of_unlabelled_datasets():
    # CelebA has no labels: its feature network learns which rotation was applied.
    images = np.random.default_rng(0).normal(size=(3, 4, 4, 1)).astype(np.float32)
    batch = {'image': images, 'mask': np.ones(3, np.float32)}
    every = feature_classifier._as_task(batch, lambda x: x, 'rotation', None)
    np.testing.assert_array_equal(every['label'], np.repeat(np.arange(4), 3))
    for i, k in enumerate(every['label']):
        np.testing.assert_array_equal(every['image'][i], np.rot90(images[i % 3], k))
    assert feature_classifier.task_of(data.get_spec('celeb_a')) == 'rotation'
    assert feature_classifier.task_of(data.get_spec('digits')) == 'labels'


# --- the train step ----------------------------------------------------------------------


def test_gan_steps_change_both_networks_and_their_norm_statistics(cache_dir):
    from normlab.train import steps as multi_step

    c = smoke_config(cache_dir, **{'divergence.d_loss_floor': 1e9})
    mesh = parallel.data_mesh()
    generator, discriminator = gan.build_networks(c)
    g_tx, d_tx = gan.build_optimizers(c)
    state = gan.init_state(c, generator, discriminator, g_tx, d_tx, mesh)
    before = jax.device_get(state)
    k = 3
    step = multi_step.make_train_call(
        gan._step_fn(c, generator, discriminator, g_tx, d_tx), mesh, steps_per_call=k, batch_fn=None
    )
    host = multi_step.HostBatches(gan._real_batches(c, 0), mesh, k)
    state, metrics = step(state, host.take(k), np.int32(c.seed), np.int32(k))
    metrics = jax.tree.map(lambda m: m[-1], metrics)
    after = jax.device_get(state)
    metrics = jax.device_get(metrics)
    assert int(after.step) == 3 and int(after.discriminator.step) == 3
    assert int(after.collapsed_steps) == 3  # every d_loss is below the 1e9 floor
    for key in ('train/d_loss', 'train/g_loss', 'train/d_grad_norm', 'train/g_grad_norm'):
        assert np.isfinite(metrics[key]) and metrics[key] > 0, (key, metrics)

    def changed(a, b):
        return all(
            not np.allclose(x, y)
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        )

    assert changed(before.generator.params, after.generator.params)
    assert changed(before.discriminator.params, after.discriminator.params)
    assert changed(
        before.generator.model_state['batch_stats'], after.generator.model_state['batch_stats']
    )
    assert changed(
        before.discriminator.model_state['batch_stats'],
        after.discriminator.model_state['batch_stats'],
    )
    assert changed(
        before.discriminator.model_state['spectral_stats'],
        after.discriminator.model_state['spectral_stats'],
    )
    assert changed(before.ema_params['project'], after.ema_params['project'])
    # The conditional generator's per-class scales moved too.
    assert changed(
        before.generator.params['norm0']['scale'], after.generator.params['norm0']['scale']
    )


# --- end to end: files, resume, divergence -----------------------------------------------


def read_summary(workdir):
    with open(os.path.join(workdir, 'summary.json')) as f:
        return json.load(f)


def restored_state(config, workdir):
    mesh = parallel.data_mesh()
    generator, discriminator = gan.build_networks(config)
    g_tx, d_tx = gan.build_optimizers(config)
    like = gan.init_state(config, generator, discriminator, g_tx, d_tx, mesh)
    ckpt = Checkpointer(workdir, keep=2)
    try:
        return jax.device_get(ckpt.restore(like))
    finally:
        ckpt.close()


def test_resume_equals_uninterrupted_and_writes_the_run_files(cache_dir, tmp_path):
    whole, parts = str(tmp_path / 'whole'), str(tmp_path / 'parts')
    s = gan.train_and_evaluate(smoke_config(cache_dir, **{'wandb.mode': 'offline'}), whole)
    assert s['status'] == 'finished' and s['steps'] == 4
    for key in (
        'eval/frechet_distance',
        'eval/label_entropy',
        'eval/class_consistency',
        'eval/classifier_accuracy',
    ):
        assert np.isfinite(s[key]) and s[key] >= 0, (key, s)
    assert 0 <= s['eval/label_entropy'] <= np.log(10) + 1e-9
    for name in ('config.json', 'metrics.jsonl', 'summary.json', 'samples.png', 'wandb'):
        assert os.path.exists(os.path.join(whole, name)), name
    assert os.path.exists(os.path.join(whole, 'samples', 'step_0000004.png'))
    rows = [json.loads(line) for line in open(os.path.join(whole, 'metrics.jsonl'))]
    assert [r['step'] for r in rows if 'train/d_loss' in r] == [2, 4]
    # The offline W&B run got the tags, the losses, the final metrics and the samples.
    (path,) = glob.glob(os.path.join(whole, 'wandb', 'offline-run-*', 'run-*.wandb'))
    records = read_records(path)
    run = next(r.run for r in records if r.WhichOneof('record_type') == 'run')
    assert {'gan', 'g_norm:batch_norm', 'd_norm:batch_norm+spectral'} <= set(run.tags)
    logged = {
        i.key or '/'.join(i.nested_key)
        for r in records
        if r.WhichOneof('record_type') == 'history'
        for i in r.history.item
    }
    assert {'train/d_loss', 'train/g_loss', 'eval/frechet_distance'} <= logged
    assert any(key.startswith('samples') for key in logged), sorted(logged)

    # "Interrupted" after step 2: the run's files as a kill after that checkpoint leaves
    # them, then the same command again.
    gan.train_and_evaluate(smoke_config(cache_dir), parts)
    shutil.rmtree(os.path.join(parts, 'checkpoints', '4'))
    os.remove(os.path.join(parts, 'summary.json'))
    resumed = gan.train_and_evaluate(smoke_config(cache_dir), parts)
    assert {k: v for k, v in resumed.items() if k not in TIMING} == {
        k: v for k, v in s.items() if k not in TIMING
    }
    a, b = (
        restored_state(smoke_config(cache_dir), whole),
        restored_state(smoke_config(cache_dir), parts),
    )
    assert int(a.step) == int(b.step) == 4
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_collapsed_discriminator_is_reported_not_hidden(cache_dir, tmp_path):
    from normlab.train import DivergedError

    # A floor every loss is under: each step counts towards collapse.
    c = smoke_config(cache_dir, **{'divergence.d_loss_floor': 1e9, 'divergence.patience_steps': 3})
    with pytest.raises(DivergedError, match='diverged at step 3: discriminator collapsed'):
        gan.train_and_evaluate(c, str(tmp_path))
    s = read_summary(str(tmp_path))
    assert s['status'] == 'diverged' and s['steps'] == 3
    assert 'discriminator collapsed' in s['reason']
    assert np.isfinite(s['eval/frechet_distance'])  # the last good state is still evaluated


# --- bad configs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    'overrides, message',
    [
        ({'loss': 'wasserstein'}, "loss='wasserstein' is not valid; choose one of: non_saturating"),
        (
            {'discriminator.norm.name': 'batch_norm', 'discriminator.r1_weight': 10.0},
            'normalizes with batch statistics',
        ),
        (
            {'generator.ema_decay': 0.999, 'generator.eval_norm_stats': 'running'},
            "use eval_norm_stats='batch'",
        ),
        ({'generator.norm.name': 'batch_nrom'}, "generator.norm.name='batch_nrom' is not valid"),
        ({'dataset': 'celeb_a', 'conditional': True}, 'conditional=True needs labels'),
        ({'image_size': 6}, 'DCGAN needs an even image size of at least 8'),
        ({'batch_size': 6}, 'not divisible by the 4 devices'),
        ({'divergence.patience_steps': None}, 'set both'),
        # Found by tracing the train step on the 4-device mesh, still before compiling.
        ({'generator.norm.virtual_batch_size': 3}, 'does not divide the local batch of 4'),
        (
            {'discriminator.norm.name': 'group_norm', 'discriminator.norm.num_groups': 3},
            'GroupNorm(num_groups=3) does not divide the 16 channels',
        ),
    ],
)
def test_bad_configs_fail_in_one_line_before_compiling(cache_dir, tmp_path, overrides, message):
    c = smoke_config(cache_dir, **overrides)
    with pytest.raises(ConfigError, match=None) as info:
        gan.validate(c, str(tmp_path))
    text = str(info.value)
    assert message in text and '\n' not in text, text


def test_the_launcher_sends_configs_with_a_generator_to_the_gan_trainer(cache_dir):
    assert registry.trainer_for(smoke_config(cache_dir)) is gan.train_and_evaluate


def test_the_gan_norms_smoke_study_tabulates_spectral_norm_as_a_discriminator_column(tmp_path):
    from tests.test_claim_studies import sweep_in_process

    workdir = str(tmp_path / 'runs')
    # One seed: four runs (the CPU time of this test), and a verdict that cannot vary.
    out = sweep_in_process('experiments/gan_norms.py:smoke=True,seeds=1', workdir)
    report = open(os.path.join(workdir, 'report.md')).read()
    for metric in ('eval/frechet_distance', 'eval/label_entropy'):
        table = report.split(f'### {metric}\n\n')[1].split('\n\n')[0].splitlines()
        cells = [[c.strip() for c in line.strip('|').split('|')] for line in table]
        assert cells[0] == ['G norm \\ D norm', 'batch_norm', 'spectral'], table
        assert [row[0] for row in cells[2:]] == ['batch_norm', 'none'], table
        for row in cells[2:]:  # every cell filled: the seed's value, or div.
            assert all(c[0].isdigit() or c.startswith('div.') for c in row[1:]), table
    for name in (
        'eval_frechet_distance.png',
        'heatmap_frechet_distance.png',
        'heatmap_label_entropy.png',
        'heatmap_diverged.png',
        'frechet_distance_over_training.png',
    ):
        assert name in out.plot_paths and os.path.getsize(os.path.join(workdir, name)) > 1000
    assert out.findings[0].startswith('Frechet distance over its floor (real test vs train')
    assert any(f.startswith('Failed runs per discriminator norm') for f in out.findings)
    assert 'seed noise cannot be estimated' in out.findings[-1], out.findings


def _records(fd_by_d, spread=0.05, diverged=()):
    """The full grid's runs with Frechet distance ``fd_by_d[d] (+- spread by seed)`` times
    the floor; ``(g, d, seed)`` in `diverged` diverged."""
    import experiments.gan_norms as gan_norms
    from normlab.studies.results import RunRecord
    from normlab.studies.study import load_study

    study = load_study('experiments/gan_norms.py:seeds=3')
    records = []
    for r in study.runs():
        d = gan_norms.d_label(r.point)
        key = (r.point[gan_norms.G_KEY], d, r.seed)
        summary = {
            gan_norms.FD: 0.25 * (fd_by_d[d] + spread * (r.seed - 1)),
            gan_norms.FLOOR: 0.25,
            gan_norms.ENTROPY: 2.29,
            'steps': 2500,
        }
        status = 'diverged' if key in diverged else 'finished'
        records.append(RunRecord(r.name, status, {**r.point, 'seed': r.seed}, summary))
    return study, records


@pytest.mark.parametrize(
    'fd_by_d, diverged, verdict',
    [
        (
            {'batch_norm': 12, 'layer_norm': 11, 'spectral': 9, 'none': 14},
            (),
            'The published effect appears after 2500 generator steps',
        ),
        (
            {'batch_norm': 12, 'layer_norm': 11, 'spectral': 9, 'none': 14},
            (('batch_norm', 'spectral', 0), ('layer_norm', 'spectral', 1)),
            'but LN, BN, no norm fail less often',
        ),
        (
            {'batch_norm': 9.02, 'layer_norm': 11, 'spectral': 9, 'none': 14},
            (),
            'SN and BN differ by less than 2 standard errors',
        ),
        (
            {'batch_norm': 12, 'layer_norm': 8, 'spectral': 9, 'none': 14},
            (),
            'does not appear after 2500 generator steps: LN reaches a lower distance',
        ),
    ],
)
def test_gan_norms_findings_call_spectral_norm_better_only_beyond_seed_noise(
    fd_by_d, diverged, verdict
):
    from normlab.studies.results import Table

    study, records = _records(fd_by_d, diverged=diverged)
    found = study.report.findings(Table(study, records))
    assert found[0].startswith('Frechet distance over its floor') and 'SN 9.0x' in found[0]
    assert verdict in found[-1], found
    sn_vs_none = next(f for f in found if f.startswith('SN minus no norm'))
    difference = float(sn_vs_none.split(': ')[1].split('x')[0])
    assert difference == pytest.approx(9 - 14, abs=0.05), sn_vs_none
    assert 'lower beyond noise with 4,' in sn_vs_none, sn_vs_none


def test_gan_norms_heat_map_cells_show_the_seed_spread(tmp_path):
    import experiments.gan_norms as gan_norms

    assert gan_norms.cell_text((40.0, 42.0), 1, lambda v: f'{v:.3g}') == '41 ± 1.41\n(n=2)\n1 div.'
    assert gan_norms.cell_text((), 2, str) == 'div.\n2 div.'
    study, records = _records({'batch_norm': 12, 'layer_norm': 11, 'spectral': 9, 'none': 14})
    paths = study.report.plots(records, str(tmp_path))
    assert paths == [
        'heatmap_frechet_distance.png',
        'heatmap_label_entropy.png',
        'heatmap_diverged.png',
        'frechet_distance_over_training.png',
    ]
