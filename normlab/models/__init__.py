"""The model zoo: ResNets (ImageNet and CIFAR, v1 and v2), NF-ResNets, a CNN, the
BatchNorm-paper MLP, Vision Transformers and DCGAN, each taking its normalization as an
injected factory.

    from normlab import models, norms

    model = models.create("resnet20", num_classes=10, norm=norms.make_norm("group_norm"))
    variables = model.init(jax.random.key(0), images, train=False)
    logits, state = model.apply(variables, images, train=True, mutable=["batch_stats"])
    logits = model.apply(variables, images, train=False)

``create(name, *, num_classes, norm, **kwargs)`` looks ``name`` up in ``MODELS`` and
passes everything else to the model's constructor; a keyword the model does not take
fails loudly, naming the ones it does, and a None keyword leaves the model's default
(as ``config.model_options`` does: None is normlab's one "unset").
``norm`` is a ``ModuleDef`` from ``normlab.norms.make_norm``: models never build a norm
layer themselves. Names:

* ``resnet18/34/50/101/152`` (ImageNet v1.5) and ``preact_resnet18/...`` (v2);
  kwargs ``width``, ``shortcut`` (``'projection'``, their default, or ``'identity'``),
  ``conv``, ``act``, ``norm_position``, ``zero_init_last_norm`` (v1 only), ``dtype``.
* ``resnet20/32/44/56/110`` (CIFAR, He et al. 2016) and ``preact_resnet20/...``;
  the same kwargs, ``shortcut`` defaulting to ``'identity'``. Every ResNet is one
  class, ``resnet.ResNet``, with its stem, blocks, shortcut and pre-activation bound.
* ``nf_resnet20/.../110`` (CIFAR-shaped) and ``nf_resnet18/.../152`` (ImageNet-shaped):
  ``norm`` must be ``make_norm('none')``; kwargs ``width``, ``alpha``, ``act``, ``conv``,
  ``dtype``.
* ``cnn``: ``widths``, ``convs_per_stage``, ``kernel_size``, ``pool``, ``conv``, ``act``,
  ``norm_position``, ``use_bias``, ``kernel_init_scale``, ``dtype``.
* ``mlp``: ``widths``, ``depth``, ``act``, ``norm_position``, ``use_bias``,
  ``kernel_init_scale``, ``dtype``.
* ``vit_ti16``, ``vit_s16``, ``vit_b16`` (Dosovitskiy et al. 2021, patch 16) and ``vit``
  (configurable, sized for 8x8 / 28x28 inputs): ``patch_size``, ``width``, ``depth``,
  ``num_heads``, ``mlp_ratio``, ``pool`` (``'token'`` or ``'mean'``), ``norm_placement``
  (``'post'``, ``'pre'``, ``'peri'``, ``'none'``), ``qk_norm``, ``dropout_rate``,
  ``dtype`` (see ``normlab.models.vit`` for which axes each norm reduces there).
* ``dcgan_generator`` (``num_classes`` = classes to condition on; 0: unconditional):
  ``image_size``, ``out_channels``, ``latent_dim``, ``width``, ``act``,
  ``norm_position``, ``use_bias``, ``dtype``.
* ``dcgan_discriminator``: ``width``, ``spectral_norm``, ``negative_slope``,
  ``norm_position``, ``use_bias``, ``dtype``.
"""

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn

from normlab.models import cifar_resnet, dcgan, nf_resnet, resnet, simple, vit

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str, constructor: Callable[..., nn.Module]) -> None:
    """Adds a model constructor (a Module class or a partial of one) under ``name``."""
    if name in MODELS:
        raise ValueError(f'model {name!r} is already registered')
    MODELS[name] = constructor


def model_fields(name: str) -> list[str]:
    """The keyword arguments `create(name, ...)` accepts besides ``num_classes`` and ``norm``."""
    if name not in MODELS:
        raise ValueError(f'unknown model {name!r}; valid names: {", ".join(sorted(MODELS))}')
    constructor = MODELS[name]
    cls = constructor.func if isinstance(constructor, functools.partial) else constructor
    excluded = ('parent', 'name', 'num_classes', 'norm')
    return [f.name for f in dataclasses.fields(cls) if f.init and f.name not in excluded]


def create(name: str, *, num_classes: int, norm, **kwargs) -> nn.Module:
    """Builds the model registered as ``name``.

    Args:
      name: a key of ``MODELS``.
      num_classes: classifier outputs (>= 1); for ``dcgan_*`` the number of classes
        to condition on, 0 for an unconditional network.
      norm: normalization factory from ``normlab.norms.make_norm``.
      **kwargs: model attributes (see the module docstring); None leaves the default.
    """
    fields = model_fields(name)
    minimum = 0 if name in dcgan.VARIANTS else 1  # the GANs condition on 0 classes or more
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < minimum:
        what = 'an int >= 0 (0: unconditional)' if minimum == 0 else 'a positive int'
        raise ValueError(f'{name}: num_classes must be {what}, got {num_classes!r}')
    if not callable(norm):
        raise TypeError(
            f"norm must be a factory from normlab.norms.make_norm (use make_norm('none') for "
            f'no normalization), got {norm!r}'
        )
    # None is "unset": the model's default, even for an option it does not have (a
    # study that swaps the model keeps the other model's unset options).
    options = {k: v for k, v in kwargs.items() if v is not None}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise TypeError(
            f'{name} takes no option {", ".join(unknown)}; its options: {", ".join(fields)}'
        )
    return MODELS[name](num_classes=num_classes, norm=norm, **options)


for _family in (resnet, cifar_resnet, nf_resnet, simple, vit, dcgan):
    for _name, _constructor in _family.VARIANTS.items():
        register(_name, _constructor)
del _family, _name, _constructor

__all__ = ['MODELS', 'create', 'model_fields', 'register']
