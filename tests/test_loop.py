"""The shared training loop: device-resident data, scan-fused steps, cadence, divergence."""

import glob
import hashlib
import json
import os
import re
import shutil
import signal
import time

import jax
import numpy as np
import pytest

from normlab import data, parallel
from normlab.data import resident
from normlab.train import DivergedError, classifier
from tests.test_train import launch, metrics_only, summary

MLP_ARGS = ['--config=configs/digits_mlp.py:smoke=True']


def mlp_config(**overrides):
    from configs import digits_mlp

    c = digits_mlp.get_config('smoke=True')
    c.wandb.mode = 'disabled'
    for k, v in overrides.items():
        target = c
        *path, last = k.split('.')
        for p in path:
            target = target[p]
        target[last] = v
    return c


def rows(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def final_params(workdir):
    from normlab.train.checkpointing import Checkpointer

    ckpt = Checkpointer(str(workdir), keep=2)
    try:
        step = ckpt.latest_step()
        restored = ckpt.manager.restore(step)
    finally:
        ckpt.close()
    return jax.tree.leaves(restored['params'])


def test_steps_per_call_changes_no_number(tmp_path):
    # 23 steps: calls of 8 are cut at the log steps (8, 16) and at the end (23).
    base = dict(num_train_steps=23, log_every_steps=8, checkpoint_every_steps=8)
    one = classifier.train_and_evaluate(mlp_config(steps_per_call=1, **base), str(tmp_path / '1'))
    eight = classifier.train_and_evaluate(mlp_config(steps_per_call=8, **base), str(tmp_path / '8'))
    assert metrics_only(one) == metrics_only(eight)
    assert rows(tmp_path / '1') == rows(tmp_path / '8')
    # Identical bits: the scan body computes each step as the single step does.
    for a, b in zip(final_params(tmp_path / '1'), final_params(tmp_path / '8'), strict=True):
        np.testing.assert_array_equal(a, b)


def _image_hashes(images):
    return sorted(hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest() for x in images)


def test_resident_and_streaming_see_the_same_examples_each_epoch():
    mesh = parallel.data_mesh()
    spec = data.get_spec('digits')
    split = resident.load('digits', spec.train_split, mesh)
    n = split.num_examples
    batch = 4  # 1437 = 4 * 359 + 1: batches straddle the epoch boundary
    host_images = np.asarray(jax.device_get(split.images))[:n]
    steps = 2 * n // batch + 1

    def rows_of(seed, step):
        plan = resident.epoch_plan(seed, step, num_batches=1, batch_size=batch, num_examples=n)
        return np.asarray(resident.train_rows(plan, step, batch_size=batch, num_examples=n))

    ids = np.concatenate([rows_of(7, s) for s in range(steps)])
    # One plan for a window of many batches gives the same rows.
    plan = resident.epoch_plan(7, 300, num_batches=200, batch_size=batch, num_examples=n)
    window = [resident.train_rows(plan, s, batch_size=batch, num_examples=n) for s in (300, 499)]
    np.testing.assert_array_equal(np.asarray(window[0]), rows_of(7, 300))
    np.testing.assert_array_equal(np.asarray(window[1]), rows_of(7, 499))
    epoch0, epoch1 = ids[:n], ids[n : 2 * n]
    assert sorted(epoch0) == list(range(n)) and sorted(epoch1) == list(range(n))
    assert (epoch0 != epoch1).any()  # a fresh permutation every epoch
    # The same seed gives the same order; another seed another.
    again, other = rows_of(7, 3), rows_of(8, 3)
    np.testing.assert_array_equal(again, ids[3 * batch : 4 * batch])
    assert (other != again).any()
    # tf.data's epoch 0 holds the same examples (its own order).
    stream = data.train_iterator('digits', global_batch_size=1, seed=7, augment=False)
    streamed = np.stack([next(stream)['image'][0] for _ in range(n)])
    pixels = np.round((streamed * spec.std[0] + spec.mean[0]) * 255).astype(np.uint8)
    assert _image_hashes(pixels) == _image_hashes(host_images[epoch0])


def test_device_batches_are_the_streamed_pipeline_preprocessing():
    mesh = parallel.data_mesh()
    spec = data.get_spec('digits')
    split = resident.load('digits', spec.eval_split, mesh)
    fn = jax.jit(
        jax.shard_map(
            lambda arrays: resident.eval_batch(arrays, 0, split=split, batch_size=360),
            mesh=mesh,
            in_specs=(jax.sharding.PartitionSpec(parallel.DATA_AXIS),),
            out_specs=jax.sharding.PartitionSpec(parallel.DATA_AXIS),
        )
    )
    on_device = jax.device_get(fn(split.arrays))
    streamed = next(data.eval_iterator('digits', global_batch_size=360))
    np.testing.assert_allclose(on_device['image'], streamed['image'], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(on_device['label'], streamed['label'])
    np.testing.assert_array_equal(on_device['mask'], streamed['mask'])


@pytest.mark.parametrize('placement', ['device', 'stream'])
def test_the_same_seed_gives_the_same_run_on_either_path(tmp_path, placement):
    c = mlp_config(data_placement=placement, num_train_steps=10, log_every_steps=5)
    a = classifier.train_and_evaluate(c, str(tmp_path / 'a'))
    b = classifier.train_and_evaluate(c, str(tmp_path / 'b'))
    assert metrics_only(a) == metrics_only(b)


@pytest.mark.slow
@pytest.mark.parametrize('placement', ['device', 'stream'])
def test_sigkill_mid_call_and_resume_equals_uninterrupted(tmp_path, placement):
    steps = ['--config.num_train_steps=600', '--config.checkpoint_every_steps=100']
    args = [
        *MLP_ARGS,
        *steps,
        '--config.log_every_steps=50',
        '--config.steps_per_call=50',
        f'--config.data_placement={placement}',
    ]
    c = mlp_config(
        num_train_steps=600,
        checkpoint_every_steps=100,
        log_every_steps=50,
        steps_per_call=50,
        data_placement=placement,
    )
    classifier.train_and_evaluate(c, str(tmp_path / 'full'))
    killed = tmp_path / 'killed'
    proc = launch([*args, f'--workdir={killed}'], background=True)
    deadline = time.time() + 120
    while time.time() < deadline and not glob.glob(str(killed / 'checkpoints' / '[1-9]*')):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / 'summary.json').exists()
    launch([*args, f'--workdir={killed}'])
    assert metrics_only(summary(killed)) == metrics_only(summary(tmp_path / 'full'))
    assert rows(killed) == rows(tmp_path / 'full')


def test_divergence_inside_a_call_names_the_first_bad_step(tmp_path):
    found = []
    for k in (1, 25):
        c = mlp_config(
            learning_rate=1e6,
            num_train_steps=50,
            log_every_steps=25,
            checkpoint_every_steps=10,
            steps_per_call=k,
        )
        workdir = tmp_path / str(k)
        with pytest.raises(DivergedError, match=r'diverged at step \d+') as info:
            classifier.train_and_evaluate(c, str(workdir))
        s = summary(workdir)
        assert s['status'] == 'diverged' and s['steps'] == info.value.step
        assert rows(workdir)[-1]['step'] == info.value.step  # logged up to that step
        kept = [int(os.path.basename(p)) for p in glob.glob(str(workdir / 'checkpoints' / '*'))]
        assert all(step < info.value.step for step in kept)
        found.append(info.value.step)
    assert found[0] == found[1], found


def test_divergence_before_any_checkpoint_says_so(tmp_path):
    c = mlp_config(learning_rate=1e6, num_train_steps=50, checkpoint_every_steps=40)
    with pytest.raises(DivergedError, match='no checkpoint had been written yet'):
        classifier.train_and_evaluate(c, str(tmp_path))
    assert summary(tmp_path)['checkpoint'] is None


def test_a_finished_run_is_reported_and_left_untouched(tmp_path):
    c = mlp_config()
    first = classifier.train_and_evaluate(c, str(tmp_path))
    before = open(tmp_path / 'metrics.jsonl').read(), open(tmp_path / 'summary.json').read()
    again = classifier.train_and_evaluate(c, str(tmp_path))
    assert again == json.loads(before[1]) and again['eval/error'] == first['eval/error']
    assert (
        open(tmp_path / 'metrics.jsonl').read(),
        open(tmp_path / 'summary.json').read(),
    ) == before


def test_eval_steps_evaluate_the_initial_weights_and_grad_norms_per_layer(tmp_path):
    c = mlp_config(eval_steps=(0, 3), record_grad_norms=True, steps_per_call=4)
    classifier.train_and_evaluate(c, str(tmp_path))
    logged = rows(tmp_path)
    evals = [r['step'] for r in logged if 'eval/error' in r]
    assert evals == [0, 3, 6]
    assert logged[0]['eval/error'] > 0.5  # untrained weights guess
    train_rows = [r for r in logged if 'train/loss' in r]
    layers = sorted(k for k in train_rows[0] if k.startswith('grad_norm/'))
    assert layers and all(train_rows[0][k] > 0 for k in layers), train_rows[0]


@pytest.mark.parametrize('steps_per_call', [1, 3])
def test_every_eval_mode_on_device_resident_data(tmp_path, steps_per_call):
    c = mlp_config(eval_modes='running,precise,batch', steps_per_call=steps_per_call)
    s = classifier.train_and_evaluate(c, str(tmp_path))
    for prefix in ('eval', 'eval_precise', 'eval_batch'):
        assert 0 <= s[f'{prefix}/error'] <= 1 and s[f'{prefix}/examples'] == 360, s
    # Precise statistics differ from the running averages after 6 steps of EMA 0.9.
    assert s['eval_precise/loss'] != s['eval/loss']


def test_online_wandb_without_network_logs_offline_without_waiting(tmp_path, monkeypatch):
    from normlab.logging import WandbRun

    monkeypatch.setenv('WANDB_API_KEY', 'x' * 40)  # credentials, but this machine has no network
    monkeypatch.setenv('WANDB_MODE', 'online')
    c = mlp_config(**{'wandb.mode': 'online'})
    t0 = time.perf_counter()
    run = WandbRun(c, str(tmp_path))
    started = time.perf_counter() - t0
    run.finish()
    assert run.mode == 'offline' and started < 20, (run.mode, started)
    assert glob.glob(str(tmp_path / 'wandb' / 'offline-run-*'))


def _damage(newest, how):
    if how == 'truncated data':
        for path in glob.glob(str(newest / 'default' / '**' / 'd' / '*'), recursive=True):
            with open(path, 'r+b') as f:
                f.truncate(os.path.getsize(path) // 2)
    elif how == 'no _METADATA':
        os.remove(newest / 'default' / '_METADATA')
    elif how == 'no default/':
        shutil.rmtree(newest / 'default')
    elif how == 'non-finite values':
        import orbax.checkpoint as ocp

        with ocp.StandardCheckpointer() as ckptr:
            state = ckptr.restore(newest / 'default')
            state['opt_state'] = jax.tree.map(lambda x: x * np.nan, state['opt_state'])
            shutil.rmtree(newest / 'default')
            ckptr.save(newest / 'default', state)


@pytest.mark.parametrize(
    'how', ['truncated data', 'no _METADATA', 'no default/', 'non-finite values']
)
def test_a_damaged_newest_checkpoint_is_moved_aside_and_an_older_one_resumes(tmp_path, how):
    c = mlp_config()  # 6 steps, checkpoints at 3 and 6
    full = classifier.train_and_evaluate(c, str(tmp_path / 'full'))
    run = tmp_path / 'run'
    classifier.train_and_evaluate(c, str(run))
    os.remove(run / 'summary.json')  # as a kill after the last checkpoint leaves it
    _damage(run / 'checkpoints' / '6', how)
    resumed = classifier.train_and_evaluate(c, str(run))
    assert metrics_only(resumed) == metrics_only(full)
    assert (run / 'checkpoints' / 'damaged-6').is_dir()  # kept, not deleted
    assert rows(run) == rows(tmp_path / 'full')


def test_a_second_run_on_a_busy_workdir_is_refused(tmp_path):
    from normlab.train import ConfigError, loop

    with loop.owned(str(tmp_path)):
        with pytest.raises(ConfigError, match='is in use by another run'):
            classifier.train_and_evaluate(mlp_config(), str(tmp_path))
    # Released: the workdir can be used again, also after a killed owner (the kernel
    # drops a dead process's flock).
    classifier.train_and_evaluate(mlp_config(), str(tmp_path))
    proc = launch(
        [*MLP_ARGS, '--config.num_train_steps=600', f'--workdir={tmp_path / "k"}'], background=True
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / 'k' / 'config.json').exists():
        time.sleep(0.05)
    second = launch(
        [*MLP_ARGS, f'--workdir={tmp_path / "k"}', '--config.num_train_steps=600'], check=False
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert second.returncode == 2 and 'is in use by another run' in second.stderr
    assert len([x for x in second.stderr.splitlines() if x.startswith('error:')]) == 1
    launch([*MLP_ARGS, f'--workdir={tmp_path / "k"}', '--config.num_train_steps=600'])


def _finalized(directory) -> list[str]:
    """Checkpoint steps orbax has finished writing (it writes under a temporary name)."""
    return [name for name in os.listdir(directory) if name.isdigit()] if directory.is_dir() else []


def test_ctrl_c_says_in_one_line_where_the_run_stopped(tmp_path):
    workdir = tmp_path / 'run'
    args = [*MLP_ARGS, '--config.num_train_steps=1000000', '--config.checkpoint_every_steps=100']
    proc = launch([*args, f'--workdir={workdir}'], background=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not _finalized(workdir / 'checkpoints'):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()  # a no-op once it has exited
        proc.communicate()
    assert proc.returncode == 130
    assert 'Traceback' not in stderr
    last = stderr.strip().splitlines()[-1]
    match = re.fullmatch(
        r'stopped: interrupted during step (\d+) of 1000000; run the same command again to '
        r'resume from the checkpoint at step (\d+)',
        last,
    )
    assert match, last
    stopped, kept = map(int, match.groups())
    assert kept % 100 == 0 and 100 <= kept < stopped
    assert (workdir / 'checkpoints' / str(kept)).is_dir()
    assert not (workdir / 'summary.json').exists()
