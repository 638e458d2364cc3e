"""A worker process that runs sweep runs one after another: ``python -m normlab.studies.worker``.

Starting ``python -m normlab.main`` costs ~10 s before the first step (importing
TensorFlow, JAX and W&B); a study of 60 short runs would spend most of its time
there. A worker imports them once, then, for each job it reads from stdin,
parses the run's flags exactly as ``normlab.main`` does (`normlab.studies.command`)
and calls the same trainer, so a run's files and numbers do not depend on which
process ran it. Each run's output (Python, absl and C++ logs) goes to its own log
file; the sweep process reads one JSON line per job back.

Protocol (one JSON object per line): the worker first writes ``{"ready": true}``;
each job ``{"argv": [...], "log": PATH}`` is answered by
``{"status": "finished" | "diverged" | "failed", "message": "...", "wall_s": float}``.
A bundle ``{"bundle": [{"argv": [...], "log": PATH}, ...]}`` (runs that differ only
in `normlab.train.bundle.BUNDLE_KEYS`) trains as one program and is answered by one
such line per run, in order; its output goes to the first run's log. The worker
exits when stdin closes.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import time
import traceback


@contextlib.contextmanager
def _output_to(path: str):
    """Points file descriptors 1 and 2 (so every library's output) at `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def run_job(job: dict) -> dict:
    """Runs one job (in this process) and returns its reply."""
    return run_bundle([job])[0]


def _solo(trainer_for, config, workdir):
    """One run's summary, or the exception that ended it."""
    from normlab.train import ConfigError, DivergedError

    try:
        return trainer_for(config)(config, workdir)
    except Exception as e:  # noqa: BLE001 - one run's failure must not end the worker
        if not isinstance(e, (ConfigError, DivergedError)):
            traceback.print_exc()
        return e


def run_bundle(jobs: list[dict]) -> list[dict]:
    """Runs jobs as one bundle (in this process) and returns one reply per job."""
    from absl import logging

    from normlab.studies import command
    from normlab.train import ConfigError, DivergedError
    from normlab.train.registry import bundle_trainer_for, trainer_for

    t0 = time.perf_counter()
    replies: list = [None] * len(jobs)
    with _output_to(jobs[0]['log']):
        parsed = []
        for i, job in enumerate(jobs):
            try:
                parsed.append((i, *command.parse(job['argv'])))
            except (ConfigError, command.FlagError) as e:
                replies[i] = ('failed', str(e))
        try:
            train_bundle = bundle_trainer_for(parsed[0][1]) if len(parsed) > 1 else None
            if train_bundle is not None:
                outcomes = train_bundle([c for _, c, _ in parsed], [w for _, _, w in parsed])
            else:
                outcomes = [_solo(trainer_for, config, workdir) for _, config, workdir in parsed]
        except Exception as e:  # noqa: BLE001 - one bundle's failure must not end the worker
            traceback.print_exc()
            outcomes = [e] * len(parsed)
        for (i, _, _), outcome in zip(parsed, outcomes, strict=True):
            if isinstance(outcome, DivergedError):
                replies[i] = ('diverged', str(outcome))
            elif isinstance(outcome, ConfigError):
                replies[i] = ('failed', str(outcome))
            elif isinstance(outcome, Exception):
                replies[i] = ('failed', f'{type(outcome).__name__}: {outcome}')
            else:
                replies[i] = ('finished', '')
        for status, message in replies:
            print(f'{status}: {message}' if message else status, file=sys.stderr)
        logging.flush()
    for job in jobs[1:]:
        with open(job['log'], 'a') as f:
            f.write(
                f'trained in one bundle of {len(jobs)} runs; its output is in {jobs[0]["log"]}\n'
            )
    # Executables of finished runs are never reused: free them.
    import jax

    jax.clear_caches()
    gc.collect()
    wall_s = time.perf_counter() - t0
    return [{'status': st, 'message': msg, 'wall_s': wall_s} for st, msg in replies]


def main() -> None:
    # Replies go to a private copy of stdout: fd 1 itself is redirected per run.
    replies = os.fdopen(os.dup(1), 'w', buffering=1)
    os.dup2(2, 1)
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    from absl import flags, logging

    flags.FLAGS(['normlab.studies.worker'])  # absl logging wants parsed flags
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO)

    from normlab import parallel, runtime

    runtime.setup()
    parallel.initialize_distributed()
    replies.write(json.dumps({'ready': True}) + '\n')
    for line in sys.stdin:
        if line.strip():
            job = json.loads(line)
            for reply in run_bundle(job['bundle']) if 'bundle' in job else [run_job(job)]:
                replies.write(json.dumps(reply) + '\n')


if __name__ == '__main__':
    main()
