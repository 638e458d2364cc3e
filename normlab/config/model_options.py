"""The options each classifier model takes, by name and type: ``config.model_options``.

Every classifier config's ``model_options`` holds every option its model takes, so an
override such as ``--config.model_options.norm_position=after_activation`` works on
each config whose model has that option and fails with a "did you mean" on one whose
model has not. A value of None leaves the model's own default (``normlab.models.create``
drops None options), so the defaults live in one place, the model classes;
``tests/test_configs.py`` checks this table against their fields.

Not options: what a model's name fixes (depth, stem, blocks, pre-activation), what the
trainer sets from other keys (``dtype`` from ``config.dtype``, ``conv`` from
``config.norm.weight_standardization``), ``num_classes`` and ``norm``.
"""

from __future__ import annotations

import difflib

import ml_collections
from ml_collections import config_dict

_NORMED = {'act': str, 'norm_position': str}
_RESNET = {'width': int, 'shortcut': str, **_NORMED, 'zero_init_last_norm': bool}
# A pre-activation block ends with a conv: there is no last norm to zero-initialize.
_PREACT_RESNET = {k: v for k, v in _RESNET.items() if k != 'zero_init_last_norm'}
_NF_RESNET = {'width': int, 'alpha': float, 'act': str}
_CNN = {
    'widths': tuple,
    'convs_per_stage': int,
    'kernel_size': int,
    'pool': str,
    **_NORMED,
    'use_bias': bool,
    'kernel_init_scale': float,
}
_MLP = {
    'widths': tuple,
    'depth': int,
    **_NORMED,
    'use_bias': bool,
    'kernel_init_scale': float,
    'dropout_rate': float,
}

_VIT_PLACEMENT = {
    'mlp_ratio': float,
    'pool': str,
    'norm_placement': str,
    'qk_norm': bool,
    'dropout_rate': float,
}
_VIT = {
    'patch_size': int,
    'width': int,
    'depth': int,
    'num_heads': int,
    **_VIT_PLACEMENT,
}

MODEL_OPTIONS: dict[str, dict[str, type]] = {'cnn': _CNN, 'mlp': _MLP, 'vit': _VIT}
# The published ViTs fix their sizes (patch 16, width, depth, heads).
for _size in ('ti', 's', 'b'):
    MODEL_OPTIONS[f'vit_{_size}16'] = _VIT_PLACEMENT
del _size
for _depth in (18, 34, 50, 101, 152, 20, 32, 44, 56, 110):
    MODEL_OPTIONS[f'resnet{_depth}'] = _RESNET
    MODEL_OPTIONS[f'preact_resnet{_depth}'] = _PREACT_RESNET
    MODEL_OPTIONS[f'nf_resnet{_depth}'] = _NF_RESNET
del _depth


def _choice(what: str, value: str, valid) -> None:
    if value not in valid:
        close = difflib.get_close_matches(value, list(valid), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ''
        raise ValueError(f'{what} {value!r} is not one of {sorted(valid)}{hint}')


def model_options(model: str, **values) -> ml_collections.ConfigDict:
    """Every option of classifier `model`, None (the model's default) unless in `values`."""
    _choice('classifier model', model, MODEL_OPTIONS)
    options = MODEL_OPTIONS[model]
    for key in values:
        _choice(f'option of {model}:', key, options)
    out = ml_collections.ConfigDict({k: config_dict.placeholder(t) for k, t in options.items()})
    out.update(values)
    return out


def set_model(config: ml_collections.ConfigDict, model: str, **values) -> None:
    """Sets ``config.model`` and its ``config.model_options`` (see `model_options`)."""
    config.model = model
    config.model_options = model_options(model, **values)
