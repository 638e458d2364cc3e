"""Timing that survives a shared machine: contenders alternate, medians and paired ratios.

The machine these benchmarks run on is shared (two cores, other jobs come and go), so
a contender is never timed in a block of its own: every round runs each contender
once, in the same order (A, B, C, A, B, C, ...), and a ratio is the median over rounds
of the per-round ratio, whose two timings ran seconds apart under the same load. Each
call records wall time and process CPU time (all threads); CPU time is much less
sensitive to other jobs than wall time and is reported next to it.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Samples:
    """Per-call timings of one contender, in seconds."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            'wall_s': statistics.median(self.wall),
            'cpu_s': statistics.median(self.cpu),
            'wall_iqr_s': _iqr(self.wall),
            'rounds': len(self.wall),
        }


def _iqr(xs: list[float]) -> float:
    if len(xs) < 4:
        return max(xs) - min(xs)
    q = statistics.quantiles(xs, n=4)
    return q[2] - q[0]


def alternate(
    contenders: dict[str, Callable[[], object]],
    *,
    rounds: int,
    budget_s: float | None = None,
    min_rounds: int = 3,
    warmup: int = 1,
) -> dict[str, Samples]:
    """Times each contender once per round, alternating, for up to `rounds` rounds.

    Every callable must block until its work is done (``jax.block_until_ready``).
    Stops early, after at least `min_rounds`, once `budget_s` seconds have passed.
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    out = {name: Samples() for name in contenders}
    start = time.perf_counter()
    for r in range(rounds):
        for name, fn in contenders.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            out[name].wall.append(time.perf_counter() - t0)
            out[name].cpu.append(time.process_time() - c0)
        if budget_s is not None and r + 1 >= min_rounds and time.perf_counter() - start > budget_s:
            break
    return out


def paired_ratio(samples: dict[str, Samples], name: str, baseline: str, kind: str = 'wall'):
    """Median over rounds of ``time(name) / time(baseline)`` (< 1: `name` is faster)."""
    a, b = getattr(samples[name], kind), getattr(samples[baseline], kind)
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def load() -> list[float]:
    """1, 5 and 15 minute load averages (2.0 saturates this 2-core machine)."""
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def machine() -> dict:
    """What the numbers were measured on."""
    flags = ''
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    have = set(line.split(':', 1)[1].split())
                    flags = ' '.join(
                        f
                        for f in ('avx', 'avx2', 'fma', 'avx512f', 'avx512_bf16', 'amx_bf16')
                        if f in have
                    )
                    break
    except OSError:
        pass
    mem = None
    try:
        with open('/proc/meminfo') as f:
            mem = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        'nproc': os.cpu_count(),
        'cpu_model': _cpu_model(),
        'cpu_flags': flags,
        'mem_gib': mem,
        'python': platform.python_version(),
        'jax': _version('jax'),
        'jaxlib': _version('jaxlib'),
        'flax': _version('flax'),
        'optax': _version('optax'),
        'torch': _version('torch'),
        'XLA_FLAGS': os.environ.get('XLA_FLAGS', ''),
        'git_commit': _git('rev-parse', '--short', 'HEAD'),
        'git_dirty': bool(_git('status', '--porcelain', '--untracked-files=no')),
    }


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(['git', *args], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def keep_freed_memory() -> bool:
    """Makes glibc keep freed memory instead of returning it to the kernel.

    By default glibc serves every allocation above 32 MiB with a fresh `mmap` and
    unmaps it on free, so each call of a jitted function that returns a large array
    pays a page fault per 4 KiB of its output (on this VM a 33 MB elementwise pass
    takes ~50 ms instead of ~8 ms). Inside a training step XLA reuses one buffer,
    so for kernel timings we measure without that cost. Returns False off glibc.
    """
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**30))


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path, 'w') as f:
        json.dump(payload, f, indent=1, sort_keys=False)
        f.write('\n')


def command_line() -> str:
    """The command that produced a result, as typed from the repo root."""
    module = sys.modules['__main__'].__spec__
    head = f'python -m {module.name}' if module else f'python {sys.argv[0]}'
    return ' '.join([head, *sys.argv[1:]])


def main(run: Callable, add_args: Callable | None, doc: str, argv: list[str] | None = None) -> dict:
    """The command line of one benchmark module: ``--quick``, ``--out FILE``."""
    import argparse

    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('--quick', action='store_true', help='a fast, smaller pass')
    parser.add_argument('--out', default='', help='write the result JSON here')
    if add_args is not None:
        add_args(parser)
    args = parser.parse_args(argv)
    started = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
    load_before = load()
    t0 = time.perf_counter()
    result = run(args)
    result.update(
        command=command_line(),
        started=started,
        seconds=round(time.perf_counter() - t0, 1),
        load_before=load_before,
        load_after=load(),
        quick=args.quick,
        machine=machine(),
    )
    if args.out:
        write_json(args.out, result)
    return result
