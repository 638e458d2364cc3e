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
import secrets
import socket
import threading

import jax
import ml_collections
from absl import logging
from flax import traverse_util

# How long `wandb.init` may wait for W&B before failing over to offline logging (W&B's
# own default is 90 s): a run without network starts training after at most this.
INIT_TIMEOUT_S = 30
# The most an online run waits to learn whether the W&B server answers at all.
PROBE_TIMEOUT_S = 3.0
WANDB_HOST = 'api.wandb.ai'


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


def reachable(host: str = WANDB_HOST, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether `host` answers a TCP connection within `timeout` seconds (name lookup
    included, which a socket timeout does not bound: it runs on a helper thread)."""
    result = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


class WandbRun:
    """`log`, `log_images`, `summary`, `finish`; a no-op off process 0 or when disabled.

    Training never waits on W&B for long: an online run first checks in at most
    ``PROBE_TIMEOUT_S`` seconds that the W&B server answers, and logs offline (under a
    new run id) when it does not, instead of waiting ``INIT_TIMEOUT_S`` for
    ``wandb.init`` to give up.
    """

    def __init__(self, config, workdir: str):
        self.run = None
        self.mode = 'disabled'
        if jax.process_index() != 0 or config.wandb.mode == 'disabled':
            return
        id_path = os.path.join(workdir, 'wandb_run_id')
        if os.path.exists(id_path):
            with open(id_path) as f:
                run_id = f.read().strip()
        else:  # `wandb agent` names the run it expects in WANDB_RUN_ID
            run_id = os.environ.get('WANDB_RUN_ID') or secrets.token_hex(4)
        mode = resolve_mode(config.wandb.mode)
        if mode == 'online' and not reachable():
            logging.warning('W&B server unreachable: logging offline (sync later)')
            mode, run_id = 'offline', secrets.token_hex(4)
        self.run, self.mode = start_run(
            mode,
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

    def log(self, metrics: dict, step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_images(self, images: dict, step: int) -> None:
        if self.run is not None:
            import wandb

            self.run.log({k: wandb.Image(v) for k, v in images.items()}, step=step)

    def summary(self, values: dict) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
