"""The benchmark harness runs on tiny shapes and renders every recorded result."""

import glob
import json
import os

import jax.numpy as jnp
import pytest

from scripts.bench import common, norms, report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('name', ['batch_norm', 'group_norm', 'batch_renorm', 'evonorm_b0'])
def test_norm_case_times_every_contender_and_reports_ratios(name):
    case = next(c for c in norms.CASES if c.name == name)
    rows = norms.bench_case(case, (4, 4, 4, 32), jnp.float32, rounds=2, budget_s=None)
    assert [r['mode'] for r in rows] == ['train', 'eval']
    for r in rows:
        assert r['normlab']['rounds'] == 2 and r['normlab_vs_floor_wall'] > 0
        assert ('normlab_vs_flax_wall' in r) == (case.theirs is not None)
    assert '| ' + name + ' | 4x4x4x32 | float32 | train |' in report.norms({'rows': rows})


def test_alternate_pairs_rounds():
    calls = []
    samples = common.alternate(
        {'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')}, rounds=3, warmup=1
    )
    assert calls == ['a', 'b'] + ['a', 'b'] * 3
    assert len(samples['a'].wall) == 3 and common.paired_ratio(samples, 'a', 'b') > 0


@pytest.mark.parametrize(
    'path', sorted(glob.glob(os.path.join(REPO, 'benchmarks', 'results', '*.json')))
)
def test_every_recorded_result_renders(path):
    with open(path) as f:
        text = report.render(json.load(f))
    assert '|---' in text
