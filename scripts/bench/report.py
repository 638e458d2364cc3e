"""Markdown tables of a benchmark result JSON (what BENCHMARKS.md shows).

    python -m scripts.bench.report benchmarks/results/20261122T013000Z.json

Accepts a run file written by ``python -m scripts.bench`` or the ``--out`` file of
one benchmark module. Ratios marked ``!`` miss their target (training forward +
backward: normlab/flax <= 1.0 and normlab/floor <= 2.0).
"""

from __future__ import annotations

import json
import sys


def _table(header: list[str], rows: list[list]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def _ms(seconds: float) -> str:
    return f'{1e3 * seconds:.1f}'


def _ratio(x: float, limit: float | None = None) -> str:
    mark = '!' if limit is not None and x > limit else ''
    return f'{x:.2f}{mark}'


def machine(m: dict, load_before=None, load_after=None) -> str:
    rows = [
        ['CPU', f'{m["cpu_model"]} ({m["nproc"]} cores visible; {m["cpu_flags"]})'],
        ['memory', f'{m["mem_gib"]} GiB'],
        [
            'software',
            f'python {m["python"]}, jax {m["jax"]}, jaxlib {m["jaxlib"]}, flax {m["flax"]}, '
            f'optax {m["optax"]}, torch {m["torch"]}',
        ],
        ['XLA_FLAGS', f'`{m["XLA_FLAGS"]}`' if m['XLA_FLAGS'] else '(unset)'],
        ['git', f'{m["git_commit"]}{" + uncommitted changes" if m["git_dirty"] else ""}'],
    ]
    if load_before is not None:
        rows.append(['load average (1/5/15 min)', f'{load_before} before, {load_after} after'])
    return _table(['', ''], rows)


def norms(result: dict) -> str:
    rows = []
    for r in result['rows']:
        train = r['mode'] == 'train'
        rows.append(
            [
                r['norm'],
                'x'.join(map(str, r['shape'])),
                r['dtype'],
                r['mode'],
                _ms(r['normlab']['wall_s']),
                _ms(r['flax']['wall_s']) if 'flax' in r else '-',
                _ms(r['floor']['wall_s']),
                _ratio(r['normlab_vs_flax_wall'], 1.0 if train else None) if 'flax' in r else '-',
                _ratio(r['normlab_vs_flax_cpu'], 1.0 if train else None) if 'flax' in r else '-',
                _ratio(r['normlab_vs_floor_wall'], 2.0 if train else None),
                _ratio(r['flax_vs_floor_wall']) if 'flax' in r else '-',
                r['load'][0],
            ]
        )
    header = [
        'norm',
        'shape',
        'dtype',
        'mode',
        'normlab ms',
        'flax ms',
        'floor ms',
        'normlab/flax',
        'normlab/flax (CPU time)',
        'normlab/floor',
        'flax/floor',
        'load',
    ]
    return _table(header, rows)


def _part(name: str, part: dict, header: list[str], rows: list[list]) -> str:
    """A titled table of one part of the training benchmark, with its load."""
    load = f'load {part["load_before"][0]} -> {part["load_after"][0]}'
    return f'**{name}** ({load})\n\n' + _table(header, rows)


def convs(part: dict) -> str:
    rows = [
        [
            'x'.join(map(str, r['shape'])),
            r['pass'],
            f'{r["xla_default_ms"]:.1f}',
            f'{r["no_ynn_conv_ms"]:.1f}',
            f'{r["torch_ms"]:.1f}',
            f'{r["no_ynn_conv_ms"] / r["torch_ms"]:.2f}',
        ]
        for r in part['rows']
    ]
    header = ['input', 'pass', 'XLA default ms', 'no_ynn_conv ms', 'torch ms', 'no_ynn_conv/torch']
    return _part('convs', part, header, rows)


def conv_attempts(part: dict) -> str:
    rows = [[r['name'], f'{r["ms"]:.1f}', f'{r["vs_eigen"]:.2f}'] for r in part['rows']]
    return _part('conv_attempts', part, ['weight gradient', 'ms', 'x Eigen'], rows)


def fusion(part: dict) -> str:
    rows = [
        [
            r['case'],
            f'{r["fusion_ms"]:.2f}',
            f'{r["no_fusion_ms"]:.2f}',
            f'{r["no_fusion_speed"]:.2f}',
            f'{r["no_fusion_cpu_speed"]:.2f}',
        ]
        for r in part['rows']
    ]
    header = ['train step', 'fusion ms', 'no fusion ms', 'speed without fusion', 'same, CPU time']
    return _part('fusion', part, header, rows)


EXTRA_PARTS = {'convs': convs, 'conv_attempts': conv_attempts, 'fusion': fusion}


def training(result: dict) -> str:
    out = []
    for part in ('resnet20', 'digits_cnn', 'attempts', 'convs', 'conv_attempts', 'fusion'):
        if part not in result:
            continue
        if part in EXTRA_PARTS:
            out.append(EXTRA_PARTS[part](result[part]))
            continue
        rows = []
        for r in result[part]['rows']:
            base = next((k for k in r if k.startswith('speed_vs_')), None)
            cpu_base = next((k for k in r if k.startswith('cpu_speed_vs_')), None)
            rows.append(
                [
                    r['name'],
                    f'{r["examples_per_s"]:.0f}',
                    f'{1e3 * r["step_s"]:.0f}',
                    f'{1e3 * r["cpu_s_per_step"]:.0f}',
                    f'{r["compile_s"]:.1f}' if 'compile_s' in r else '-',
                    f'{r[base]:.2f}' if base else '-',
                    f'{r[cpu_base]:.2f}' if cpu_base else '-',
                ]
            )
        baseline = next(
            (
                k[len('speed_vs_') :]
                for r in result[part]['rows']
                for k in r
                if k[:9] == 'speed_vs_'
            ),
            None,
        )
        header = [
            'contender',
            'examples/s',
            'ms/step',
            'CPU ms/step',
            'compile s',
            f'speed vs {baseline}' if baseline else 'speed',
            'same, CPU time',
        ]
        out.append(_part(part, result[part], header, rows))
    return '\n\n'.join(out)


def scaling(result: dict) -> str:
    rows = [
        [
            r['devices'],
            r['per_device_batch'],
            r['global_batch'],
            _ms(r['global']['wall_s']),
            _ms(r['per_device']['wall_s']),
            _ratio(r['global_vs_per_device_wall'], 1.10 if r['devices'] == 4 else None),
            _ratio(r['global_vs_per_device_cpu']),
            r['load'][0],
        ]
        for r in result['rows']
    ]
    header = [
        'devices',
        'batch/device',
        'global batch',
        'global BN ms',
        'per-device BN ms',
        'global/per-device',
        'same, CPU time',
        'load',
    ]
    return _table(header, rows)


def demo(result: dict) -> str:
    if result.get('skipped'):
        return f'not measured: {result["skipped"]}'
    rows = [
        [
            r['cache'],
            f'{r["wall_s"]:.0f}',
            r['runs'],
            r['returncode'],
            f'{r["load_before"][0]} -> {r["load_after"][0]}',
            f'`{r["command"]}`',
        ]
        for r in result['rows']
    ]
    return _table(['cache', 'wall s', 'finished runs', 'exit', 'load', 'command'], rows)


def dispatch(result: dict) -> str:
    rows = [
        [
            r['case'],
            f'{r["normlab_s"]:.2f}',
            f'{r["reference_s"]:.2f}',
            f'{r["ratio"]:.2f}',
            f'{r["normlab_first_call_s"]:.1f}',
            f'{r["reference_compile_s"]:.1f}',
            f'{100 * r["normlab_eval_error"]:.1f}%',
            f'{r["load_before"][0]} -> {r["load_after"][0]}',
        ]
        for r in result['rows']
    ]
    header = [
        'case',
        'normlab train s',
        'reference s',
        'ratio',
        'normlab first call s',
        'reference compile s',
        'normlab test error',
        'load',
    ]
    return _table(header, rows)


def _same_errors(row: dict) -> str:
    """'yes', or how many runs differ, and how far apart the other runs' test losses are
    (both recorded since `20261202T004003Z-bundles.json`)."""
    if row['same_eval_errors']:
        same = 'yes'
    elif 'runs_with_other_error' in row:
        same = f'NO: {len(row["runs_with_other_error"])} of {row["runs"]}'
    else:
        return 'NO'
    if 'max_eval_loss_rel_diff_of_the_rest' in row:
        rest = 'test loss' if row['same_eval_errors'] else 'the rest: test loss'
        same += f' ({rest} within {row["max_eval_loss_rel_diff_of_the_rest"]:.2g})'
    return same


def bundles(result: dict) -> str:
    rows = [
        [
            r['runs'],
            # Older results varied only the seed.
            {'seed': 'seeds', 'learning_rate': 'learning rates'}[r.get('differ_in', 'seed')],
            r['steps'],
            f'{r["solo_s_per_run"]:.2f}',
            f'{r["bundle_s_per_run"]:.2f}',
            _ratio(r['speedup']),
            _same_errors(r),
            f'{r["load_before"][0]} -> {r["load_after"][0]}',
        ]
        for r in result['rows']
    ]
    header = ['runs', 'differ in', 'steps', 'solo s/run', 'bundle s/run', 'speedup']
    header += ['same errors', 'load']
    return _table(header, rows)


RENDER = {
    'norms': norms,
    'training': training,
    'scaling': scaling,
    'demo': demo,
    'dispatch': dispatch,
    'bundles': bundles,
}


def render(data: dict) -> str:
    if 'benchmarks' not in data:  # one module's --out file
        data = {
            'machine': data['machine'],
            'load_before': data.get('load_before'),
            'load_after': data.get('load_after'),
            'benchmarks': {data['benchmark']: data},
        }
    parts = [machine(data['machine'], data.get('load_before'), data.get('load_after'))]
    for name, result in data['benchmarks'].items():
        if 'error' in result:
            parts.append(f'### {name}\n\nfailed: {result["error"]}')
            continue
        cmd = result.get('command', '')
        head = f'### {name}\n\n`{cmd}` ({result.get("seconds", "?")} s)'
        parts.append(f'{head}\n\n{RENDER[name](result)}')
    return '\n\n'.join(parts) + '\n'


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    for path in argv:
        with open(path) as f:
            print(render(json.load(f)))


if __name__ == '__main__':
    main()
