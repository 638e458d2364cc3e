"""Config validation before anything compiles: one clear line per problem."""

from __future__ import annotations

import difflib
import json
import math
import os
import socket

import jax.numpy as jnp
import ml_collections

from normlab import data, models, norms
from normlab.data import resident

EVAL_MODES = ('running', 'precise', 'batch')
OPTIMIZERS = ('sgd', 'adam', 'adamw')
SCHEDULES = ('constant', 'cosine', 'step')
# Compute dtypes a config may name, and what they are.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
WANDB_MODES = ('auto', 'online', 'offline', 'disabled')


class ConfigError(ValueError):
    """A bad config value; the launcher prints it as one line and exits 2."""


def choice(what: str, value, valid) -> None:
    """`value` must be one of `valid`; the error suggests the closest one."""
    if value not in valid:
        close = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1)
        hint = f' (did you mean {close[0]!r}?)' if close else ''
        raise ConfigError(f'{what}={value!r} is not valid{hint}; choose one of: {", ".join(valid)}')


def check_config(config, num_devices: int) -> None:
    """The config checks of `config`'s trainer, before anything is built."""
    if config.trainer == 'gan':
        from normlab.train.gan.checks import check_gan_config  # noqa: PLC0415 - no cycle

        check_gan_config(config, num_devices)
    else:
        check_classifier_config(config, num_devices)


def eval_modes(config) -> list[str]:
    modes = [m.strip() for m in config.eval_modes.split(',') if m.strip()]
    if not modes:
        raise ConfigError(f'eval_modes={config.eval_modes!r} names no mode; valid: running, ...')
    for m in modes:
        choice('eval_modes', m, EVAL_MODES)
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
    choice('data_placement', config.data_placement, resident.PLACEMENTS)
    if not config.device_data_mb > 0:
        raise ConfigError(f'device_data_mb={config.device_data_mb} must be positive')


def check_classifier_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raises ConfigError on the first bad value."""
    choice('dataset', config.dataset, list(data.SPECS))
    choice('model', config.model, sorted(models.MODELS))
    choice('norm.name', config.norm.name, list(norms.NORMS))
    choice('optimizer', config.optimizer, OPTIMIZERS)
    choice('schedule', config.schedule, SCHEDULES)
    choice('dtype', config.dtype, list(DTYPES))
    choice('lr_scaling', config.lr_scaling, ('linear', 'none'))
    choice('wandb.mode', config.wandb.mode, WANDB_MODES)
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


# Config keys a resumed run may change: they decide what is logged and evaluated when,
# and where, never the training trajectory (steps_per_call gives identical bits).
RESUMABLE = (
    'wandb',
    'study',
    'data_dir',
    'log_every_steps',
    'checkpoint_every_steps',
    'keep_checkpoints',
    'eval_every_steps',
    'eval_steps',
    'eval_batch_size',
    'record_preactivations',
    'record_grad_norms',
    'steps_per_call',
    'eval.cache_dir',
)


def _flat(tree: dict, prefix: str = '') -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> None:
    """A work directory's saved config must agree with `config` on every key that can
    change the run's results (all but `RESUMABLE`)."""
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = _flat(json.load(f))
    new = _flat(json.loads(config.to_json()))
    missing = object()
    diffs = [
        f'{k}: saved {saved.get(k, missing)!r}, now {new.get(k, missing)!r}'.replace(
            repr(missing), '(absent)'
        )
        for k in sorted(set(saved) | set(new))
        if saved.get(k, missing) != new.get(k, missing)
        and not any(k == r or k.startswith(r + '.') for r in RESUMABLE)
    ]
    if diffs:
        raise ConfigError(
            f'workdir={workdir!r} holds a run with other settings ({"; ".join(diffs)}); '
            'resume with the saved settings or use a new workdir'
        )
