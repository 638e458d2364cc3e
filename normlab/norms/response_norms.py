"""Normalization-activation layers: FRN + TLU and EvoNorm-B0 / -S0.

These replace a norm *and* the activation after it. Models keep applying
their own activation afterwards (ReLU after a TLU or EvoNorm output changes
little, and keeps every norm a drop-in); pass ``act=identity`` to a model to
follow the papers exactly.

Each takes a ``mask`` broadcastable to the input, as the other norms: only
True positions reach a statistic, and masked ones may hold anything (NaN,
inf). They have no complex convention and reject complex inputs.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype, Initializer

from normlab.norms import functional as F
from normlab.norms.affine import affine_params, output_dtype
from normlab.norms.batch_norm import BATCH_MOMENTS
from normlab.norms.validation import (
    channel_groups,
    check_epsilon,
    check_group_spec,
    check_momentum,
    check_real,
)

# The initial value of FRN's learned epsilon part eps_l, the one TensorFlow Addons'
# `FilterResponseNormalization(learned_epsilon=True)` uses: small against a
# unit-scale nu^2, so training starts close to plain FRN. It is not a lower bound:
# the learned epsilon is `epsilon + |eps_l|`, bounded below by `epsilon`.
LEARNED_EPSILON_INIT = 1e-4


def _channel_shapes(x):
    c = x.shape[-1]
    return (c,), (1,) * (x.ndim - 1) + (c,)


@jax.custom_jvp
def tlu(z: jax.Array, tau: jax.Array) -> jax.Array:
    """The thresholded linear unit ``max(z, tau)`` (tau broadcasts against z).

    Its tangent is written ``t_tau + where(z > tau, t_z - t_tau, 0)`` so that the
    backward masks ``dy`` once and gets tau's gradient as ``sum(dy) - sum(masked)``;
    `jnp.maximum`'s derivative (which also splits ties) makes XLA:CPU write two
    masked copies of ``dy`` and recompute the mask in each (FRN's backward 2x
    slower, BENCHMARKS.md). At a tie the gradient goes to tau. tau's gradient, a
    difference of two sums, carries float32 rounding of ``sum(dy)`` (~1e-7
    relative to it). The value is `jnp.maximum`'s, so a NaN on either side
    stays NaN and a diverging run still stops.
    """
    return jnp.maximum(z, tau)


@tlu.defjvp
def _tlu_jvp(primals, tangents):
    z, tau = primals
    t_z, t_tau = tangents
    return jnp.maximum(z, tau), t_tau + jnp.where(z > tau, t_z - t_tau, 0.0)


class FilterResponseNorm(nn.Module):
    """Filter Response Normalization with a Thresholded Linear Unit.

    Singh & Krishnan 2019, "Filter Response Normalization Layer" (arXiv:1911.09737):
    ``y = max(scale * x / sqrt(mean_hw(x^2) + eps) + bias, tau)``. No mean
    subtraction and no batch dependence; the learned threshold ``tau`` (the
    TLU) makes up for the missing centering. On inputs without spatial axes
    (``(N, C)``) the statistic is ``x^2`` itself, where the paper recommends a
    learned epsilon (``learnable_epsilon=True``: ``epsilon + |eps_l|``, so
    ``epsilon`` stays its lower bound; ``eps_l`` starts at
    ``LEARNED_EPSILON_INIT``). With a ``mask``, ``nu^2`` averages the real
    positions only.
    """

    epsilon: float = 1e-6
    learnable_epsilon: bool = False
    use_tlu: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = nn.initializers.zeros
    scale_init: Initializer = nn.initializers.ones
    tau_init: Initializer = nn.initializers.zeros
    use_running_average: bool | None = None

    def __post_init__(self):
        check_epsilon('FilterResponseNorm', self.epsilon)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, *, mask=None):
        check_real('FilterResponseNorm', x.dtype, self.dtype)
        feature_shape, bshape = _channel_shapes(x)
        scale, bias = affine_params(self, feature_shape, bshape)
        eps = self.epsilon
        if self.learnable_epsilon:
            init = nn.initializers.constant(LEARNED_EPSILON_INIT)
            eps = eps + jnp.abs(self.param('eps', init, (), jnp.float32))
        xf = F.fill_masked(x.astype(F.stats_dtype(x.dtype)), mask)
        spatial = tuple(range(1, x.ndim - 1))
        nu2 = F.moments(xf, spatial, mask=mask, use_mean=False).var
        y = F.normalize(xf, 0.0, nu2, epsilon=eps, scale=scale, bias=bias)
        if self.use_tlu:
            tau = self.param('tau', self.tau_init, feature_shape, self.param_dtype)
            y = tlu(y, tau.reshape(bshape))
        return y.astype(output_dtype(x, scale, bias, self.dtype))


class EvoNormB0(nn.Module):
    """EvoNorm-B0 (Liu et al. 2020, "Evolving Normalization-Activation Layers", arXiv:2004.02967).

    ``y = x / max(sqrt(var_batch + eps), v * x + sqrt(var_instance + eps)) * scale + bias``:
    a batch-dependent layer whose batch variance (over all non-channel axes,
    pooled over ``axis_name``) is tracked in ``batch_stats/var`` for inference.
    """

    use_running_average: bool | None = None
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = nn.initializers.zeros
    scale_init: Initializer = nn.initializers.ones
    v_init: Initializer = nn.initializers.ones
    axis_name: str | None = None
    axis_index_groups: Any = None

    def __post_init__(self):
        check_epsilon('EvoNormB0', self.epsilon)
        check_momentum('EvoNormB0', self.momentum)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        use_running_average = nn.merge_param(
            'use_running_average', self.use_running_average, use_running_average
        )
        check_real('EvoNormB0', x.dtype, self.dtype)
        feature_shape, bshape = _channel_shapes(x)
        scale, bias = affine_params(self, feature_shape, bshape)
        v = self.param('v', self.v_init, feature_shape, self.param_dtype).reshape(bshape)
        ra_var = self.variable('batch_stats', 'var', jnp.ones, feature_shape, jnp.float32)
        xf = F.fill_masked(x.astype(F.stats_dtype(x.dtype)), mask)
        spatial = tuple(range(1, x.ndim - 1))
        inst = F.moments(xf, spatial, mask=mask)
        if use_running_average:
            batch_var = ra_var.value.reshape(bshape)
        else:
            initializing = self.is_initializing()
            pool = {
                'axis_name': None if initializing else self.axis_name,
                'axis_index_groups': None if initializing else self.axis_index_groups,
            }
            if mask is None:
                # Combined from the per-(example, channel) moments: the same numbers
                # as a reduction over the whole batch, without reading x twice more.
                batch = F.combine_moments(inst, (0,), **pool)
            else:  # examples pool different numbers of real positions
                batch = F.moments(xf, (0,) + spatial, mask=mask, **pool)
            batch_var = batch.var
            if not initializing:
                self.sow(BATCH_MOMENTS, 'var', batch_var.reshape(feature_shape))
                new_var = F.ema(ra_var.value, batch_var.reshape(feature_shape), self.momentum)
                if mask is not None:  # a batch of padding says nothing about the data
                    new_var = jnp.where(batch.count.reshape(-1) > 0, new_var, ra_var.value)
                ra_var.value = new_var
        batch_std = jnp.sqrt(batch_var + self.epsilon)
        inst_term = v * xf + jnp.sqrt(inst.var + self.epsilon)
        # tlu, not jnp.maximum: one comparison in the backward instead of two.
        y = xf / tlu(inst_term, batch_std)
        y = y * scale if scale is not None else y
        y = y + bias if bias is not None else y
        return y.astype(output_dtype(x, scale, bias, self.dtype))


class EvoNormS0(nn.Module):
    """EvoNorm-S0 (Liu et al. 2020, arXiv:2004.02967): batch-independent.

    ``y = x * sigmoid(v * x) / group_std(x) * scale + bias`` with the standard
    deviation of each example over H, W and ``num_groups`` channel groups (as
    in GroupNorm, default 32 groups; give ``group_size`` instead with
    ``num_groups=None``; ``min_group_size`` as in `GroupNorm`).
    """

    num_groups: int | None = 32
    group_size: int | None = None
    min_group_size: int | None = None
    epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = nn.initializers.zeros
    scale_init: Initializer = nn.initializers.ones
    v_init: Initializer = nn.initializers.ones
    use_running_average: bool | None = None

    def __post_init__(self):
        check_epsilon('EvoNormS0', self.epsilon)
        check_group_spec('EvoNormS0', self.num_groups, self.group_size, self.min_group_size)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, *, mask=None):
        check_real('EvoNormS0', x.dtype, self.dtype)
        groups = channel_groups(
            'EvoNormS0', self.num_groups, self.group_size, x.shape[-1], self.min_group_size
        )
        feature_shape, bshape = _channel_shapes(x)
        scale, bias = affine_params(self, feature_shape, bshape)
        v = self.param('v', self.v_init, feature_shape, self.param_dtype).reshape(bshape)
        xf = F.fill_masked(x.astype(F.stats_dtype(x.dtype)), mask)
        # Group statistics returned per channel: everything stays in x's layout.
        spatial = tuple(range(1, x.ndim - 1))
        var = F.moments(xf, spatial, mask=mask, feature_groups=groups).var
        # The swish numerator goes through `normalize` (mean 0), whose closed-form
        # backward reduces dy once per statistic.
        y = F.normalize(
            xf * jax.nn.sigmoid(v * xf), 0.0, var, epsilon=self.epsilon, scale=scale, bias=bias
        )
        return y.astype(output_dtype(x, scale, bias, self.dtype))
