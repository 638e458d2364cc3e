"""Benchmark 6: N runs as one bundle (one vmapped program) against N solo runs.

The digits 3x100 ReLU MLP with BatchNorm at batch 32 (`configs/digits_mlp.py`, 10
epochs, 449 steps; ``--quick``: 2 epochs) trained N times (N = 1, 4, 16, 64) with
seeds 0..N-1, and once as 16 runs of seed 0 at 16 learning rates (0.01 to 1, log
spaced: a learning-rate grid, which bundles because the rate is optimizer state):

* ``solo``: N calls of `normlab.train.classifier.train_and_evaluate` in one process,
  one after another (what a sweep worker does with ``--bundle=1``);
* ``bundle``: one `normlab.train.classifier.train_bundle` of the N runs (the sweep's
  default), each run still writing its own files.

Both are timed end to end (build, compile, train, evaluate, checkpoints, files),
after one warm-up run: seconds per run is the wall time over N. With N=1 both are
the same solo run (``train_bundle`` of one run trains it alone). Each row records
which runs ended with another test error than their solo run, and how far apart
the test losses of the others are.

    python -m scripts.bench.bundles [--quick] [--out FILE]
"""

from __future__ import annotations

import functools
import os
import tempfile
import time

from scripts.bench import common


def _configs(n: int, epochs: float, vary: str):
    from configs import digits_mlp

    out = []
    for i in range(n):
        config = digits_mlp.get_config()
        config.wandb.mode = 'disabled'
        config.num_epochs = epochs
        if vary == 'seed':
            config.seed = i
        else:
            config.learning_rate = 0.01 * 100 ** (i / max(n - 1, 1))
        out.append(config)
    return out


def _time(n: int, epochs: float, bundled: bool, vary: str) -> tuple[float, list[dict]]:
    import jax

    from normlab.train import classifier

    configs = _configs(n, epochs, vary)
    with tempfile.TemporaryDirectory(prefix='normlab-bundle-bench-') as tmp:
        workdirs = [os.path.join(tmp, f'run{i}') for i in range(n)]
        t0 = time.perf_counter()
        if bundled:
            summaries = classifier.train_bundle(configs, workdirs)
        else:
            summaries = [
                classifier.train_and_evaluate(c, w) for c, w in zip(configs, workdirs, strict=True)
            ]
        wall = time.perf_counter() - t0
    jax.clear_caches()  # as the sweep worker does between jobs
    return wall, summaries


def run(args) -> dict:
    from normlab import runtime

    runtime.setup()
    epochs = 2.0 if args.quick else 10.0
    cases = [(1, 'seed'), (4, 'seed'), (4, 'learning_rate')]
    if not args.quick:
        cases = [(1, 'seed'), (4, 'seed'), (16, 'seed'), (64, 'seed'), (16, 'learning_rate')]
    out = {'benchmark': 'bundles', 'description': __doc__.splitlines()[0], 'rows': []}
    _time(1, epochs, bundled=False, vary='seed')  # warm-up: a process's first run pays more
    for n, vary in cases:
        load = common.load()
        solo_s, solo = _time(n, epochs, bundled=False, vary=vary)
        bundle_s, bundled = _time(n, epochs, bundled=True, vary=vary)
        pairs = list(zip(solo, bundled, strict=True))
        errors = all(a['eval/error'] == b['eval/error'] for a, b in pairs)
        # Which runs part from their solo run, and by how much (a vmapped sum rounds
        # differently; see BENCHMARKS.md, section 6).
        other = [i for i, (a, b) in enumerate(pairs) if a['eval/error'] != b['eval/error']]
        same = [(a, b) for i, (a, b) in enumerate(pairs) if i not in other]
        loss_diff = max(
            (abs(b['eval/loss'] - a['eval/loss']) / abs(a['eval/loss']) for a, b in same),
            default=0.0,
        )
        row = {
            'runs': n,
            'differ_in': vary,
            'steps': solo[0]['steps'],
            'solo_s_per_run': round(solo_s / n, 2),
            'bundle_s_per_run': round(bundle_s / n, 2),
            'speedup': round(solo_s / bundle_s, 2),
            'same_eval_errors': errors,
            'runs_with_other_error': other,
            'max_eval_loss_rel_diff_of_the_rest': float(f'{loss_diff:.2g}'),
            'load_before': load,
            'load_after': common.load(),
        }
        out['rows'].append(row)
        print(
            f'  {n} runs ({vary}s) of {row["steps"]} steps: '
            f'solo {row["solo_s_per_run"]:.2f} s/run, '
            f'bundle {row["bundle_s_per_run"]:.2f} s/run ({row["speedup"]:.2f}x; same eval '
            f'errors: {errors}; load {load[0]} -> {row["load_after"][0]})',
            flush=True,
        )
    return out


main = functools.partial(common.main, run, None, __doc__)

if __name__ == '__main__':
    main()
