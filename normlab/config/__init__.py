"""Config building blocks for `configs/*.py` and `experiments/*.py`.

A config file imports only from here, never from a trainer, so loading a config
costs no TensorFlow or JAX import:

- `classifier`: every key a classifier config has (`classifier_config`), the norm and
  W&B sections, `shrink_classifier_for_smoke`;
- `model_options`: the options each classifier model takes (`set_model`);
- `gan`: every key a GAN config has (`gan_config`), `set_norms`, `shrink_gan_for_smoke`;
- `args`: `parse_arg`, the typed ``--config=file.py:key=value,...`` argument.

``config.trainer`` names the trainer a config runs (`normlab.train.registry`).
"""

from normlab.config.args import parse_arg
from normlab.config.classifier import (
    classifier_config,
    norm_config,
    shrink_classifier_for_smoke,
    wandb_config,
)
from normlab.config.gan import SPECTRAL, gan_config, set_norms, shrink_gan_for_smoke
from normlab.config.model_options import set_model

__all__ = [
    'SPECTRAL',
    'classifier_config',
    'gan_config',
    'norm_config',
    'parse_arg',
    'set_model',
    'set_norms',
    'shrink_classifier_for_smoke',
    'shrink_gan_for_smoke',
    'wandb_config',
]
