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


def parse_tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table of `text`, as rows keyed by the header's cells."""
    tables, block = [], []
    for line in [*text.splitlines(), '']:
        if line.startswith('|'):
            block.append([cell.strip() for cell in line.strip('|').split('|')])
            continue
        if block:
            header, _, *rows = block
            tables.append([dict(zip(header, row, strict=True)) for row in rows])
            block = []
    return tables


def has_row(tables, cells: dict[str, str]) -> bool:
    """Whether a rendered row shows every one of `cells`."""
    return any(all(r.get(k) == v for k, v in cells.items()) for t in tables for r in t)


def expected_cells(name: str, result: dict):
    """(key cells, value cells) of every row the report must show for `result`."""
    if name == 'norms':
        for r in result['rows']:
            key = {'norm': r['norm'], 'shape': 'x'.join(map(str, r['shape'])), 'mode': r['mode']}
            key['dtype'] = r['dtype']
            limit = 2.0 if r['mode'] == 'train' else float('inf')
            ratio = r['normlab_vs_floor_wall']
            yield (
                key,
                {
                    'normlab ms': f'{1e3 * r["normlab"]["wall_s"]:.1f}',
                    'normlab/floor': f'{ratio:.2f}' + ('!' if ratio > limit else ''),
                },
            )
    elif name == 'scaling':
        for r in result['rows']:
            yield (
                {'devices': str(r['devices']), 'global batch': str(r['global_batch'])},
                {
                    'global BN ms': f'{1e3 * r["global"]["wall_s"]:.1f}',
                    'per-device BN ms': f'{1e3 * r["per_device"]["wall_s"]:.1f}',
                },
            )
    elif name == 'demo' and 'rows' in result:
        for r in result['rows']:
            yield (
                {'cache': r['cache']},
                {'wall s': f'{r["wall_s"]:.0f}', 'finished runs': str(r['runs'])},
            )
    elif name == 'dispatch':
        for r in result['rows']:
            yield (
                {'case': r['case']},
                {
                    'normlab train s': f'{r["normlab_s"]:.2f}',
                    'reference s': f'{r["reference_s"]:.2f}',
                    'ratio': f'{r["ratio"]:.2f}',
                },
            )
    elif name == 'bundles':
        for r in result['rows']:
            yield (
                {
                    'runs': str(r['runs']),
                    'differ in': {'seed': 'seeds', 'learning_rate': 'learning rates'}[
                        r.get('differ_in', 'seed')
                    ],
                },
                {
                    'solo s/run': f'{r["solo_s_per_run"]:.2f}',
                    'bundle s/run': f'{r["bundle_s_per_run"]:.2f}',
                },
            )
    elif name == 'training':
        for part in ('resnet20', 'digits_cnn', 'attempts'):
            for r in result.get(part, {}).get('rows', []):
                yield (
                    {'contender': r['name']},
                    {
                        'examples/s': f'{r["examples_per_s"]:.0f}',
                        'ms/step': f'{1e3 * r["step_s"]:.0f}',
                    },
                )
        for r in result.get('convs', {}).get('rows', []):
            key = {'input': 'x'.join(map(str, r['shape'])), 'pass': r['pass']}
            yield key, {'no_ynn_conv/torch': f'{r["no_ynn_conv_ms"] / r["torch_ms"]:.2f}'}
        for r in result.get('conv_attempts', {}).get('rows', []):
            yield {'weight gradient': r['name']}, {'ms': f'{r["ms"]:.1f}'}
        for r in result.get('fusion', {}).get('rows', []):
            yield {'train step': r['case']}, {'fusion ms': f'{r["fusion_ms"]:.2f}'}


RESULTS = sorted(glob.glob(os.path.join(REPO, 'benchmarks', 'results', '*.json')))


@pytest.mark.parametrize('path', RESULTS, ids=os.path.basename)
def test_every_recorded_result_renders_its_numbers(path):
    with open(path) as f:
        data = json.load(f)
    tables = parse_tables(report.render(data))
    benchmarks = data['benchmarks'] if 'benchmarks' in data else {data['benchmark']: data}
    checked = 0
    for name, result in benchmarks.items():
        for key, values in expected_cells(name, result):
            assert has_row(tables, {**key, **values}), (name, key, values)
            checked += 1
    assert checked > 0


def test_a_missed_target_is_marked():
    row = {
        'norm': 'batch_norm',
        'shape': [2, 4],
        'dtype': 'float32',
        'mode': 'train',
        'load': [1.0],
        'normlab': {'wall_s': 0.00125},
        'floor': {'wall_s': 0.0005},
        'normlab_vs_floor_wall': 2.5,
    }
    rows = parse_tables(report.norms({'rows': [row, {**row, 'mode': 'eval'}]}))[0]
    assert [(r['mode'], r['normlab ms'], r['floor ms'], r['normlab/floor']) for r in rows] == [
        ('train', '1.2', '0.5', '2.50!'),
        ('eval', '1.2', '0.5', '2.50'),
    ]
    assert rows[0]['flax ms'] == rows[0]['normlab/flax'] == '-'  # no flax contender
