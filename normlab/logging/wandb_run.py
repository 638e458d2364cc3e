"""A Weights & Biases run that never blocks training.

``mode='auto'`` logs online when credentials are present and offline
otherwise (sync later with ``wandb sync DIR/wandb/offline-run-*``); an online
start that fails (no network) falls back to offline. Only process 0 logs.
The run id is stored in the work directory so a resumed run continues the
same W&B run.
"""

from __future__ import annotations

import netrc
import os
import queue
import secrets
import threading

import jax
import ml_collections
from absl import logging
from flax import traverse_util

# W&B's own wait for its service and an online start; it runs off the training thread.
INIT_TIMEOUT_S = 30
# The most a finished run waits for W&B to write its queued calls.
FINISH_TIMEOUT_S = 120


def flat_config(config: ml_collections.ConfigDict) -> dict:
    """``{'norm.name': 'batch_norm', ...}``: W&B drops a ConfigDict silently."""
    flat = traverse_util.flatten_dict(config.to_dict(), sep='.')
    return {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()}


def has_credentials() -> bool:
    if os.environ.get('WANDB_API_KEY'):
        return True
    try:
        return netrc.netrc().authenticators('api.wandb.ai') is not None
    except (OSError, netrc.NetrcParseError):
        return False


def run_tags(config) -> list[str]:
    tags = [
        f'norm:{config.norm.name}',
        f'batch:{config.batch_size}',
        f'model:{config.model}',
        f'dataset:{config.dataset}',
    ]
    if config.study:
        tags.append(f'study:{config.study}')
    return tags + list(config.wandb.tags)


class WandbRun:
    """`log`, `log_images`, `summary`, `finish`; a no-op off process 0 or when disabled.

    W&B starts on a thread of its own and every call is queued for it, so training
    never waits on W&B: not for its service to start, not for a network that does not
    answer (an online start that times out falls back to offline while the run
    trains). Only `finish` waits, at most ``finish_timeout`` seconds, for the queue to
    drain so the run's W&B files are complete.
    """

    def __init__(self, config, workdir: str, *, tags: list[str] | None = None):
        self.run = None
        self.mode = 'disabled'
        if jax.process_index() != 0 or config.wandb.mode == 'disabled':
            self._queue = None
            return
        self.mode = _resolve_mode(config.wandb.mode)
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(
            target=self._serve, args=(config, workdir, tags), name='wandb', daemon=True
        )
        self._thread.start()

    def _serve(self, config, workdir, tags) -> None:
        self._start(config, workdir, tags)
        while True:
            call = self._queue.get()
            if call is None:
                return
            if self.run is not None:
                try:
                    call(self.run)
                except Exception as e:  # noqa: BLE001 - a W&B failure must not stop training
                    logging.warning('W&B call failed (%s)', str(e).splitlines()[-1:])

    def _start(self, config, workdir, tags) -> None:
        import wandb  # imported lazily: it is slow to import

        id_path = os.path.join(workdir, 'wandb_run_id')
        if os.path.exists(id_path):
            with open(id_path) as f:
                run_id = f.read().strip()
        else:  # `wandb agent` names the run it expects in WANDB_RUN_ID
            run_id = os.environ.get('WANDB_RUN_ID') or secrets.token_hex(4)
        kwargs = dict(
            project=config.wandb.project,
            entity=config.wandb.entity,
            group=config.wandb.group or config.study,
            name=config.wandb.name or os.path.basename(os.path.abspath(workdir)),
            tags=tags if tags is not None else run_tags(config),
            config=flat_config(config),
            dir=workdir,
            resume='allow',
            settings=wandb.Settings(console='off', init_timeout=INIT_TIMEOUT_S, silent=True),
        )
        # Fallbacks, in order: offline if online fails (no network), under a new id
        # (the failed online start may still hold the old one); a new run id if the
        # old one is still held (a killed process's W&B service); no W&B at all
        # rather than no training.
        attempts = [(self.mode, run_id)]
        if self.mode == 'online':
            run_id = secrets.token_hex(4)
            attempts.append(('offline', run_id))
        attempts.append(('offline', secrets.token_hex(4)))
        for mode, run_id in attempts:
            try:
                self.run = wandb.init(mode=mode, **{**kwargs, 'id': run_id})
                break
            except Exception as e:  # noqa: BLE001 - a W&B failure must not stop training
                logging.warning('W&B %s start failed (%s)', mode, str(e).splitlines()[-1:])
        if self.run is None:
            logging.warning('W&B disabled for this run; its files are still written')
            return
        self.mode = mode
        with open(id_path, 'w') as f:
            f.write(run_id)

    def _put(self, call) -> None:
        if self._queue is not None:
            self._queue.put(call)

    def log(self, metrics: dict, step: int) -> None:
        self._put(lambda run: run.log(dict(metrics), step=step))

    def log_images(self, images: dict, step: int) -> None:
        def log(run):
            import wandb

            run.log({k: wandb.Image(v) for k, v in images.items()}, step=step)

        self._put(log)

    def summary(self, values: dict) -> None:
        self._put(lambda run: run.summary.update(dict(values)))

    def finish(self, exit_code: int = 0, *, finish_timeout: float = FINISH_TIMEOUT_S) -> None:
        if self._queue is None:
            return
        self._put(lambda run: run.finish(exit_code=exit_code))
        self._queue.put(None)
        self._thread.join(finish_timeout)
        if self._thread.is_alive():
            logging.warning(
                'W&B did not finish within %.0f s; its files may be incomplete', finish_timeout
            )
        self._queue = None
        self.run = None


def _resolve_mode(mode: str) -> str:
    """'auto': online with credentials, else offline; 'online' without them: offline."""
    if mode in ('auto', 'online') and not has_credentials():
        if mode == 'online':
            logging.warning('wandb.mode=online but no W&B credentials: logging offline')
        return 'offline'
    return 'online' if mode == 'auto' else mode
