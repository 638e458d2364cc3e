"""Per-example normalizations: Layer, Group, Instance and RMS normalization.

Drop-in compatible with their `flax.linen` namesakes (fields, defaults,
``params/{scale,bias}``, results). None of them keeps state or depends on the
other examples in the batch, which is why Group Normalization (Wu & He 2018)
holds its accuracy at batch sizes where BatchNorm's statistics become noise.

They differ only in the axes they reduce, for an ``(N, H, W, C)`` input:

* LayerNorm (Ba et al. 2016): ``reduction_axes`` (default: the last axis);
* InstanceNorm (Ulyanov et al. 2016): H, W per example and channel;
* GroupNorm: H, W and the channels of each of ``num_groups`` groups
  (``GroupNorm(num_groups=1)`` is LayerNorm over H, W, C;
  ``GroupNorm(num_groups=None, group_size=1)`` is InstanceNorm);
* RMSNorm (Zhang & Sennrich 2019): LayerNorm without re-centering.

Every one accepts ``use_running_average`` and ignores it, so models can bind
the training mode once for any registered norm.

``mask`` (broadcastable to the input, as in flax) picks the positions each
example's statistics pool, e.g. the real tokens of a padded sequence; masked
positions may hold anything (NaN, inf) and reach no statistic, no output at a
real position and no gradient. Complex inputs follow flax (a complex mean,
the real variance ``E|x - E[x]|^2``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax.typing import Axes, Dtype, Initializer

from normlab.norms import functional as F
from normlab.norms.affine import affine_params, output_dtype
from normlab.norms.validation import channel_groups, check_epsilon, check_group_spec


class _PerExampleNorm(nn.Module):
    """Shared body: subclasses pick the axes in `_axes`."""

    def __post_init__(self):
        check_epsilon(type(self).__name__, self.epsilon)
        super().__post_init__()

    def _run(self, x, reduction_axes, feature_axes, mask, *, use_mean=True, use_bias=None):
        feature_shape = tuple(x.shape[a] for a in feature_axes)
        bshape = tuple(x.shape[i] if i in feature_axes else 1 for i in range(x.ndim))
        scale, bias = affine_params(self, feature_shape, bshape, use_bias=use_bias)
        m = F.moments(
            x,
            reduction_axes,
            dtype=F.stats_dtype(x.dtype, self.dtype, self.force_float32_reductions),
            mask=mask,
            use_mean=use_mean,
            single_pass=self.use_fast_variance,
            axis_name=self.axis_name,
            axis_index_groups=self.axis_index_groups,
        )
        return F.normalize(
            x,
            m.mean if use_mean else 0.0,
            m.var,
            epsilon=self.epsilon,
            scale=scale,
            bias=bias,
            dtype=output_dtype(x, scale, bias, self.dtype),
            mask=mask,
        )


class LayerNorm(_PerExampleNorm):
    """Layer normalization (Ba et al. 2016, arXiv:1607.06450).

    Normalizes each example over ``reduction_axes`` and learns a scale and bias
    over ``feature_axes``. Default epsilon 1e-6 (flax); PyTorch uses 1e-5.
    ``reduction_axes=None`` (a normlab extension) reduces every non-batch axis:
    Ba et al.'s and Wu & He's LayerNorm of a conv feature map over (H, W, C),
    which ``make_norm('layer_norm')`` uses by default.
    """

    epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = nn.initializers.zeros
    scale_init: Initializer = nn.initializers.ones
    reduction_axes: Axes | None = -1
    feature_axes: Axes = -1
    axis_name: str | None = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    use_running_average: bool | None = None

    @nn.compact
    def __call__(self, x, *, mask=None):
        if self.reduction_axes is None:
            red = tuple(range(1, x.ndim))
        else:
            red = F.canonical_axes(x.ndim, self.reduction_axes, what='LayerNorm(reduction_axes)')
        feat = F.canonical_axes(x.ndim, self.feature_axes, what='LayerNorm(feature_axes)')
        return self._run(x, red, feat, mask)


class RMSNorm(_PerExampleNorm):
    """Root-mean-square normalization (Zhang & Sennrich 2019, arXiv:1910.07467).

    ``x / sqrt(mean(x^2) + eps) * scale``: LayerNorm without the mean and bias.
    """

    epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_scale: bool = True
    scale_init: Initializer = nn.initializers.ones
    reduction_axes: Axes = -1
    feature_axes: Axes = -1
    axis_name: str | None = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    use_running_average: bool | None = None

    @nn.compact
    def __call__(self, x, *, mask=None):
        red = F.canonical_axes(x.ndim, self.reduction_axes, what='RMSNorm(reduction_axes)')
        feat = F.canonical_axes(x.ndim, self.feature_axes, what='RMSNorm(feature_axes)')
        return self._run(x, red, feat, mask, use_mean=False, use_bias=False)


class InstanceNorm(_PerExampleNorm):
    """Instance normalization (Ulyanov et al. 2016, arXiv:1607.08022).

    Normalizes each example and each feature over all other non-batch axes
    (the spatial positions of one channel of one image).
    """

    epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = nn.initializers.zeros
    scale_init: Initializer = nn.initializers.ones
    feature_axes: Axes = -1
    axis_name: str | None = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    use_running_average: bool | None = None

    @nn.compact
    def __call__(self, x, *, mask=None):
        feat = F.canonical_axes(x.ndim, self.feature_axes, what='InstanceNorm(feature_axes)')
        if 0 in feat:
            raise ValueError(
                f'InstanceNorm(feature_axes={self.feature_axes}) includes axis 0, the batch axis'
            )
        red = tuple(i for i in range(1, x.ndim) if i not in feat)
        return self._run(x, red, feat, mask)


class GroupNorm(_PerExampleNorm):
    """Group normalization (Wu & He 2018, arXiv:1803.08494).

    Splits the last (channel) axis into ``num_groups`` groups (or groups of
    ``group_size`` channels; give exactly one, ``num_groups=None`` to use
    ``group_size``) and normalizes each example over the non-batch axes of each
    group. Default 32 groups, as in the paper (and flax): channels that 32 does
    not divide raise an error naming the valid choices.

    Attributes (beyond flax's):
      min_group_size: makes ``num_groups`` an upper bound, so one setting fits
        every layer of a model: each layer uses the largest divisor of its
        channel count that is at most ``num_groups`` and leaves at least
        ``min_group_size`` channels per group (one group if none does).
        ``make_norm('group_norm')`` sets 2 unless given ``num_groups`` or
        ``group_size``: 32 groups for 64, 128, ... 2048 channels, 8 groups of 2 for
        the 16 channels of a CIFAR ResNet's first stage, never InstanceNorm's
        single channel per group (the worst setting in Wu & He's Table 3).
        Unused with ``group_size``, which already fixes the channels per group.
        None (the class default): ``num_groups`` exactly, as flax.
    """

    num_groups: int | None = 32
    group_size: int | None = None
    min_group_size: int | None = None
    epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = nn.initializers.zeros
    scale_init: Initializer = nn.initializers.ones
    reduction_axes: Axes | None = None
    axis_name: str | None = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    use_running_average: bool | None = None

    def __post_init__(self):
        check_group_spec('GroupNorm', self.num_groups, self.group_size, self.min_group_size)
        super().__post_init__()

    def num_groups_for(self, channels: int) -> int:
        """The number of groups for `channels`, or a ValueError naming both."""
        return channel_groups(
            'GroupNorm', self.num_groups, self.group_size, channels, self.min_group_size
        )

    @nn.compact
    def __call__(self, x, *, mask=None):
        if self.reduction_axes is None:
            red = tuple(range(1, x.ndim))
        else:
            red = F.canonical_axes(x.ndim, self.reduction_axes, what='GroupNorm(reduction_axes)')
        if not red or red[-1] != x.ndim - 1:
            raise ValueError(
                f'GroupNorm(reduction_axes={self.reduction_axes}) must include the last '
                '(channel) axis'
            )
        channels = x.shape[-1]
        groups = self.num_groups_for(channels)
        scale, bias = affine_params(self, (channels,), (1,) * (x.ndim - 1) + (channels,))
        # Statistics per group, returned per channel: every full-size operation runs on
        # the input's (N, ..., C) layout, never on the grouped (N, ..., G, C / G) view,
        # whose short minor axis XLA:CPU handles 5-20x slower (BENCHMARKS.md).
        m = F.moments(
            x,
            red[:-1],
            dtype=F.stats_dtype(x.dtype, self.dtype, self.force_float32_reductions),
            mask=mask,
            single_pass=self.use_fast_variance,
            axis_name=self.axis_name,
            axis_index_groups=self.axis_index_groups,
            feature_groups=groups,
        )
        return F.normalize(
            x,
            m.mean,
            m.var,
            epsilon=self.epsilon,
            scale=scale,
            bias=bias,
            dtype=output_dtype(x, scale, bias, self.dtype),
            mask=mask,
        )
