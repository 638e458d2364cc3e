"""DCGAN generator and discriminator (Radford, Metz & Chintala, ICLR 2016), any norm.

The generator projects a latent ``z`` to a ``start x start`` map and doubles its side
with stride-2 4x4 transposed convs until it reaches ``image_size``; the discriminator
mirrors it with stride-2 4x4 convs and ends with a linear layer. Channels halve at each
generator stage (``width * 2**(n-1)`` ... ``width``) and double at each discriminator
stage, as in the paper. The number of stages ``n`` follows from the image size: halve
it while it stays even and at least 4 after halving, so 64 = 4 * 2**4, 32 = 4 * 2**3,
28 = 7 * 2**2 (MNIST) and 8 = 4 * 2 (digits). Any even size >= 8 works.

DCGAN's recipe, kept here: normalization in every generator layer but the output
(which is ``tanh``), ReLU in the generator, no normalization on the discriminator's
first layer, LeakyReLU(0.2) in the discriminator. Each network takes its own ``norm``
factory, so e.g. a study can put batch norm in the generator and layer norm in the
discriminator. 4x4 kernels with stride 2 avoid the checkerboard artifacts of 5x5 ones
(Odena et al. 2016).

Conditioning (``num_classes > 0``; ``0`` means unconditional):

* The generator uses *conditional normalization* (Dumoulin et al. 2017, de Vries et
  al. 2017; the class-conditional batch norm of Miyato & Koyama 2018): the norm
  factory is called with ``use_scale=False, use_bias=False`` and a per-class scale
  (initialized to 1) and offset (initialized to 0) are looked up from the labels.
* The discriminator is a projection discriminator (Miyato & Koyama, ICLR 2018): the
  logit is ``psi(phi(x)) + <embed(y), phi(x)>`` on its flattened features ``phi(x)``.

``spectral_norm=True`` wraps every conv and dense layer of the discriminator in
``normlab.norms.SpectralNorm`` (Miyato et al. 2018); its power-iteration vectors live in
the ``'spectral_stats'`` collection, so a training step applies with
``mutable=['batch_stats', 'spectral_stats']``::

    gen = models.create("dcgan_generator", num_classes=0, norm=norms.make_norm("batch_norm"),
                        image_size=28, out_channels=1)
    disc = models.create("dcgan_discriminator", num_classes=0, norm=norms.make_norm("none"),
                         spectral_norm=True)
    z = jax.random.normal(key, (batch, gen.latent_dim))
    fake, g_state = gen.apply(g_vars, z, train=True, mutable=["batch_stats"])
    logits, d_state = disc.apply(d_vars, fake, train=True,
                                 mutable=["batch_stats", "spectral_stats"])  # (batch,)
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from normlab.models.common import (
    as_logits,
    check_norm_position,
    get_activation,
    norm_act,
)
from normlab.norms import ModuleDef, SpectralNorm


def stage_plan(image_size: int) -> tuple[int, int]:
    """Returns ``(start, n)`` with ``image_size == start * 2**n``, ``4 <= start``, ``n >= 1``."""
    start, n = image_size, 0
    while start % 2 == 0 and start // 2 >= 4:
        start, n = start // 2, n + 1
    if n == 0:
        raise ValueError(
            f'DCGAN needs an even image size of at least 8 (e.g. 8, 28, 32, 64), got {image_size}'
        )
    return start, n


def _check_labels(model: str, num_classes: int, labels, batch: int) -> None:
    if num_classes > 0 and labels is None:
        raise ValueError(f'{model} is conditional (num_classes={num_classes}): pass labels')
    if num_classes == 0 and labels is not None:
        raise ValueError(f'{model} is unconditional (num_classes={num_classes}): got labels')
    if labels is not None and tuple(labels.shape) != (batch,):
        raise ValueError(
            f'{model} expects integer labels of shape ({batch},), got {tuple(labels.shape)}'
        )


class ClassConditionalNorm(nn.Module):
    """Normalizes with the injected norm (no affine of its own), then applies a
    class-dependent scale and offset: ``norm(x) * gamma[y] + beta[y]``."""

    norm: ModuleDef
    num_classes: int

    @nn.compact
    def __call__(self, x, labels):
        x = self.norm(use_scale=False, use_bias=False, name='norm')(x)
        features = x.shape[-1]
        scale = nn.Embed(
            self.num_classes, features, embedding_init=nn.initializers.ones_init(), name='scale'
        )
        bias = nn.Embed(
            self.num_classes, features, embedding_init=nn.initializers.zeros_init(), name='bias'
        )
        # Explicit (N, 1, 1, C) shapes: no implicit rank promotion.
        gamma = scale(labels).reshape(x.shape[0], 1, 1, features)
        beta = bias(labels).reshape(x.shape[0], 1, 1, features)
        return x * gamma.astype(x.dtype) + beta.astype(x.dtype)


class Generator(nn.Module):
    """DCGAN generator: ``z (N, latent_dim) -> images (N, image_size, image_size, out_channels)``
    in ``[-1, 1]``, float32.

    Attributes:
      num_classes: classes to condition on; ``0``: unconditional.
      norm: normalization factory from ``normlab.norms.make_norm``.
      image_size: output side (8, 28, 32, 64, or any even size >= 8).
      out_channels: output channels (1 for MNIST, 3 for CIFAR / CelebA).
      latent_dim: size of ``z``; a trainer samples ``(batch, model.latent_dim)``.
      width: channels of the last hidden stage; the first has ``width * 2**(n-1)``.
      act: hidden activation (paper: ReLU).
      norm_position: ``'before_activation'`` (paper) or ``'after_activation'``.
      use_bias: bias in hidden layers (redundant before a mean-subtracting norm).
      dtype: compute dtype.

    Called as ``generator.apply(variables, z, labels=labels, train=...)``.
    """

    num_classes: int
    norm: ModuleDef
    image_size: int = 32
    out_channels: int = 3
    latent_dim: int = 100
    width: int = 64
    act: str | Callable = 'relu'
    norm_position: str = 'before_activation'
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z, labels=None, train: bool = True):
        check_norm_position(self.norm_position)
        start, n = stage_plan(self.image_size)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f'Generator expects z of shape (batch, {self.latent_dim}), got {tuple(z.shape)}'
            )
        _check_labels('Generator', self.num_classes, labels, z.shape[0])
        act = get_activation(self.act)
        norm = functools.partial(self.norm, use_running_average=not train, dtype=self.dtype)

        def normalize(name):
            if self.num_classes > 0:
                layer = ClassConditionalNorm(norm, self.num_classes, name=name)
                return lambda h: layer(h, labels)
            return norm(name=name)

        channels = self.width * 2 ** (n - 1)
        x = nn.Dense(
            start * start * channels, use_bias=self.use_bias, dtype=self.dtype, name='project'
        )(z)
        x = x.reshape(z.shape[0], start, start, channels)
        x = norm_act(x, normalize('norm0'), act, self.norm_position)
        for i in range(1, n):
            x = nn.ConvTranspose(
                self.width * 2 ** (n - 1 - i),
                (4, 4),
                strides=(2, 2),
                padding='SAME',
                use_bias=self.use_bias,
                dtype=self.dtype,
                name=f'deconv{i}',
            )(x)
            x = norm_act(x, normalize(f'norm{i}'), act, self.norm_position)
        x = nn.ConvTranspose(
            self.out_channels,
            (4, 4),
            strides=(2, 2),
            padding='SAME',
            dtype=self.dtype,
            name='deconv_out',
        )(x)
        return jnp.tanh(as_logits(x))


class Discriminator(nn.Module):
    """DCGAN discriminator: ``images (N, S, S, C) -> logits (N,)`` in float32 (real vs fake).

    Attributes:
      num_classes: classes of the projection term; ``0``: unconditional.
      norm: normalization factory; not applied to the first layer.
      width: channels of the first layer; each later stage doubles them.
      spectral_norm: wrap every conv and dense layer in ``normlab.norms.SpectralNorm``.
      negative_slope: of the LeakyReLU (paper: 0.2).
      norm_position: ``'before_activation'`` (paper) or ``'after_activation'``.
      use_bias: bias in the convs.
      dtype: compute dtype.

    The number of stages follows from the input side ``S`` (square, even, >= 8) like the
    generator's. Called as ``discriminator.apply(variables, images, labels=labels, train=...)``.
    """

    num_classes: int
    norm: ModuleDef
    width: int = 64
    spectral_norm: bool = False
    negative_slope: float = 0.2
    norm_position: str = 'before_activation'
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, labels=None, train: bool = True):
        check_norm_position(self.norm_position)
        if images.ndim != 4 or images.shape[1] != images.shape[2]:
            raise ValueError(
                f'Discriminator expects square NHWC images, got shape {tuple(images.shape)}'
            )
        try:
            _, n = stage_plan(images.shape[1])
        except ValueError as e:
            raise ValueError(f'{e}; got images of shape {tuple(images.shape)}') from None
        _check_labels('Discriminator', self.num_classes, labels, images.shape[0])
        act = functools.partial(nn.leaky_relu, negative_slope=self.negative_slope)
        norm = functools.partial(self.norm, use_running_average=not train, dtype=self.dtype)

        def layer(make, name):
            # The layer keeps its name (and its params' paths) with or without spectral
            # norm; the wrapper beside it holds the power-iteration state.
            if self.spectral_norm:
                wrapped = SpectralNorm(make(name=name), name=f'{name}_spectral_norm')
                return lambda h: wrapped(h, update_stats=train)
            return make(name=name)

        def conv(features, name):
            make = functools.partial(
                nn.Conv,
                features,
                (4, 4),
                strides=(2, 2),
                padding=((1, 1), (1, 1)),
                use_bias=self.use_bias,
                dtype=self.dtype,
            )
            return layer(make, name)

        x = act(conv(self.width, 'conv1')(images))
        for i in range(1, n):
            x = conv(self.width * 2**i, f'conv{i + 1}')(x)
            x = norm_act(x, norm(name=f'norm{i + 1}'), act, self.norm_position)
        features = x.reshape(x.shape[0], -1)
        head = layer(functools.partial(nn.Dense, 1, dtype=self.dtype), 'head')
        logits = head(features)[:, 0]
        if self.num_classes > 0:
            embed = nn.Embed(self.num_classes, features.shape[-1], dtype=self.dtype, name='embed')
            logits = logits + jnp.sum(embed(labels) * features, axis=-1)
        return as_logits(logits)


VARIANTS = {'dcgan_generator': Generator, 'dcgan_discriminator': Discriminator}
