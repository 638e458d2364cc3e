"""Small models for fast normalization studies: a conv-norm-act CNN and the BatchNorm MLP.

``MLP`` is the network of Ioffe & Szegedy, "Batch Normalization: Accelerating Deep
Network Training by Reducing Internal Covariate Shift" (ICML 2015), Section 4.1: MNIST
through 3 fully-connected hidden layers of 100 sigmoid units, normalization inserted
before each nonlinearity. Their Figure 1(b, c) plots the 15th, 50th and 85th percentiles
of one sigmoid's input over training; the MLP sows every hidden layer's activation input
so a study can draw the same plot::

    model = models.create("mlp", num_classes=10, norm=norms.make_norm("batch_norm"))
    logits, state = model.apply(variables, images, train=False, mutable=["intermediates"])
    pre = state["intermediates"]["preact1"][0]            # (batch, 100)
    jnp.percentile(pre, jnp.array([15, 50, 85]))

``CNN`` is a VGG-style stack sized for 8x8 digits and 28x28 MNIST: stages of
``convs_per_stage`` 3x3 conv-norm-act units, 2x2 pooling between stages, global average
pooling, a linear classifier. A conv norm pools statistics over batch *and* spatial
positions, which is why it degrades far less than the MLP's at tiny batches.

Hidden layers keep their bias even where a mean-subtracting norm follows (where it is
redundant, as the BatchNorm paper notes) so that ``none`` and ``after_activation`` stay
well-posed; pass ``use_bias=False`` to drop it.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from normlab.models.common import (
    as_logits,
    check_images,
    check_norm_position,
    get_activation,
    norm_act,
    pooled_head,
    scaled_lecun_normal,
)
from normlab.norms import ModuleDef

POOLS = ('max', 'avg', 'none')


class MLP(nn.Module):
    """Fully-connected classifier; flattens any input to ``(batch, features)``.

    Attributes:
      num_classes: size of the logits.
      norm: normalization factory from ``normlab.norms.make_norm`` (normalizes features).
      widths: hidden layer sizes; their number is the depth. Default: the paper's 3x100.
      depth: None, or a number of hidden layers all of width ``widths[0]`` (then
        ``widths`` must have one entry): ``depth=50, widths=(100,)`` is a 50x100 MLP,
        a sweepable scalar for depth studies.
      act: activation, by name or as a function (paper: sigmoid).
      norm_position: ``'before_activation'`` (paper) or ``'after_activation'``.
      use_bias: bias in the hidden layers.
      kernel_init_scale: every kernel (hidden and head) starts as flax's LeCun normal
        times this factor (`normlab.models.common.scaled_lecun_normal`).
      dropout_rate: dropout on each hidden layer's output (Srivastava et al. 2014), in
        train mode only; needs ``rngs={'dropout': key}`` in ``apply`` when nonzero.
      dtype: compute dtype; logits are returned in float32.

    Every hidden layer ``k`` (1-based) sows the input of its nonlinearity into the
    ``'intermediates'`` collection as ``preact{k}``: ``norm(Wu + b)`` before the
    activation, or ``Wu + b`` with ``norm_position='after_activation'``. Nothing is
    recorded unless the caller asks for it with ``mutable=['intermediates']``.
    """

    num_classes: int
    norm: ModuleDef
    widths: Sequence[int] = (100, 100, 100)
    depth: int | None = None
    act: str | Callable = 'sigmoid'
    norm_position: str = 'before_activation'
    use_bias: bool = True
    kernel_init_scale: float = 1.0
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        check_norm_position(self.norm_position)
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f'MLP dropout_rate={self.dropout_rate} must be in [0, 1)')
        if x.ndim < 2:
            raise ValueError(f'MLP expects a batch (rank >= 2), got shape {tuple(x.shape)}')
        act = get_activation(self.act)
        norm = functools.partial(self.norm, use_running_average=not train, dtype=self.dtype)
        dense = functools.partial(
            nn.Dense, kernel_init=scaled_lecun_normal(self.kernel_init_scale), dtype=self.dtype
        )

        widths = tuple(self.widths)
        if self.depth is not None:
            if len(widths) != 1 or self.depth < 1:
                raise ValueError(
                    f'MLP depth={self.depth} needs depth >= 1 and one width, got widths={widths}'
                )
            widths = widths * self.depth
        x = x.reshape(x.shape[0], -1)
        for k, width in enumerate(widths, start=1):
            x = dense(width, use_bias=self.use_bias, name=f'dense{k}')(x)
            normalize = norm(name=f'norm{k}')

            def record(h, k=k):
                self.sow('intermediates', f'preact{k}', h)
                return act(h)

            x = norm_act(x, normalize, record, self.norm_position)
            if self.dropout_rate:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = dense(self.num_classes, name='head')(x)
        return as_logits(x)


class CNN(nn.Module):
    """Configurable conv-norm-act stack.

    Attributes:
      num_classes: size of the logits.
      norm: normalization factory from ``normlab.norms.make_norm``.
      widths: filters of each stage; a 2x2 stride-2 pool sits between stages.
      convs_per_stage: conv-norm-act units per stage.
      kernel_size: conv kernel side.
      pool: ``'max'``, ``'avg'`` or ``'none'`` (no downsampling at all).
      conv: convolution class (``nn.Conv`` or ``normlab.norms.WeightStandardizedConv``).
      act: activation, by name or as a function.
      norm_position: ``'before_activation'`` or ``'after_activation'``.
      use_bias: bias in the convs.
      kernel_init_scale: every kernel (convs and head) starts as flax's LeCun normal
        times this factor.
      dtype: compute dtype; logits are returned in float32.

    The defaults (3 stages of 32/64/128 filters, max pooling) take 8x8 digits to 2x2 and
    28x28 MNIST to 7x7 before the global pool. Inputs must be at least the total stride
    (``2 ** (len(widths) - 1)`` with pooling) on each side.
    """

    num_classes: int
    norm: ModuleDef
    widths: Sequence[int] = (32, 64, 128)
    convs_per_stage: int = 1
    kernel_size: int = 3
    pool: str = 'max'
    conv: ModuleDef = nn.Conv
    act: str | Callable = 'relu'
    norm_position: str = 'before_activation'
    use_bias: bool = True
    kernel_init_scale: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        check_norm_position(self.norm_position)
        if self.pool not in POOLS:
            raise ValueError(f'pool must be one of {POOLS}, got {self.pool!r}')
        num_pools = 0 if self.pool == 'none' else len(self.widths) - 1
        check_images(x, model='CNN', min_size=2**num_pools)
        act = get_activation(self.act)
        kernel_init = scaled_lecun_normal(self.kernel_init_scale)
        conv = functools.partial(
            self.conv, use_bias=self.use_bias, kernel_init=kernel_init, dtype=self.dtype
        )
        norm = functools.partial(self.norm, use_running_average=not train, dtype=self.dtype)
        kernel = (self.kernel_size, self.kernel_size)

        for i, width in enumerate(self.widths):
            if i > 0 and self.pool == 'max':
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='SAME')
            elif i > 0 and self.pool == 'avg':
                x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding='SAME')
            for j in range(self.convs_per_stage):
                name = f'stage{i + 1}_{j + 1}'
                x = conv(width, kernel, padding='SAME', name=f'conv{name}')(x)
                x = norm_act(x, norm(name=f'norm{name}'), act, self.norm_position)
        return pooled_head(x, self.num_classes, dtype=self.dtype, kernel_init=kernel_init)


VARIANTS = {'cnn': CNN, 'mlp': MLP}
