"""Config validation before anything compiles: one clear line per problem."""

from __future__ import annotations

import json
import math
import os
import socket

import ml_collections

from normlab import data, models, norms
from normlab.data import resident

EVAL_MODES = ('running', 'precise', 'batch')
OPTIMIZERS = ('sgd', 'adam', 'adamw')
SCHEDULES = ('constant', 'cosine', 'step')
DTYPES = ('float32', 'bfloat16')
WANDB_MODES = ('auto', 'online', 'offline', 'disabled')
# Keys that change what the model computes: a resume must agree on them.
MODEL_KEYS = ('dataset', 'model', 'model_options', 'norm', 'dtype')


class ConfigError(ValueError):
    """A bad config value; the launcher prints it as one line and exits 2."""


def _choice(what: str, value, valid) -> None:
    if value not in valid:
        raise ConfigError(f'{what}={value!r} is not valid; choose one of: {", ".join(valid)}')


def eval_modes(config) -> list[str]:
    modes = [m.strip() for m in config.eval_modes.split(',') if m.strip()]
    if not modes:
        raise ConfigError(f'eval_modes={config.eval_modes!r} names no mode; valid: running, ...')
    for m in modes:
        _choice('eval_modes', m, EVAL_MODES)
    return modes


def check_loop_config(config) -> None:
    """The keys `normlab.train.loop` reads, for every trainer."""
    for key in ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
        if not isinstance(config[key], int) or config[key] <= 0:
            raise ConfigError(f'{key}={config[key]!r} must be a positive int')
    for key in ('eval_every_steps', 'steps_per_call'):
        if config[key] is not None and config[key] <= 0:
            raise ConfigError(f'{key}={config[key]!r} must be a positive int or None')
    bad = [s for s in config.eval_steps if not isinstance(s, int) or s < 0]
    if bad:
        raise ConfigError(f'eval_steps={tuple(config.eval_steps)!r}: {bad} are not steps >= 0')
    _choice('data_placement', config.data_placement, resident.PLACEMENTS)
    if not config.device_data_mb > 0:
        raise ConfigError(f'device_data_mb={config.device_data_mb} must be positive')


def check_classifier_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raises ConfigError on the first bad value."""
    _choice('dataset', config.dataset, list(data.SPECS))
    _choice('model', config.model, sorted(models.MODELS))
    _choice('norm.name', config.norm.name, list(norms.NORMS))
    _choice('optimizer', config.optimizer, OPTIMIZERS)
    _choice('schedule', config.schedule, SCHEDULES)
    _choice('dtype', config.dtype, DTYPES)
    _choice('lr_scaling', config.lr_scaling, ('linear', 'none'))
    _choice('wandb.mode', config.wandb.mode, WANDB_MODES)
    eval_modes(config)
    if not (math.isfinite(config.learning_rate) and config.learning_rate > 0):
        raise ConfigError(f'learning_rate={config.learning_rate} must be a positive finite number')
    check_loop_config(config)
    if config.num_train_steps is not None and config.num_train_steps <= 0:
        raise ConfigError(f'num_train_steps={config.num_train_steps} must be a positive int')
    if config.num_train_steps is None and not config.num_epochs > 0:
        raise ConfigError(f'num_epochs={config.num_epochs} must be positive')
    for key in ('batch_size', 'eval_batch_size', 'precise_bn_batches'):
        if config[key] <= 0:
            raise ConfigError(f'{key}={config[key]} must be a positive int')
    for key in ('batch_size', 'eval_batch_size'):
        if config[key] % num_devices:
            raise ConfigError(
                f'{key}={config[key]} is not divisible by the {num_devices} devices; use a '
                f'multiple of {num_devices}'
            )
    local = config.batch_size // num_devices
    k = config.norm.virtual_batch_size
    if k is not None and norms.is_stateful(config.norm.name):
        if k <= 0:
            raise ConfigError(f'norm.virtual_batch_size={k} must be a positive int or None')
        if k < local and local % k:
            raise ConfigError(
                f'norm.virtual_batch_size={k} does not divide the per-device batch of {local} '
                f'(batch_size={config.batch_size} on {num_devices} devices)'
            )
        if k > local and (k % local or num_devices % (k // local)):
            raise ConfigError(
                f'norm.virtual_batch_size={k} must be a multiple of the per-device batch of '
                f'{local} that divides the global batch of {config.batch_size} '
                f'({num_devices} devices)'
            )
    if config.norm.name in ('group_norm', 'evonorm_s0') and config.norm.num_groups <= 0:
        raise ConfigError(f'norm.num_groups={config.norm.num_groups} must be a positive int')


def check_workdir(workdir: str) -> None:
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f'workdir={workdir!r} is a file, not a directory')
    try:
        os.makedirs(workdir, exist_ok=True)
        # One probe per process: the processes of a multi-host run share the workdir.
        probe = os.path.join(workdir, f'.write_test.{socket.gethostname()}.{os.getpid()}')
        with open(probe, 'w') as f:
            f.write('')
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f'workdir={workdir!r} is not writable ({e.strerror})') from e


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> None:
    """A saved config must agree with `config` on everything that shapes the model."""
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = json.load(f)
    new = json.loads(config.to_json())
    diffs = [
        f'{k}: saved {saved.get(k)!r} != new {new.get(k)!r}'
        for k in MODEL_KEYS
        if saved.get(k) != new.get(k)
    ]
    if diffs:
        raise ConfigError(
            f'workdir={workdir!r} holds a run whose model differs ({"; ".join(diffs)}); use a '
            'new workdir or the saved settings'
        )
