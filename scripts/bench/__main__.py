"""`make bench`: every benchmark, each in a fresh process, into one JSON per run.

    python -m scripts.bench                      # all four, ~1 h on 2 cores
    python -m scripts.bench --quick              # a smaller pass, ~15 min
    python -m scripts.bench --only=norms,training

Writes ``benchmarks/results/<UTC time>.json`` (every benchmark's rows, the machine,
the load before and after, the exact commands) and prints the tables that
BENCHMARKS.md shows (``python -m scripts.bench.report FILE`` prints them again).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from scripts.bench import common, report

BENCHMARKS = ('norms', 'training', 'scaling', 'demo', 'dispatch', 'bundles')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='a smaller, faster pass')
    parser.add_argument('--only', default='', help=f'comma list of {", ".join(BENCHMARKS)}')
    parser.add_argument('--out_dir', default='benchmarks/results')
    args = parser.parse_args(argv)
    selected = [b for b in BENCHMARKS if not args.only or b in args.only.split(',')]
    stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
    run = {
        'started': stamp,
        'command': common.command_line(),
        'machine': common.machine(),
        'load_before': common.load(),
        'benchmarks': {},
    }
    failed = []
    for name in selected:
        print(f'== {name} ==', flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, f'{name}.json')
            cmd = [sys.executable, '-m', f'scripts.bench.{name}', f'--out={out}']
            if args.quick:
                cmd.append('--quick')
            code = subprocess.run(cmd).returncode
            if code != 0 or not os.path.exists(out):
                failed.append(name)
                run['benchmarks'][name] = {'error': f'exit status {code}'}
                continue
            with open(out) as f:
                run['benchmarks'][name] = json.load(f)
    run['load_after'] = common.load()
    path = os.path.join(args.out_dir, f'{stamp}{"-quick" if args.quick else ""}.json')
    common.write_json(path, run)
    print(f'\nwrote {path}\n')
    print(report.render(run))
    if failed:
        print(f'failed: {", ".join(failed)}', file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
