"""Bundles: runs that differ only in their seed and optimizer scalars train as one
program, each a normal run."""

import glob
import json
import logging
import os
import subprocess
import sys

import jax
import pytest

from normlab.studies import command, runner
from normlab.train import ConfigError, DivergedError, bundle, classifier
from tests.test_train import REPO, TIMING, launch, summary
from tests.wandb_records import read_records

RTOL = 1e-5  # vmapped matmuls may round differently from solo ones, by an ulp or so


def run_argv(workdir, seed, *extra, norm='batch_norm'):
    return [
        f'--config=configs/digits_mlp.py:smoke=True,norm={norm}',
        f'--workdir={workdir}',
        f'--config.seed={seed}',
        '--config.wandb.mode=disabled',
        *extra,
    ]


def solo_and_bundle(tmp_path, seeds, *extra, norm='batch_norm', per_run=None):
    """(solo outcomes, bundled outcomes) of the same commands in two directories;
    ``per_run[i]``: further flags of run i."""
    per_run = per_run or [()] * len(seeds)
    solo, bundled = [], []
    for s, own in zip(seeds, per_run, strict=True):
        argv = run_argv(tmp_path / f'solo{s}', s, *extra, *own, norm=norm)
        try:
            solo.append(classifier.train_and_evaluate(*command.parse(argv)))
        except DivergedError as e:
            solo.append(e)
    parsed = [
        command.parse(run_argv(tmp_path / f'b{s}', s, *extra, *own, norm=norm))
        for s, own in zip(seeds, per_run, strict=True)
    ]
    bundled = classifier.train_bundle([c for c, _ in parsed], [w for _, w in parsed])
    return solo, bundled


def assert_same_numbers(a: dict, b: dict):
    """Equal keys; `eval/error` (and every count) identical, floats within RTOL."""
    assert set(a) == set(b)
    for k in a:
        if k in TIMING:
            continue
        if isinstance(a[k], float) and 'error' not in k:
            assert b[k] == pytest.approx(a[k], rel=RTOL), k
        else:
            assert b[k] == a[k], k


