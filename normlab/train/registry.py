"""Which trainer a config runs: ``config.trainer`` names it."""

from __future__ import annotations

import importlib

# name -> module with `train_and_evaluate(config, workdir)`; imported on use.
TRAINERS = {'classifier': 'normlab.train.classifier', 'gan': 'normlab.train.gan'}


def trainer_for(config):
    """The trainer module's ``train_and_evaluate(config, workdir)``."""
    return _module(config).train_and_evaluate


def bundle_trainer_for(config):
    """The trainer module's ``train_bundle(configs, workdirs)``, or None if its runs only
    train one at a time."""
    return getattr(_module(config), 'train_bundle', None)


def _module(config):
    name = config.trainer
    if name not in TRAINERS:
        from normlab.train.config_checks import ConfigError

        raise ConfigError(f'config.trainer={name!r} is not one of {sorted(TRAINERS)}')
    return importlib.import_module(TRAINERS[name])
