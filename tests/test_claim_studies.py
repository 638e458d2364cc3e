"""The BatchNorm-claims studies end to end: each smoke grid (2 runs of 6 steps on mnist5k)
is planned, parsed and trained for real, and its report, findings and plots come out of
the runs' files.

The runs go through the sweep worker's `run_job` in this process (the flags parsed as
``normlab.main`` parses them, the same trainer), not through worker subprocesses:
tests/test_sweep.py covers the process machinery, and starting two workers per study
would cost more than its runs.
"""

import json
import os

import pytest

from normlab.studies import load_study, outputs, results, runner, worker


def sweep_in_process(spec, workdir):
    study = load_study(spec)
    for run, argv, _ in runner.plan(study, workdir):
        os.makedirs(os.path.join(workdir, run.name), exist_ok=True)
        reply = worker.run_job({'argv': argv, 'log': os.path.join(workdir, run.name, 'log.txt')})
        assert reply['status'] in ('finished', 'diverged'), (run.name, reply['message'])
    return outputs.write_outputs(study, results.local_records(study, workdir), workdir)


def first_train_row(workdir, run):
    rows = [json.loads(line) for line in open(os.path.join(workdir, run, 'metrics.jsonl'))]
    return next(r for r in rows if 'train/loss' in r)


def check_gradient_flow(workdir):
    first = first_train_row(workdir, 'norm=none,depth=4,seed=0')
    assert first['step'] == 1  # the initial weights' gradients, alone
    layers = [f'dense{k}' for k in range(1, 5)] + ['head']
    assert {f'grad_norm/{k}' for k in layers} <= set(first)


def check_bn_paper(workdir):
    rows = [
        json.loads(line)
        for line in open(os.path.join(workdir, 'norm=batch_norm,seed=0', 'metrics.jsonl'))
    ]
    evals = [r for r in rows if 'eval/error' in r]
    assert evals[0]['step'] == 0 and 'preact3/unit0/p50' in evals[0]


STUDIES = {
    # study: (a phrase its findings must contain, plots it must write, extra check)
    'bn_paper_mnist': (
        "unit 0's sigmoid",
        ['test_accuracy.png', 'preact3_unit0_percentiles.png', 'preact3_pooled_percentiles.png'],
        check_bn_paper,
    ),
    'init_scale': ('diverges at 10', ['eval_error.png'], None),
    'gradient_flow': (
        'gradient norm of layer 2 over layer 4',
        ['grad_norm_by_layer.png'],
        check_gradient_flow,
    ),
    'placement': ('before the activation', ['eval_error.png'], None),
    'regularization': ('ghost-batch gaps', ['eval_error.png', 'eval_train_error.png'], None),
}


@pytest.mark.parametrize('name', sorted(STUDIES))
def test_smoke_study_runs_and_reports(name, tmp_path):
    workdir = str(tmp_path / name)
    sweep_in_process(f'experiments/{name}.py:smoke=True,seeds=1', workdir)
    phrase, plots, check = STUDIES[name]
    report = open(os.path.join(workdir, 'report.md')).read()
    findings = report.split('## Findings')[1].split('## Results')[0]
    assert phrase in findings, findings
    assert 'need grid points that have no finished run' not in findings
    for plot in plots:
        assert os.path.getsize(os.path.join(workdir, plot)) > 0, plot
    if check:
        check(workdir)
