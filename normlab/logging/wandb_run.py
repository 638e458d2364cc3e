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
import secrets

import jax
import ml_collections
from absl import logging
from flax import traverse_util


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
    """Thin wrapper: `log`, `summary`, `finish`; a no-op off process 0 or when disabled."""

    def __init__(self, config, workdir: str, *, tags: list[str] | None = None):
        self.run = None
        self.mode = 'disabled'
        if jax.process_index() != 0 or config.wandb.mode == 'disabled':
            return
        import wandb  # imported lazily: it is slow to import

        mode = config.wandb.mode
        if mode in ('auto', 'online') and not has_credentials():
            if mode == 'online':
                logging.warning('wandb.mode=online but no W&B credentials: logging offline')
            mode = 'offline'
        elif mode == 'auto':
            mode = 'online'
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
            settings=wandb.Settings(console='off', init_timeout=30, silent=True),
        )
        # Fallbacks, in order: offline if online fails (no network); a new run id
        # if the old one is still held (a killed process's W&B service); no W&B
        # at all rather than no training.
        attempts = [(mode, run_id)]
        if mode == 'online':
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
