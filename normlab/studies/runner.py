"""Runs a study's grid: one work directory per run, skip finished, resume the rest.

Each run lives in ``DIR/<run name>/`` with the files of any ``normlab.main`` run,
plus ``command.sh`` (the command that repeats it) and ``log.txt`` (its output).
A run whose ``summary.json`` says ``finished`` or ``diverged`` is done and skipped,
unless its saved config differs from what the study now asks for (then it is
reported as stale rather than silently reused); any other run is started, and the
trainer resumes it from its last checkpoint. A run that fails is reported and the
others go on.

``parallel`` runs execute at once. With ``reuse_processes`` (the default) each
slot is a long-lived `normlab.studies.worker` process that imports JAX and
TensorFlow once; without it every run is its own ``python -m normlab.main``.
Slots split the CPU cores between them (XLA, TensorFlow and OpenMP thread
counts), so two runs on two cores do not fight over both.

Fresh runs that differ only in `normlab.train.bundle.BUNDLE_KEYS` (the seeds of a
grid point) go to a worker as one bundle, trained as one program (at most
``bundle`` runs each; None: all of them, as many as the trainer's memory estimate
lets one program hold); a run with a checkpoint resumes alone.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from normlab.studies import command
from normlab.studies.grid import RunSpec
from normlab.studies.study import Study
from normlab.train import bundle as bundles

DONE = ('finished', 'diverged')
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Config keys that may differ between a finished run and the study (they do not
# change its numbers): where it logs.
IGNORED_IN_STALE_CHECK = ('wandb',)


@dataclasses.dataclass
class Outcome:
    """What happened to one run in this invocation."""

    run: RunSpec
    status: str  # finished | diverged | failed
    message: str = ''
    wall_s: float = float('nan')
    skipped: bool = False


def thread_env(parallel: int, cores: int | None = None) -> dict[str, str]:
    """Thread-count variables that give each of `parallel` runs its share of the cores."""
    cores = cores or len(os.sched_getaffinity(0))
    threads = max(1, cores // max(parallel, 1))
    if parallel <= 1:
        return {}
    env = {
        'OMP_NUM_THREADS': str(threads),
        'TF_NUM_INTRAOP_THREADS': str(threads),
        'TF_NUM_INTEROP_THREADS': '1',
    }
    if threads == 1:
        env['XLA_FLAGS'] = '--xla_cpu_multi_thread_eigen=false'
    return env


def run_env(study: Study, parallel: int) -> dict[str, str]:
    """The environment of a run process: ours, the study's, then thread limits."""
    env = dict(os.environ)
    for extra in (dict(study.env), thread_env(parallel)):
        for key, value in extra.items():
            if key == 'XLA_FLAGS' and env.get(key):
                value = f'{env[key]} {value}'
            env[key] = value
    return env


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _stale_keys(saved: dict, expected: dict) -> list[str]:
    keys = sorted(set(saved) | set(expected))
    return [k for k in keys if k not in IGNORED_IN_STALE_CHECK and saved.get(k) != expected.get(k)]


def _last_error_line(log_path: str) -> str:
    try:
        with open(log_path, errors='replace') as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ''
    for line in reversed(lines):
        if line.startswith('error:'):  # normlab.main's one-line ConfigError
            return line.removeprefix('error:').strip()
        if 'Error' in line.split(':')[0]:
            return line
    return lines[-1] if lines else ''


