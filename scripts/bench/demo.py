"""Benchmark 4: wall time of `make demo` (the batch-size study) from a cold and a warm cache.

Runs the command of the Makefile's ``demo`` target twice, each time into a fresh
work directory (a sweep skips finished runs, so reusing one would measure nothing),
with ``NORMLAB_COMPILATION_CACHE`` (read by `normlab/runtime.py`) pointing to one new
directory: the first run starts from an empty XLA compilation cache (cold), the
second reuses what the first wrote (warm). Only the cache directory and the work
directory differ from ``make demo``; ``--quick`` adds the study's ``smoke=True``.
Then the same pair again with the study's ``seeds=2`` (its own cache: a bundle of 2
runs is another program than one of 5), for the cost of the seeds a bundle adds.

    python -m scripts.bench.demo [--quick] [--out FILE]
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

from scripts.bench import common


def demo_command(makefile: str = 'Makefile') -> list[str] | None:
    """The recipe of the Makefile's ``demo`` target, or None if there is none."""
    if not os.path.exists(makefile):
        return None
    with open(makefile) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if re.match(r'^demo\s*:', line):
            recipe = []
            for r in lines[i + 1 :]:
                if not r.startswith('\t'):
                    break
                recipe.append(r.strip())
            if len(recipe) != 1 or 'normlab.sweep' not in recipe[0]:
                return None  # not the one-line sweep this benchmark knows how to time
            return shlex.split(recipe[0].replace('$(PY)', sys.executable))
    return None


def timed_run(cmd: list[str], workdir: str, cache: str, study_args: list[str]) -> dict:
    cmd = [re.sub(r'^--workdir=.*', f'--workdir={workdir}', a) for a in cmd]
    for extra in study_args:  # appended to the study's own arguments
        cmd = [
            a + (',' if ':' in a else ':') + extra if a.startswith('--config=') else a for a in cmd
        ]
    env = {**os.environ, 'NORMLAB_COMPILATION_CACHE': cache, 'WANDB_MODE': 'offline'}
    load_before = common.load()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
    return {
        'command': shlex.join(cmd),
        'wall_s': round(wall, 1),
        'returncode': proc.returncode,
        'runs': sum(
            os.path.exists(os.path.join(workdir, d, 'summary.json')) for d in os.listdir(workdir)
        )
        if os.path.isdir(workdir)
        else 0,
        'cache_entries': len(os.listdir(cache)) if os.path.isdir(cache) else 0,
        'load_before': load_before,
        'load_after': common.load(),
    }


def run(args) -> dict:
    out = {'benchmark': 'demo', 'description': __doc__.splitlines()[0], 'rows': []}
    cmd = demo_command()
    if cmd is None:
        out['skipped'] = 'the Makefile has no one-line `demo` sweep recipe yet'
        print(out['skipped'])
        return out
    quick = ['smoke=True'] if args.quick else []
    with tempfile.TemporaryDirectory(prefix='normlab-demo-bench-') as tmp:
        for seeds in ([], ['seeds=2']):
            cache = os.path.join(tmp, f'xla_cache{len(seeds)}')
            os.makedirs(cache)
            for label in ('cold', 'warm'):
                workdir = os.path.join(tmp, f'{label}{len(seeds)}')
                row = {
                    'cache': label,
                    'study_args': ','.join(seeds) or 'default',
                    **timed_run(cmd, workdir, cache, quick + seeds),
                }
                out['rows'].append(row)
                print(
                    f'  {row["study_args"]}, {label}: {row["wall_s"]:.0f} s, {row["runs"]} runs, '
                    f'exit {row["returncode"]}, {row["cache_entries"]} cache entries, load '
                    f'{row["load_before"][0]} -> {row["load_after"][0]}',
                    flush=True,
                )
    return out


main = functools.partial(common.main, run, None, __doc__)

if __name__ == '__main__':
    main()
