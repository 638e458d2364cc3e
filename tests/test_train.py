"""The training system end to end: real digits, resume, devices, processes, W&B, bad input."""

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest

from normlab.train import ConfigError, DivergedError, classifier
from tests.wandb_records import read_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ('wall_s', 'compile_s', 'examples_per_s', 'train_s')


def digits_config(**overrides):
    from configs import digits_cnn

    c = digits_cnn.get_config('smoke=True')
    c.wandb.mode = 'disabled'  # the W&B test turns it on
    for k, v in overrides.items():
        target = c
        *path, last = k.split('.')
        for p in path:
            target = target[p]
        target[last] = v
    return c


def launch(args, *, devices=4, env=None, check=True, **kwargs):
    """Runs the launcher in a fresh process (its own XLA device count)."""
    full_env = {
        **os.environ,
        'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
        'WANDB_MODE': 'offline',
        'PYTHONPATH': REPO,
        **(env or {}),
    }
    cmd = [sys.executable, '-m', 'normlab.main', *args]
    if kwargs.get('background'):
        return subprocess.Popen(
            cmd,
            env=full_env,
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=default_sigint,
        )
    proc = subprocess.run(cmd, env=full_env, cwd=REPO, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def default_sigint():
    """In a child before exec: Ctrl-C raises KeyboardInterrupt again, even when this
    test session runs in the background, where the shell set SIGINT to be ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def summary(workdir):
    with open(os.path.join(workdir, 'summary.json')) as f:
        return json.load(f)


def metrics_only(s):
    return {k: v for k, v in s.items() if k not in TIMING}


def test_digits_cnn_learns_for_real(tmp_path):
    c = digits_config(num_train_steps=150, batch_size=32, learning_rate=0.05)
    c.model_options.widths = (16, 32)
    c.checkpoint_every_steps = 100
    c.log_every_steps = 50
    s = classifier.train_and_evaluate(c, str(tmp_path))
    assert s['status'] == 'finished' and s['steps'] == 150
    assert s['eval/examples'] == 360  # every test digit exactly once
    assert s['eval/error'] < 0.06, s
    rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
    losses = [r['train/loss'] for r in rows if 'train/loss' in r]
    assert losses[-1] < losses[0] / 4
    assert json.load(open(tmp_path / 'config.json'))['norm']['name'] == 'batch_norm'
    assert os.path.isdir(tmp_path / 'checkpoints' / '150')


def test_same_seed_same_summary_and_offline_wandb_run(tmp_path):
    c = digits_config(**{'wandb.group': 'repro', 'study': 'repro', 'wandb.mode': 'offline'})
    a = classifier.train_and_evaluate(c, str(tmp_path / 'a'))
    b = classifier.train_and_evaluate(c, str(tmp_path / 'b'))
    assert metrics_only(a) == metrics_only(b)
    c.seed = 1
    assert metrics_only(classifier.train_and_evaluate(c, str(tmp_path / 'c'))) != metrics_only(a)

    (path,) = glob.glob(str(tmp_path / 'a' / 'wandb' / 'offline-run-*' / 'run-*.wandb'))
    records = read_records(path)
    run = next(r.run for r in records if r.WhichOneof('record_type') == 'run')
    assert run.run_group == 'repro'
    assert {'norm:batch_norm', 'model:cnn', 'dataset:digits', 'study:repro'} <= set(run.tags)
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config['norm.name'] == 'batch_norm' and config['batch_size'] == 32
    history = [
        {(i.key or '/'.join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof('record_type') == 'history'
    ]
    assert any('train/loss' in h for h in history)
    assert any(h.get('eval/error') == pytest.approx(a['eval/error']) for h in history)


def test_init_takes_any_seed_and_seeds_decide_the_weights():
    from normlab import parallel
    from normlab.train import optim

    c = digits_config()
    model, mesh = classifier.build_model(c, 10), parallel.data_mesh()
    tx = optim.make_optimizer(c, 10, 10)
    states = []
    for seed in (0, 2**31 + 5, 0):  # past int32
        c.seed = seed
        states.append(classifier.init_state(c, model, tx, mesh, (8, 8, 1)).params)
    leaves = [jax.tree.leaves(p) for p in states]
    assert all((a == b).all() for a, b in zip(leaves[0], leaves[2], strict=True))
    assert any((a != b).any() for a, b in zip(leaves[0], leaves[1], strict=True))


def test_cpu_fusion_off_reaches_the_compiled_step_and_changes_no_number(tmp_path):
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from normlab import parallel
    from normlab.train import optim, steps
    from normlab.train.classifier import steps as classifier_steps

    c = digits_config(xla_cpu_fusion=False)
    assert steps.compiler_options(c) == {'xla_disable_hlo_passes': 'fusion'}
    assert steps.compiler_options(digits_config()) is None
    model, mesh = classifier.build_model(c, 10), parallel.data_mesh()
    tx = optim.make_optimizer(c, 10, 10)
    state = classifier.init_state(c, model, tx, mesh, (8, 8, 1))
    n = c.batch_size
    stacked = NamedSharding(mesh, P(None, parallel.DATA_AXIS))
    batch = {
        'image': jax.device_put(np.zeros((1, n, 8, 8, 1), np.float32), stacked),
        'label': jax.device_put(np.zeros((1, n), np.int32), stacked),
        'mask': jax.device_put(np.ones((1, n), np.float32), stacked),
    }
    step_fn = classifier_steps.train_step_fn(model, tx, lambda state: 0.1)
    for config, fused in ((c, False), (digits_config(), True)):
        step = steps.make_train_call(
            step_fn, mesh, steps_per_call=1, batch_fn=None, options=steps.compiler_options(config)
        )
        args = (state, batch, np.int32(0), np.int32(1))
        hlo = step.lower(*args).compile().as_text()
        # Fusions XLA's pass makes are named after their ops (`add_multiply_fusion`);
        # without it only single wrapped ops and library (YNNPACK) fusions remain.
        names = set(re.findall(r'%([a-z_]+_fusion)[.\d]* = ', hlo)) - {'ynn_fusion'}
        assert bool(names) == fused, names
    off = classifier.train_and_evaluate(c, str(tmp_path / 'off'))
    on = classifier.train_and_evaluate(digits_config(), str(tmp_path / 'on'))
    assert off['eval/error'] == pytest.approx(on['eval/error'], abs=1 / 360)
    assert off['train/loss'] == pytest.approx(on['train/loss'], rel=1e-4)


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted(tmp_path):
    args = [
        '--config=configs/digits_cnn.py:smoke=True',
        '--config.num_train_steps=60',
        '--config.checkpoint_every_steps=10',
        '--config.log_every_steps=10',
    ]
    c = digits_config(num_train_steps=60, checkpoint_every_steps=10, log_every_steps=10)
    classifier.train_and_evaluate(c, str(tmp_path / 'full'))
    killed = tmp_path / 'killed'
    proc = launch([*args, f'--workdir={killed}'], background=True)
    deadline = time.time() + 120
    while time.time() < deadline and not glob.glob(str(killed / 'checkpoints' / '[1-9]*')):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / 'summary.json').exists()
    launch([*args, f'--workdir={killed}'])
    assert metrics_only(summary(killed)) == metrics_only(summary(tmp_path / 'full'))
    steps = [json.loads(line)['step'] for line in open(killed / 'metrics.jsonl')]
    assert steps == sorted(steps)  # rows past the checkpoint were not duplicated


def test_four_devices_equal_one_device_for_global_bn(tmp_path):
    assert jax.device_count() == 4
    c = digits_config(num_train_steps=20)
    four = classifier.train_and_evaluate(c, str(tmp_path / 'four'))
    launch(
        [
            '--config=configs/digits_cnn.py:smoke=True',
            '--config.num_train_steps=20',
            f'--workdir={tmp_path / "one"}',
        ],
        devices=1,
    )
    one = summary(tmp_path / 'one')
    assert one['eval/error'] == pytest.approx(four['eval/error'], abs=1 / 360)
    assert one['train/loss'] == pytest.approx(four['train/loss'], rel=1e-3)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_four_devices(tmp_path):
    common = ['--config=configs/digits_cnn.py:smoke=True', '--config.num_train_steps=12']
    port = _free_port()
    procs = [
        launch(
            [
                *common,
                f'--workdir={tmp_path / "multi"}',
                f'--coordinator_address=127.0.0.1:{port}',
                '--num_processes=2',
                f'--process_id={i}',
            ],
            devices=2,
            background=True,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    single = classifier.train_and_evaluate(digits_config(num_train_steps=12), str(tmp_path / 's'))
    multi = summary(tmp_path / 'multi')
    assert multi['eval/error'] == pytest.approx(single['eval/error'], abs=1 / 360)
    assert multi['train/loss'] == pytest.approx(single['train/loss'], rel=1e-4)


def test_non_finite_loss_stops_with_the_step_and_keeps_checkpoint(tmp_path):
    c = digits_config(learning_rate=1e8, num_train_steps=30, checkpoint_every_steps=1)
    c.log_every_steps = 1
    with pytest.raises(DivergedError, match='at step'):
        classifier.train_and_evaluate(c, str(tmp_path))
    assert summary(tmp_path)['status'] == 'diverged'
    kept = [int(os.path.basename(p)) for p in glob.glob(str(tmp_path / 'checkpoints' / '*'))]
    assert kept and summary(tmp_path)['steps'] > max(kept)


BAD_CONFIGS = [
    ({'dataset': 'cifar11'}, ['dataset', 'cifar11', 'digits']),
    ({'model': 'resnet21'}, ['resnet21', 'resnet20']),
    ({'norm.name': 'batchnorm'}, ['batchnorm', 'batch_norm']),
    ({'batch_size': 30}, ['batch_size=30', '4 devices']),
    ({'norm.virtual_batch_size': 3}, ['virtual_batch_size=3', 'per-device batch of 8']),
    ({'norm.virtual_batch_size': 24}, ['virtual_batch_size=24']),
    ({'learning_rate': 0.0}, ['learning_rate=0.0']),
    ({'learning_rate': -1.0}, ['learning_rate=-1.0']),
    ({'num_train_steps': 0}, ['num_train_steps=0']),
    ({'norm.name': 'group_norm', 'norm.num_groups': 5}, ['num_groups=5', '8 channels']),
    ({'eval_modes': 'running,exact'}, ['exact', 'precise']),
]


@pytest.mark.parametrize('overrides,words', BAD_CONFIGS)
def test_bad_config_is_rejected_before_compiling(tmp_path, overrides, words):
    with pytest.raises(ConfigError) as e:
        classifier.validate(digits_config(**overrides), str(tmp_path))
    for w in words:
        assert w in str(e.value), str(e.value)
    assert '\n' not in str(e.value)


def test_workdir_that_is_a_file_or_disagrees_on_the_model(tmp_path):
    path = tmp_path / 'file'
    path.write_text('x')
    with pytest.raises(ConfigError, match='is a file'):
        classifier.validate(digits_config(), str(path))
    classifier.train_and_evaluate(digits_config(num_train_steps=2), str(tmp_path / 'run'))
    with pytest.raises(ConfigError, match='norm'):
        classifier.validate(digits_config(**{'norm.name': 'group_norm'}), str(tmp_path / 'run'))
    # Anything that changes the trajectory is refused, naming the key and both values.
    for key, value, words in [
        ('num_train_steps', 4, 'num_train_steps: saved 2, now 4'),
        ('learning_rate', 0.5, 'learning_rate: saved 0.05, now 0.5'),
        ('optimizer', 'adam', "optimizer: saved 'sgd', now 'adam'"),
        ('batch_size', 16, 'batch_size: saved 32, now 16'),
        ('schedule', 'constant', "schedule: saved 'cosine', now 'constant'"),
    ]:
        with pytest.raises(ConfigError) as e:
            classifier.validate(
                digits_config(**{'num_train_steps': 2, key: value}), str(tmp_path / 'run')
            )
        assert words in str(e.value) and '\n' not in str(e.value), str(e.value)
    # Logging cadence and W&B settings cannot change results: a legitimate resume.
    classifier.validate(
        digits_config(num_train_steps=2, log_every_steps=1, **{'wandb.project': 'other'}),
        str(tmp_path / 'run'),
    )


def test_launcher_prints_one_line_and_exits_nonzero(tmp_path):
    typo = launch(
        ['--config=configs/digits_cnn.py', '--config.learning_rat=0.1', f'--workdir={tmp_path}'],
        check=False,
    )
    assert typo.returncode != 0 and 'learning_rate' in typo.stderr
    assert 'Traceback' not in typo.stderr
    bad = launch(
        ['--config=configs/digits_cnn.py', '--config.norm.name=gn', f'--workdir={tmp_path}'],
        check=False,
    )
    assert bad.returncode == 2 and 'Traceback' not in bad.stderr
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith('error:') and "'gn'" in last and 'group_norm' in last
    assert not (tmp_path / 'config.json').exists()  # nothing written for a rejected run