def die_with_parent() -> None:
    """In a child, before exec: the kernel kills it when the sweep dies (even by
    SIGKILL), so no orphaned run keeps training into a work directory."""
    if sys.platform.startswith('linux'):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class _Slot:
    """Runs jobs one at a time: in a reused worker process, or one process per job."""

    def __init__(self, env: dict[str, str], reuse: bool, log_path: str):
        self.env, self.reuse, self.log_path = env, reuse, log_path
        self.proc: subprocess.Popen | None = None

    def _start_worker(self) -> None:
        log = open(self.log_path, 'a')  # noqa: SIM115 - the process owns it
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'normlab.studies.worker'],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=self.env,
            text=True,
            preexec_fn=die_with_parent,
        )
        log.close()
        ready = self.proc.stdout.readline()
        if not ready:
            code = self.proc.wait()
            raise RuntimeError(f'sweep worker exited ({code}) at start-up; see {self.log_path}')

    def run(self, argv: list[str], log_path: str) -> tuple[str, str]:
        if not self.reuse:
            with open(log_path, 'a') as log:
                code = subprocess.call(
                    command.subprocess_argv(argv),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    preexec_fn=die_with_parent,
                )
            status = {0: 'finished', 3: 'diverged'}.get(code, 'failed')
            message = '' if status == 'finished' else _last_error_line(log_path)
            if status == 'failed' and code < 0:
                message = f'killed by signal {-code}; {message}'
            return status, message
        if self.proc is None or self.proc.poll() is not None:
            self._start_worker()
        self.proc.stdin.write(json.dumps({'argv': argv, 'log': log_path}) + '\n')
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:  # the worker died (a crash in native code, out of memory)
            code = self.proc.wait()
            self.proc = None
            return 'failed', f'worker process died (exit code {code}); {_last_error_line(log_path)}'
        reply = json.loads(reply)
        return reply['status'], reply['message']

    def run_bundle(self, argvs: list[list[str]], log_paths: list[str]) -> list[tuple[str, str]]:
        """Runs a bundle in the worker process: one (status, message) per run."""
        if self.proc is None or self.proc.poll() is not None:
            self._start_worker()
        jobs = [{'argv': a, 'log': p} for a, p in zip(argvs, log_paths, strict=True)]
        self.proc.stdin.write(json.dumps({'bundle': jobs}) + '\n')
        self.proc.stdin.flush()
        out = []
        for _ in jobs:
            reply = self.proc.stdout.readline()
            if not reply:
                code = self.proc.wait()
                self.proc = None
                message = (
                    f'worker process died (exit code {code}); {_last_error_line(log_paths[0])}'
                )
                return out + [('failed', message)] * (len(jobs) - len(out))
            reply = json.loads(reply)
            out.append((reply['status'], reply['message']))
        return out

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def plan(study: Study, workdir: str) -> list[tuple[RunSpec, list[str], dict]]:
    """(run, flags, expected config as JSON) for every run; parses each run's flags.

    Raises command.FlagError naming the run whose flags the launcher would reject.
    """
    out = []
    for run in study.runs():
        argv = command.run_flags(study.config_flag, os.path.join(workdir, run.name), run.overrides)
        try:
            config, _ = command.parse(argv)
        except command.FlagError as e:
            raise command.FlagError(f'run {run.name}: {e}') from e
        out.append((run, argv, json.loads(config.to_json())))
    return out


