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
The worker exits when stdin closes.
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
    from absl import logging

    from normlab.studies import command
    from normlab.train import ConfigError, DivergedError
    from normlab.train.registry import trainer_for

    t0 = time.perf_counter()
    with _output_to(job['log']):
        try:
            config, workdir = command.parse(job['argv'])
            trainer_for(config)(config, workdir)
            status, message = 'finished', ''
        except DivergedError as e:
            status, message = 'diverged', str(e)
        except (ConfigError, command.FlagError) as e:
            status, message = 'failed', str(e)
        except Exception as e:  # noqa: BLE001 - one run's failure must not end the worker
            traceback.print_exc()
            status, message = 'failed', f'{type(e).__name__}: {e}'
        print(f'{status}: {message}' if message else status, file=sys.stderr)
        logging.flush()
    # Executables of finished runs are never reused: free them.
    import jax

    jax.clear_caches()
    gc.collect()
    return {'status': status, 'message': message, 'wall_s': time.perf_counter() - t0}


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
            replies.write(json.dumps(run_job(json.loads(line))) + '\n')


if __name__ == '__main__':
    main()
