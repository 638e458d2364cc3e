"""Trainers: the only place data, model, optimizer, mesh and logging meet."""

from normlab.train.classifier import NonFiniteLossError, train_and_evaluate
from normlab.train.config_checks import ConfigError

__all__ = ['ConfigError', 'NonFiniteLossError', 'train_and_evaluate']