def run_study(
    study: Study,
    workdir: str,
    *,
    parallel: int = 1,
    reuse_processes: bool = True,
    bundle: int | None = None,
    echo: Callable[[str], None] = print,
) -> list[Outcome]:
    """Runs every run of `study` that is not done; returns one Outcome per run, in grid order.

    ``bundle``: most runs one program trains (None: automatic); 1, or
    ``reuse_processes=False``, trains every run alone.
    """
    os.makedirs(workdir, exist_ok=True)
    planned = plan(study, workdir)
    outcomes: dict[str, Outcome] = {}
    todo = []
    for run, argv, expected in planned:
        run_dir = os.path.join(workdir, run.name)
        summary = _read_json(os.path.join(run_dir, 'summary.json')) or {}
        if summary.get('status') in DONE:
            stale = _stale_keys(_read_json(os.path.join(run_dir, 'config.json')) or {}, expected)
            if stale:
                outcomes[run.name] = Outcome(
                    run,
                    'failed',
                    f'{run_dir} holds a {summary["status"]} run with a different config '
                    f'({", ".join(stale)}); remove it or use another --workdir',
                )
            else:
                outcomes[run.name] = Outcome(run, summary['status'], skipped=True)
        else:
            todo.append((run, argv, expected))
    skipped = sum(o.skipped for o in outcomes.values())
    echo(
        f'study {study.name}: {len(planned)} runs in {workdir}; {skipped} already done, '
        f'{len(todo)} to run, {min(parallel, max(len(todo), 1))} at a time'
    )

    env = run_env(study, parallel)
    jobs: queue.Queue = queue.Queue()
    # Longest first, so parallel slots finish together; among equals, every point's first
    # seed before any second seed, so a second seed finds its executables compiled by
    # the first in the persistent compilation cache instead of compiling alongside it.
    todo.sort(key=lambda item: (-_cost(item[2]), item[0].seed))
    fresh = [
        i
        for i, (run, _, _) in enumerate(todo)
        if reuse_processes and not bundles.has_checkpoint(os.path.join(workdir, run.name))
    ]
    groups = bundles.group([todo[i][2] for i in fresh], bundle)
    units = [[todo[fresh[i]] for i in g] for g in groups]
    units += [[item] for i, item in enumerate(todo) if i not in set(fresh)]
    units.sort(key=lambda unit: (-_cost(unit[0][2]), unit[0][0].seed))
    for unit in units:
        jobs.put([item[:2] for item in unit])
    lock = threading.Lock()
    finished_count = [0]

    def serve(slot: _Slot) -> None:
        try:
            while True:
                try:
                    unit = jobs.get_nowait()
                except queue.Empty:
                    return
                for outcome in _execute(slot, unit, workdir, study.env):
                    with lock:
                        outcomes[outcome.run.name] = outcome
                        finished_count[0] += 1
                        echo(
                            f'[{finished_count[0]}/{len(todo)}] '
                            f'{_describe(outcome, study, workdir)}'
                        )
        finally:
            slot.close()

    threads = [
        threading.Thread(
            target=serve,
            args=(_Slot(env, reuse_processes, os.path.join(workdir, f'.worker{i}.log')),),
            daemon=True,
        )
        for i in range(min(max(parallel, 1), len(units)))
    ]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():  # a join with a timeout lets Ctrl-C through
            t.join(timeout=0.5)
    return [outcomes[run.name] for run, _, _ in planned]


def _cost(config: dict) -> float:
    """Relative run time: training steps (epochs per batch when derived from epochs)."""
    if config.get('num_train_steps'):
        return float(config['num_train_steps'])
    return float(config.get('num_epochs') or 1.0) / float(config.get('batch_size') or 1)


def _execute(slot: _Slot, unit: list, workdir: str, env) -> list[Outcome]:
    """Runs one run, or a bundle of runs as one program; one Outcome per run."""
    run_dirs = [os.path.join(workdir, run.name) for run, _ in unit]
    for run_dir, (_, argv) in zip(run_dirs, unit, strict=True):
        command.write_command_file(run_dir, argv, dict(env))
    logs = [os.path.join(run_dir, 'log.txt') for run_dir in run_dirs]
    t0 = time.perf_counter()
    try:
        if len(unit) == 1:
            results = [slot.run(unit[0][1], logs[0])]
        else:
            results = slot.run_bundle([argv for _, argv in unit], logs)
    except (OSError, RuntimeError) as e:
        results = [('failed', str(e))] * len(unit)
    wall_s = time.perf_counter() - t0
    return [
        Outcome(run, status, message, wall_s)
        for (run, _), (status, message) in zip(unit, results, strict=True)
    ]


def _describe(outcome: Outcome, study: Study, workdir: str) -> str:
    summary = _read_json(os.path.join(workdir, outcome.run.name, 'summary.json')) or {}
    metric = study.report.metrics[0]
    value = summary.get(metric)
    shown = f' {metric}={value:.4f}' if isinstance(value, float) else ''
    note = f' ({outcome.message})' if outcome.status == 'failed' else ''
    return f'{outcome.run.name}: {outcome.status}{shown} in {outcome.wall_s:.0f} s{note}'
