"""GAN config validation before anything compiles: one clear line per problem.

Besides ranges and names, this rejects combinations that would train something
other than what the config says:

* A gradient penalty (``discriminator.r1_weight > 0``) with a discriminator norm
  that keeps batch statistics (batch norm, batch renorm, EvoNorm-B0). The penalty
  is on the gradient of D's output for each input *separately*; a norm that
  normalizes with batch statistics makes every output depend on the whole batch, so
  the penalized quantity is no longer that gradient. Gulrajani et al. (2017, Sec. 4)
  drop batch norm from the critic for this reason and suggest layer norm.
* An EMA generator (``generator.ema_decay``) evaluated with running statistics
  (``generator.eval_norm_stats='running'``) of a stateful generator norm: the
  running averages were collected for the trained weights, not for their average.
  Sample with ``'batch'`` statistics instead (or recompute them, as BigGAN does).
* A class-conditional GAN on an unlabelled dataset.
* Weight standardization, which the DCGAN models do not take.
"""

from __future__ import annotations

import ml_collections

from normlab import data, norms
from normlab.train.config_checks import (
    DTYPES,
    WANDB_MODES,
    ConfigError,
    check_loop_config,
    choice,
)
from normlab.train.gan.losses import LOSSES

EVAL_NORM_STATS = ('batch', 'running')


def _positive(what: str, value) -> None:
    if value is None or not value > 0:
        raise ConfigError(f'{what}={value} must be positive')


def _check_norm(what: str, norm: ml_collections.ConfigDict) -> None:
    choice(f'{what}.norm.name', norm.name, list(norms.NORMS))
    if norm.weight_standardization:
        raise ConfigError(
            f'{what}.norm.weight_standardization=True: the DCGAN models take no conv '
            'override; use spectral norm (discriminator.spectral_norm) instead'
        )


def check_gan_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raises ConfigError on the first bad value."""
    choice('dataset', config.dataset, list(data.SPECS))
    choice('loss', config.loss, list(LOSSES))
    choice('dtype', config.dtype, list(DTYPES))
    choice('wandb.mode', config.wandb.mode, WANDB_MODES)
    choice('generator.eval_norm_stats', config.generator.eval_norm_stats, EVAL_NORM_STATS)
    g, d = config.generator, config.discriminator
    _check_norm('generator', g.norm)
    _check_norm('discriminator', d.norm)
    for key in ('learning_rate', 'width', 'latent_dim'):
        _positive(f'generator.{key}', g[key])
    for key in ('learning_rate', 'width', 'steps'):
        _positive(f'discriminator.{key}', d[key])
    for key in ('batch_size', 'num_train_steps'):
        _positive(key, config[key])
    check_loop_config(config)
    _positive('eval.grid_rows', config.eval.grid_rows)
    for key in ('num_samples', 'num_real'):
        if config.eval[key] is None or config.eval[key] < 2:
            raise ConfigError(f'eval.{key}={config.eval[key]} must be >= 2 (a covariance needs 2)')
    if d.r1_weight < 0:
        raise ConfigError(f'discriminator.r1_weight={d.r1_weight} must be >= 0')
    if config.batch_size % num_devices:
        raise ConfigError(
            f'batch_size={config.batch_size} is not divisible by the {num_devices} devices; '
            f'use a multiple of {num_devices}'
        )
    if d.r1_weight > 0 and norms.is_stateful(d.norm.name):
        raise ConfigError(
            f'discriminator.norm.name={d.norm.name!r} normalizes with batch statistics, which '
            f'couples the examples that discriminator.r1_weight={d.r1_weight} penalizes one by '
            'one (Gulrajani et al. 2017); use layer_norm, group_norm, none or spectral_norm'
        )
    if g.ema_decay is not None:
        if not 0 < g.ema_decay < 1:
            raise ConfigError(f'generator.ema_decay={g.ema_decay} must be in (0, 1) or None')
        if g.eval_norm_stats == 'running' and norms.is_stateful(g.norm.name):
            raise ConfigError(
                f"generator.eval_norm_stats='running' with generator.ema_decay={g.ema_decay}: "
                f'the running statistics of {g.norm.name} belong to the trained weights, not to '
                "their EMA; use eval_norm_stats='batch'"
            )
    if config.conditional and not data.get_spec(config.dataset).num_classes:
        raise ConfigError(f'conditional=True needs labels, and dataset={config.dataset!r} has none')
    floor = config.divergence.d_loss_floor
    patience = config.divergence.patience_steps
    if (floor is None) != (patience is None):
        raise ConfigError(
            f'divergence.d_loss_floor={floor} and divergence.patience_steps={patience}: set '
            'both (collapse detection on) or both to None (off)'
        )
    if patience is not None:
        _positive('divergence.patience_steps', patience)
