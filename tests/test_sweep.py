"""Studies end to end: a tiny sweep, skip-and-resume, compare, the W&B sweep file, bad studies.

The sweep runs once per module (2 norms x 2 batch sizes x 1 seed of smoke-sized
digits runs); the other tests read or copy its directory.
"""

import csv
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from normlab.studies import grid, load_study, runner, wandb_sweep, workflows
from normlab.studies import study as study_lib
from normlab.studies.command import FlagError, parse, run_flags
from normlab.studies.study import StudyError
from tests.test_train import default_sigint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_GRID = (
    "grid.product(grid.axis('norm.name', ['batch_norm', 'none']), grid.axis('batch_size', [4, 8]))"
)
TINY_STUDY = """
from normlab.studies import Report, Study, grid

def get_study(arg=None):
    return Study(
        name='tiny',
        config='configs/digits_mlp.py:smoke=True',
        grid={grid},
        seeds=(0,),
        fixed={{'num_train_steps': 4}},
        # One device compiles faster than the 4 the test session simulates.
        env={{'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}},
        report=Report(metrics=('eval/error',), x='batch_size', series='norm.name'),
    )
"""


def write_study(directory, grid=TINY_GRID, name='tiny_study.py'):
    path = os.path.join(directory, name)
    with open(path, 'w') as f:
        f.write(TINY_STUDY.format(grid=grid))
    return path


