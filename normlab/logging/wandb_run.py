"""A Weights & Biases run that never blocks training.

``mode='auto'`` logs online when credentials are present and offline
otherwise (sync later with ``wandb sync DIR/wandb/offline-run-*``); an online
start that fails (no network) falls back to offline (`resolve_mode`, `start_run`,
shared with a study's summary run). Only process 0 logs.
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

# How long `wandb.init` may wait for W&B before failing over to offline logging (W&B's
# own default is 90 s): a run without network starts training after at most this.
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
    """A run's W&B tags, for either trainer: what its study varies (the norms, the
    model or loss), its dataset and batch size, its study, then ``config.wandb.tags``."""
    if config.trainer == 'gan':
        d = config.discriminator
        varied = [
            'gan',
            f'g_norm:{config.generator.norm.name}',
            f'd_norm:{d.norm.name}' + ('+spectral' if d.spectral_norm else ''),
            f'loss:{config.loss}',
        ]
    else:
        varied = [f'norm:{config.norm.name}', f'model:{config.model}']
    tags = [*varied, f'dataset:{config.dataset}', f'batch:{config.batch_size}']
    if config.study is not None:
        tags.append(f'study:{config.study}')
    return tags + list(config.wandb.tags)


def resolve_mode(mode: str) -> str:
    """``config.wandb.mode`` as W&B takes it: 'auto' is online with credentials and
    offline without; 'online' without credentials is offline too (with a warning)."""
    if mode not in ('auto', 'online'):
        return mode
    if has_credentials():
        return 'online'
    if mode == 'online':
        logging.warning('wandb.mode=online but no W&B credentials: logging offline')
    return 'offline'


def start_run(mode: str, run_id: str, **init_kwargs):
    """``(run, mode)`` of ``wandb.init`` that never stops the caller: ``(None, 'disabled')``
    if every attempt fails.

    Fallbacks, in order: offline if online fails (no network); a new run id if the
    old one is still held (a killed process's W&B service, or the failed online
    start); no W&B at all rather than no training.
    """
    import wandb  # imported lazily: it is slow to import

    # create_new: the runs of a bundle are open at once, each its own W&B run.
    settings = wandb.Settings(
        console='off', init_timeout=INIT_TIMEOUT_S, silent=True, reinit='create_new'
    )
    attempts = [(mode, run_id)]
    if mode == 'online':  # under a new id: the failed online start may still hold the old one
        attempts.append(('offline', secrets.token_hex(4)))
    attempts.append(('offline', secrets.token_hex(4)))
    for mode, run_id in attempts:
        try:
            return wandb.init(mode=mode, id=run_id, settings=settings, **init_kwargs), mode
        except Exception as e:  # noqa: BLE001 - a W&B failure must not stop the caller
            logging.warning('W&B %s start failed (%s)', mode, str(e).splitlines()[-1:])
    logging.warning('W&B disabled; the files are still written')
    return None, 'disabled'


class WandbRun:
    """`log`, `log_images`, `summary`, `finish`; a no-op off process 0 or when disabled.

    W&B starts on a thread of its own and every call is queued for it, so training
    never waits on W&B: not for its service to start, not for a network that does not
    answer (an online start that times out falls back to offline while the run
    trains). Only `finish` waits, at most ``finish_timeout`` seconds, for the queue to
    drain so the run's W&B files are complete.
    """

    def __init__(self, config, workdir: str):
        self.run = None
        self._queue: queue.Queue | None = None
        if jax.process_index() != 0 or config.wandb.mode == 'disabled':
            self.mode = 'disabled'
            return
        self.mode = resolve_mode(config.wandb.mode)
        self._queue = queue.Queue()
        self._thread = threading.Thread(
            target=self._serve, args=(config, workdir), name='wandb', daemon=True
        )
        self._thread.start()

    def _serve(self, config, workdir) -> None:
        self._start(config, workdir)
        while (call := self._queue.get()) is not None:
            if self.run is not None:
                try:
                    call(self.run)
                except Exception as e:  # noqa: BLE001 - a W&B failure must not stop training
                    logging.warning('W&B call failed (%s)', str(e).splitlines()[-1:])

    def _start(self, config, workdir) -> None:
        id_path = os.path.join(workdir, 'wandb_run_id')
        if os.path.exists(id_path):
            with open(id_path) as f:
                run_id = f.read().strip()
        else:  # `wandb agent` names the run it expects in WANDB_RUN_ID
            run_id = os.environ.get('WANDB_RUN_ID') or secrets.token_hex(4)
        self.run, self.mode = start_run(
            self.mode,
            run_id,
            project=config.wandb.project,
            entity=config.wandb.entity,
            group=config.wandb.group if config.wandb.group is not None else config.study,
            name=(
                config.wandb.name
                if config.wandb.name is not None
                else os.path.basename(os.path.abspath(workdir))
            ),
            tags=run_tags(config),
            config=flat_config(config),
            dir=workdir,
            resume='allow',
        )
        if self.run is not None:
            with open(id_path, 'w') as f:
                f.write(self.run.id)

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
