"""Trainers: the only place data, model, optimizer, mesh and logging meet.

Imports are lazy: the launcher imports this package and should not
pay for TensorFlow and the trainers.
"""

import importlib

_EXPORTS = {
    'ConfigError': 'normlab.train.config_checks',
    'DivergedError': 'normlab.train.loop',
    'train_and_evaluate': 'normlab.train.classifier',
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