def run_module(module, *args, check=True):
    env = {**os.environ, 'WANDB_MODE': 'offline', 'PYTHONPATH': REPO}
    proc = subprocess.run(
        [sys.executable, '-m', module, *args], env=env, cwd=REPO, capture_output=True, text=True
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def printed_table(stdout):
    """The markdown table lines a sweep or compare printed."""
    return [line for line in stdout.splitlines() if line.startswith('|')]


@pytest.fixture(scope='module')
def swept(tmp_path_factory):
    base = tmp_path_factory.mktemp('sweep')
    study = write_study(str(base))
    workdir = str(base / 'runs')
    proc = run_module('normlab.sweep', f'--config={study}', f'--workdir={workdir}', '--parallel=2')
    return study, workdir, proc


def read_results(workdir):
    with open(os.path.join(workdir, 'results.csv')) as f:
        return list(csv.DictReader(f))


def test_tiny_sweep_writes_runs_results_report_and_plots(swept):
    _, workdir, proc = swept
    rows = read_results(workdir)
    names = {r['run'] for r in rows}
    assert names == {
        f'norm={n},batch_size={b},seed=0' for n in ('batch_norm', 'none') for b in (4, 8)
    }
    for r in rows:
        assert r['status'] == 'finished', r
        assert 0.0 <= float(r['eval/error']) <= 1.0
        assert float(r['wall_s']) > 0
        run_dir = os.path.join(workdir, r['run'])
        with open(os.path.join(run_dir, 'config.json')) as f:
            config = json.load(f)
        assert (config['norm']['name'], config['batch_size']) == (
            r['norm.name'],
            int(r['batch_size']),
        )
        assert config['study'] == 'tiny'  # the W&B group
        with open(os.path.join(run_dir, 'command.sh')) as f:
            assert '-m normlab.main' in f.read()
    report = open(os.path.join(workdir, 'report.md')).read()
    assert '## Findings' in report and 'eval_error.png' in report
    assert '| norm \\ batch_size | 4' in report.replace('  ', ' ')
    assert os.path.getsize(os.path.join(workdir, 'eval_error.png')) > 1000
    assert len(printed_table(proc.stdout)) == 4  # header, rule, one row per norm
    assert os.path.isdir(os.path.join(workdir, 'wandb'))  # the offline summary run


def test_rerun_skips_finished_resumes_interrupted_and_reports_failures(swept, tmp_path):
    _, workdir, _ = swept
    copy = str(tmp_path / 'runs')
    shutil.copytree(workdir, copy)
    before = {r['run']: r for r in read_results(copy)}
    interrupted = 'norm=none,batch_size=4,seed=0'
    # Killed after its last checkpoint, before writing its summary.
    os.remove(os.path.join(copy, interrupted, 'summary.json'))
    # The same study plus a point only the trainer can refuse, when it builds the model
    # (3 groups do not divide the 20 hidden units); bad values are refused up front.
    failing = "{'norm.name': 'group_norm', 'batch_size': 4, 'norm.num_groups': 3}"
    study = write_study(str(tmp_path), f'grid.union({TINY_GRID}, ({failing},))', 'plus.py')

    printed = []
    assert workflows.run_sweep(study, copy, log_wandb=False, echo=printed.append) == 1
    assert '3 already done, 2 to run' in printed[0]
    bad = 'norm=group_norm,batch_size=4,num_groups=3,seed=0'
    assert sorted(line.split(': ')[0][6:] for line in printed if line.startswith('[')) == sorted(
        [interrupted, bad]
    )
    assert any('1 of 5 runs failed' in line for line in printed)
    assert 'resumed from the checkpoint' in open(os.path.join(copy, interrupted, 'log.txt')).read()
    after = {r['run']: r for r in read_results(copy)}
    assert after[bad]['status'] == 'failed' and 'num_groups=3' in after[bad]['message']
    assert bad in open(os.path.join(copy, 'report.md')).read()
    for name, row in before.items():
        assert after[name]['status'] == 'finished'
        # Resuming ends with the uninterrupted run's numbers; skipped runs are untouched.
        assert after[name]['eval/error'] == row['eval/error']
        assert name == interrupted or after[name]['wall_s'] == row['wall_s']


def test_compare_reproduces_the_sweep_table(swept, tmp_path):
    _, workdir, proc = swept
    out_dir = str(tmp_path / 'compare')
    out, count = workflows.compare_local(workdir, out_dir=out_dir)
    assert count == 4
    assert printed_table(out.tables_text) == printed_table(proc.stdout)
    with open(os.path.join(out_dir, 'results.csv')) as a, open(f'{workdir}/results.csv') as b:
        assert a.read() == b.read()
    assert os.path.exists(os.path.join(out_dir, 'eval_error.png'))


def test_emitted_wandb_sweep_parses_and_names_real_config_keys(swept, tmp_path):
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    study = load_study(swept[0])
    path = str(tmp_path / 'sweep.yaml')
    wandb_sweep.write(study, path, 'runs/tiny', 'normlab', None)
    with open(path) as f:
        definition = yaml.safe_load(f)
    assert definition['method'] == 'grid'
    assert definition['command'][-1] == '${args}'
    assert '-m normlab.main' in definition['command'][2]
    known = study_lib.flat_keys(study_lib.load_base_config(study))
    keys = wandb_sweep.parameter_keys(definition)
    assert set(keys) >= {'norm.name', 'batch_size', 'seed', 'num_train_steps', 'study'}
    assert all(k in known for k in keys), keys
    # What an agent would pass for one grid point parses into that point's config.
    params = {
        name: {'value': p['values'][-1] if 'values' in p else p['value']}
        for name, p in definition['parameters'].items()
    }
    flags = create_sweep_command_args({'args': params})['args']
    config, _ = parse([f'--config={study.config_flag}', '--workdir=/tmp/x', *flags])
    assert (config.norm.name, config.batch_size, config.study) == ('none', 8, 'tiny')
    # W&B grids are products: a value derived per point cannot be written, and says so.
    with pytest.raises(StudyError, match="'precise_bn_batches' is derived"):
        wandb_sweep.sweep_definition(load_study('experiments/eval_stats.py'), 'runs/x', 'p', None)


def test_bad_study_files_fail_with_one_clear_line(tmp_path):
    typo = write_study(str(tmp_path), TINY_GRID.replace("'norm.name'", "'norm.nme'"), 'typo.py')
    with pytest.raises(StudyError, match="unknown config key 'norm.nme'.*did you mean 'norm.name'"):
        load_study(typo)
    with pytest.raises(StudyError, match='empty grid'):
        load_study(write_study(str(tmp_path), '()', 'empty.py'))
    wrong_type = write_study(str(tmp_path), TINY_GRID.replace('[4, 8]', "['four']"), 'type.py')
    with pytest.raises(FlagError, match='batch_size=four'):
        runner.plan(load_study(wrong_type), str(tmp_path / 'runs'))
    # From the command line: exit status 2 and one line naming the key and the fix.
    proc = run_module('normlab.sweep', f'--config={typo}', f'--workdir={tmp_path}', check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and 'norm.nme' in errors[0] and 'norm.name' in errors[0], errors


@pytest.mark.parametrize(
    'grid_text, words',
    [
        (
            TINY_GRID.replace("'none'", "'group_nrom'"),
            ["'group_nrom'", "did you mean 'group_norm'"],
        ),
        (TINY_GRID.replace('[4, 8]', '[4, 0]'), ['batch_size=0']),
        (
            TINY_GRID.replace(
                "grid.axis('batch_size', [4, 8])",
                "grid.axis('batch_size', [4, 8]), grid.axis('learning_rate', [0.1, float('inf')])",
            ),
            ['learning_rate=inf'],
        ),
    ],
)
def test_every_grid_point_is_checked_before_any_run_starts(tmp_path, grid_text, words):
    from normlab.studies import workflows

    study = write_study(str(tmp_path), grid_text, 'bad.py')
    workdir = tmp_path / 'runs'
    with pytest.raises(StudyError) as e:
        workflows.run_sweep(study, str(workdir), log_wandb=False, echo=lambda *_: None)
    for w in words:
        assert w in str(e.value), str(e.value)
    assert not workdir.exists() or not any(workdir.iterdir())  # nothing ran


def test_grid_helpers_and_run_names():
    points = grid.product(
        grid.zipped({'norm.name': ['group_norm', 'layer_norm'], 'norm.num_groups': [10, 1]}),
        grid.axis('batch_size', [2, 16]),
    )
    assert points[1] == {'norm.name': 'group_norm', 'norm.num_groups': 10, 'batch_size': 16}
    runs = grid.expand(
        points, seeds=(0, 1), derive=lambda p: {'learning_rate': p['batch_size'] / 10}
    )
    assert len(runs) == 8
    assert runs[0].name == 'norm=group_norm,num_groups=10,batch_size=2,seed=0'
    assert runs[0].overrides['learning_rate'] == 0.2
    assert grid.run_name({'model_options.widths': (100, 100)}, 0) == 'widths=100x100,seed=0'
    assert grid.run_name({'dataset': 'a/b c'}, 1) == 'dataset=a_b_c,seed=1'
    with pytest.raises(ValueError, match='give the run name'):
        grid.expand(grid.union(grid.axis('seed_x', [1]), grid.axis('seed_x', [1])), seeds=(0,))
    assert run_flags('c.py', 'w', {'norm.virtual_batch_size': None, 'augment': False})[2:] == [
        '--config.augment=False'
    ]


def test_categorical_x_is_drawn_as_dodged_unconnected_points(swept):
    import dataclasses

    from normlab.studies import plots, results
    from normlab.studies.study import Report

    spec, workdir, _ = swept
    study = load_study(spec)
    records = results.local_records(study, workdir)

    def data_lines(report):
        table = results.Table(dataclasses.replace(study, report=report), records)
        ax = plots.draw(table, 'eval/error').axes[0]
        lines = [c.lines[0] for c in ax.containers]  # each errorbar's data line
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        return [(list(line.get_xdata()), line.get_linestyle()) for line in lines], ticks

    # Norm names on x: each batch size is a row of points beside the other, unconnected.
    lines, ticks = data_lines(Report(x='norm.name', series='batch_size', log_x=False))
    assert ticks == ['batch_norm', 'none']
    shift = plots.DODGE_SPAN / 4
    assert [[round(x, 6) for x in xs] for xs, _ in lines] == [
        [-shift, 1 - shift],
        [shift, 1 + shift],
    ]
    assert {style for _, style in lines} == {'None'}
    # Batch sizes on x: lines through the values themselves.
    lines, ticks = data_lines(Report(x='batch_size', series='norm.name'))
    assert ticks == ['4', '8'] and lines == [([4, 8], '-'), ([4, 8], '-')]


def test_a_report_axis_replaces_the_grid_keys_it_is_computed_from(swept, tmp_path):
    import dataclasses

    from normlab.studies import Axis, report, results
    from normlab.studies.study import Report, validate

    spec, workdir, _ = swept
    study = load_study(spec)
    records = results.local_records(study, workdir)
    # One axis from two keys: the table has one column per (norm, batch) pair, one row.
    pair = Axis(('norm.name', 'batch_size'), lambda p: f'{p["norm.name"]}@{p["batch_size"]}')
    paired = dataclasses.replace(study, report=Report(x='pair', series=None, axes={'pair': pair}))
    validate(paired)
    table = results.Table(paired, records)
    assert table.axes == ['pair']
    header, rows = report.pivot(table, 'eval/error')
    assert header == ['run \\ pair', 'batch_norm@4', 'batch_norm@8', 'none@4', 'none@8']
    assert len(rows) == 1 and '—' not in rows[0]
    for bad, words in (
        (Report(x='norm.name', series=None, axes={'pair': pair}), "report.x='norm.name'"),
        (Report(x='pair', axes={'pair': Axis(('norm.nme',), str)}), "reads 'norm.nme'"),
        (
            Report(x='a', axes={'a': Axis(('norm.name',), str), 'b': Axis(('norm.name',), str)}),
            'in another axis',
        ),
    ):
        with pytest.raises(StudyError, match=None) as e:
            validate(dataclasses.replace(study, report=bad))
        assert words in str(e.value), str(e.value)


LONG_STUDY = TINY_STUDY.replace("'num_train_steps': 4", "'num_train_steps': 10**6")


def start_long_sweep(tmp_path):
    """A sweep of one run that trains for minutes, in its own session (process group),
    returned once the run has logged: (process, the run's workdir)."""
    study = tmp_path / 'long.py'
    study.write_text(LONG_STUDY.format(grid="({'norm.name': 'batch_norm', 'batch_size': 4},)"))
    workdir = tmp_path / 'runs'
    env = {**os.environ, 'WANDB_MODE': 'offline', 'PYTHONPATH': REPO}
    proc = subprocess.Popen(
        [sys.executable, '-m', 'normlab.sweep', f'--config={study}', f'--workdir={workdir}'],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=default_sigint,
    )
    run = workdir / 'norm=batch_norm,batch_size=4,seed=0'
    deadline = time.time() + 180
    while not (run / 'metrics.jsonl').exists():
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError('the run never started')
        time.sleep(0.2)
    return proc, run


@pytest.fixture
def long_sweep(tmp_path):
    """`start_long_sweep`'s (process, run); whatever the test leaves running is killed."""
    proc, run = start_long_sweep(tmp_path)
    yield proc, run
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    out = []
    for name in os.listdir('/proc'):
        if name.isdigit():
            try:
                with open(f'/proc/{name}/stat') as f:
                    fields = f.read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(name))
    return out


def alive(pid: int) -> bool:
    """Whether any thread of `pid` still runs: a zombie waiting for its reaper is dead,
    but its leader turns zombie before its other threads (and their files) are gone."""
    try:
        tasks = os.listdir(f'/proc/{pid}/task')
    except OSError:
        return False
    for task in tasks:
        try:
            with open(f'/proc/{pid}/task/{task}/stat') as f:
                if f.read().rsplit(')', 1)[1].split()[0] != 'Z':
                    return True
        except OSError:
            continue
    return False


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='PR_SET_PDEATHSIG is Linux')
def test_a_killed_sweep_takes_its_workers_with_it(long_sweep):
    proc, run = long_sweep
    workers = children(proc.pid)
    assert workers, 'the sweep runs its run in a worker process'
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(w) for w in workers), 'a worker kept training after its sweep died'
    # Nothing holds the run's work directory (`normlab.train.loop`'s lock): a rerun owns it.
    with open(run / '.lock', 'a') as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_ctrl_c_stops_a_sweep_with_one_line(tmp_path, long_sweep):
    proc, run = long_sweep
    workers = children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole group
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    # What TensorFlow's C++ logging prints at import is not the sweep's output.
    cxx_log = re.compile(r'^([IWEF]\d{4} |WARNING: All log messages before absl)')
    lines = [line for line in stderr.splitlines() if line.strip() and not cxx_log.match(line)]
    assert len(lines) == 1, stderr
    assert lines[0].startswith('stopped: ') and 'run the same command again' in lines[0]
    assert str(tmp_path / 'runs') in lines[0]
    assert 'Traceback' not in stdout + stderr
    deadline = time.time() + 20
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(w) for w in workers)
    assert not (run / 'summary.json').exists()  # not reported as finished