def metrics_rows(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def checkpoint_steps(workdir):
    return sorted(int(os.path.basename(p)) for p in glob.glob(f'{workdir}/checkpoints/[0-9]*'))


@pytest.mark.parametrize('norm', ['batch_norm', 'layer_norm'])
def test_each_bundled_run_equals_its_solo_run(tmp_path, norm):
    assert jax.device_count() == 4
    seeds = (0, 1, 2)
    solo, bundled = solo_and_bundle(tmp_path, seeds, norm=norm)
    assert len({s['eval/loss'] for s in solo}) == len(seeds)  # the seeds make different runs
    for s, a, b in zip(seeds, solo, bundled, strict=True):
        assert_same_numbers(a, b)
        assert_same_numbers(summary(tmp_path / f'solo{s}'), summary(tmp_path / f'b{s}'))
        rows_a, rows_b = metrics_rows(tmp_path / f'solo{s}'), metrics_rows(tmp_path / f'b{s}')
        assert [r['step'] for r in rows_a] == [r['step'] for r in rows_b]
        for ra, rb in zip(rows_a, rows_b, strict=True):
            assert_same_numbers(ra, rb)
        assert checkpoint_steps(tmp_path / f'solo{s}') == checkpoint_steps(tmp_path / f'b{s}')
        with open(tmp_path / f'b{s}' / 'config.json') as f:
            assert json.load(f)['seed'] == s


def test_runs_with_their_own_learning_rate_momentum_and_decay_share_a_bundle(tmp_path):
    """The optimizer's scalars are per-run state: one program, each run its own values."""
    seeds = (0, 1, 2)
    per_run = [
        ('--config.learning_rate=0.02',),
        ('--config.learning_rate=0.3', '--config.momentum=0.5'),
        ('--config.weight_decay=0.01', '--config.momentum=0.99'),
    ]
    solo, bundled = solo_and_bundle(tmp_path, seeds, '--config.schedule=cosine', per_run=per_run)
    for s, a, b in zip(seeds, solo, bundled, strict=True):
        assert_same_numbers(a, b)
        rows_a, rows_b = metrics_rows(tmp_path / f'solo{s}'), metrics_rows(tmp_path / f'b{s}')
        for ra, rb in zip(rows_a, rows_b, strict=True):
            assert_same_numbers(ra, rb)
    lrs = [
        [r['train/lr'] for r in metrics_rows(tmp_path / f'b{s}') if 'train/lr' in r] for s in seeds
    ]
    assert lrs[1][0] == pytest.approx(15 * lrs[0][0], rel=1e-6)  # its own peak, one schedule
    assert lrs[2][0] == pytest.approx(2.5 * lrs[0][0], rel=1e-6)  # the config's 0.05
    with open(tmp_path / 'b1' / 'config.json') as f:
        assert json.load(f)['learning_rate'] == 0.3


ONE_DEVICE = """
import json, sys
from normlab.studies import command
from normlab.train import classifier
from tests.test_bundles import run_argv
out = {}
for norm in ('batch_norm', 'layer_norm'):
    argv = run_argv(f'{sys.argv[1]}/s{norm}', 1, norm=norm)
    solo = classifier.train_and_evaluate(*command.parse(argv))
    parsed = [command.parse(run_argv(f'{sys.argv[1]}/b{norm}{s}', s, norm=norm)) for s in (0, 1)]
    bundled = classifier.train_bundle([c for c, _ in parsed], [w for _, w in parsed])
    out[norm] = [solo, bundled[1]]
print(json.dumps(out))
"""


def test_bundled_equals_solo_on_one_device(tmp_path):
    env = {
        **os.environ,
        'XLA_FLAGS': '--xla_force_host_platform_device_count=1',
        'PYTHONPATH': REPO,
    }
    proc = subprocess.run(
        [sys.executable, '-c', ONE_DEVICE, str(tmp_path)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for solo, bundled in out.values():
        assert_same_numbers(solo, bundled)


def test_what_splits_a_bundle():
    def config(*extra, seed=0):
        return json.loads(command.parse(run_argv('/tmp/x', seed, *extra))[0].to_json())

    configs = [
        config(seed=0),
        config(seed=1),
        config('--config.momentum=0', seed=0),  # no momentum buffer: another program
        config('--config.wandb.group=g', '--config.study=s', seed=2),  # bookkeeping only
        config('--config.batch_size=16', seed=3),  # another program
        config('--config.momentum=0', '--config.learning_rate=0.1', seed=1),
        config('--config.learning_rate=0.1', '--config.weight_decay=0.1'),
        config('--config.weight_decay=0'),  # no decay term: another program
        config('--config.norm.momentum=0.8'),  # a norm's constant: another program
    ]
    assert bundle.group(configs, None) == [[0, 1, 3, 6], [2, 5], [4], [7], [8]]
    assert bundle.group(configs, 3) == [[0, 1, 3], [6], [2, 5], [4], [7], [8]]
    assert bundle.group(configs, 1) == [[i] for i in (0, 1, 3, 6, 2, 5, 4, 7, 8)]
    with pytest.raises(ValueError, match='bundle=0'):
        bundle.group(configs, 0)
    bundle.check_bundle([configs[0], configs[1], configs[3], configs[6]])
    with pytest.raises(ConfigError, match="'momentum'"):
        bundle.check_bundle([configs[0], configs[2]])
    with pytest.raises(ConfigError, match="'batch_size'"):
        bundle.check_bundle([configs[0], configs[4]])
    assert bundle.split_by_memory([4, 5, 6, 7, 8], 100, 250) == [[4, 5], [6, 7], [8]]


def test_sweep_worker_trains_a_bundle_and_one_run_resumes_alone(tmp_path):
    seeds = (0, 1, 2)
    argvs = [run_argv(tmp_path / f'r{s}', s) for s in seeds]
    logs = []
    for s in seeds:
        os.makedirs(tmp_path / f'r{s}')
        logs.append(str(tmp_path / f'r{s}' / 'log.txt'))
    env = {**os.environ, 'PYTHONPATH': REPO}
    slot = runner._Slot(env, True, str(tmp_path / 'worker.log'))
    try:
        replies = slot.run_bundle(argvs, logs)
    finally:
        slot.close()
    assert replies == [('finished', '')] * 3
    with open(logs[0]) as f:
        assert '3 runs in one bundle' in f.read()
    with open(logs[2]) as f:
        assert 'trained in one bundle of 3 runs' in f.read()
    bundled = summary(tmp_path / 'r1')
    # Run 1 alone, from its own mid-run checkpoint, with the plain launcher.
    os.remove(tmp_path / 'r1' / 'summary.json')
    steps = checkpoint_steps(tmp_path / 'r1')
    assert steps == [3, 6]
    for path in glob.glob(str(tmp_path / 'r1' / 'checkpoints' / '6')):
        subprocess.run(['rm', '-r', path], check=True)
    proc = launch(argvs[1])
    assert 'resumed from the checkpoint at step 3' in proc.stderr
    assert_same_numbers(bundled, summary(tmp_path / 'r1'))
    # A run with a checkpoint never joins a bundle: asked to, it resumes alone.
    os.remove(tmp_path / 'r2' / 'summary.json')
    parsed = [command.parse(a) for a in argvs]
    out = classifier.train_bundle([c for c, _ in parsed], [w for _, w in parsed])
    assert [o['status'] for o in out] == ['finished'] * 3


def test_a_diverging_run_stops_alone(tmp_path):
    # No normalization at learning rate 60: seed 0 overflows, seeds 2 and 3 do not.
    extra = ('--config.learning_rate=60', '--config.num_train_steps=20')
    seeds = (2, 0, 3)
    solo, bundled = solo_and_bundle(tmp_path, seeds, *extra, norm='none')
    assert [type(o) for o in solo] == [dict, DivergedError, dict]
    assert [type(o) for o in bundled] == [dict, DivergedError, dict]
    assert bundled[1].step == solo[1].step
    assert_same_numbers(summary(tmp_path / 'solo0'), summary(tmp_path / 'b0'))
    assert summary(tmp_path / 'b0')['status'] == 'diverged'
    assert checkpoint_steps(tmp_path / 'b0') == checkpoint_steps(tmp_path / 'solo0')
    for s, a, b in zip(seeds, solo, bundled, strict=True):
        if s != 0:
            assert_same_numbers(a, b)
            assert checkpoint_steps(tmp_path / f'b{s}')[-1] == 20


def test_bundled_runs_have_their_own_wandb_runs(tmp_path):
    extra = ('--config.wandb.mode=offline', '--config.wandb.group=bundled')
    seeds = (0, 1)
    parsed = [command.parse(run_argv(tmp_path / f'b{s}', s, *extra)) for s in seeds]
    out = classifier.train_bundle([c for c, _ in parsed], [w for _, w in parsed])
    ids = set()
    for s, summ in zip(seeds, out, strict=True):
        (path,) = glob.glob(str(tmp_path / f'b{s}' / 'wandb' / 'offline-run-*' / 'run-*.wandb'))
        records = read_records(path)
        run = next(r.run for r in records if r.WhichOneof('record_type') == 'run')
        ids.add(run.run_id)
        assert run.run_group == 'bundled' and run.display_name == f'b{s}'
        config = {i.key: json.loads(i.value_json) for i in run.config.update}
        assert config['seed'] == s
        history = [
            {(i.key or '/'.join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            for r in records
            if r.WhichOneof('record_type') == 'history'
        ]
        assert [h['train/loss'] for h in history if 'train/loss' in h] == [
            r['train/loss'] for r in metrics_rows(tmp_path / f'b{s}') if 'train/loss' in r
        ]
        assert any(h.get('eval/error') == summ['eval/error'] for h in history)
    assert len(ids) == 2


def test_runs_beyond_the_memory_estimate_train_in_another_bundle(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    parsed = [command.parse(run_argv(tmp_path / f'b{s}', s)) for s in range(3)]
    configs = [c for c, _ in parsed]
    monkeypatch.setattr(bundle, 'STATE_BUDGET_BYTES', 2 * classifier._state_bytes(configs[0]))
    out = classifier.train_bundle(configs, [w for _, w in parsed])
    assert [o['status'] for o in out] == ['finished'] * 3
    assert len({o['eval/loss'] for o in out}) == 3
    descriptions = [r.getMessage() for r in caplog.records if 'params,' in r.getMessage()]
    assert len(descriptions) == 2 and '2 runs in one bundle' in descriptions[0]


def test_a_sweep_bundles_the_seeds_of_each_point(tmp_path):
    from normlab.studies import workflows
    from tests.test_sweep import TINY_STUDY, read_results

    study = tmp_path / 'seeds.py'
    grid_text = (
        "grid.product(grid.axis('norm.name', ['batch_norm']), grid.axis('batch_size', [4, 8]))"
    )
    study.write_text(TINY_STUDY.format(grid=grid_text).replace('seeds=(0,)', 'seeds=(0, 1, 2)'))
    runs = {}
    for cap in (2, 1):
        workdir = str(tmp_path / f'bundle{cap}')
        printed = []
        code = workflows.run_sweep(
            str(study), workdir, bundle=cap, log_wandb=False, echo=printed.append
        )
        assert code == 0, printed
        runs[cap] = {r['run']: r for r in read_results(workdir)}
        logs = {name: open(os.path.join(workdir, name, 'log.txt')).read() for name in runs[cap]}
        in_bundle = {name for name, log in logs.items() if 'trained in one bundle' in log}
        # Seeds 0 and 1 of each point share a program (seed 1's log points to seed 0's).
        assert in_bundle == (
            {f'norm=batch_norm,batch_size={b},seed=1' for b in (4, 8)} if cap == 2 else set()
        )
        again = []
        workflows.run_sweep(str(study), workdir, bundle=cap, log_wandb=False, echo=again.append)
        assert '6 already done, 0 to run' in again[0], again
    assert runs[2].keys() == runs[1].keys()
    for name, row in runs[1].items():
        assert runs[2][name]['status'] == row['status'] == 'finished'
        assert runs[2][name]['eval/error'] == row['eval/error']
