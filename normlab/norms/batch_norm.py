"""Batch normalization (Ioffe & Szegedy 2015), a drop-in for `flax.linen.BatchNorm`.

Conventions (where normlab and PyTorch differ):

* ``momentum`` is a *decay*: ``running = momentum * running + (1 - momentum) *
  batch`` (flax, haiku, TF). PyTorch's ``momentum=0.1`` is decay ``0.9``;
  convert with :func:`normlab.norms.momentum_from_pytorch`.
* The running variance is the biased batch variance by default (flax);
  ``unbiased_running_var=True`` stores ``var * n / (n - 1)`` as PyTorch does.
  Normalization always uses the biased batch variance (both libraries).
* ``epsilon`` is added to the variance inside the square root (both).

Which examples share statistics is set by ``virtual_batch_size`` (``k``) and
``axis_name``, for a local (per-device) batch of ``b`` examples:

* ``k < b``: ghost batches, ``b / k`` groups of ``k`` consecutive local
  examples, each normalized with its own statistics (Hoffer et al. 2017);
* ``k == b``: per-device statistics, no collective;
* ``k > b``: statistics pooled over groups of ``k / b`` consecutive devices
  along ``axis_name`` (works on a one-axis `shard_map` mesh);
* ``None``: pooled over every device named by ``axis_name`` (all local
  examples if ``axis_name`` is None).

Cross-device statistics reduce sums and example counts, so a `mask` that
leaves devices with different numbers of real examples still yields the
statistics of the pooled real examples. Masked positions may hold anything
(NaN, inf): they reach no statistic, no output at a real position and no
gradient; their own outputs are finite and meaningless. A batch (or ghost
batch) without one real example leaves the running statistics unchanged.

Complex inputs (``dtype=jnp.complex64``) follow flax: a complex mean, the
real variance ``E|x - E[x]|^2``.

Example::

  >>> import jax, jax.numpy as jnp
  >>> from normlab.norms import BatchNorm
  >>> bn = BatchNorm(momentum=0.9)
  >>> x = jax.random.normal(jax.random.key(0), (8, 4))
  >>> variables = bn.init(jax.random.key(1), x, use_running_average=False)
  >>> y, updates = bn.apply(variables, x, use_running_average=False, mutable=['batch_stats'])
  >>> y_eval = bn.apply({**variables, **updates}, x, use_running_average=True)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax.typing import Dtype, Initializer

from normlab.norms import functional as F
from normlab.norms.affine import affine_params, output_dtype
from normlab.norms.validation import check_epsilon, check_momentum, check_positive_int

# Collection where BatchNorm-like layers `sow` the statistics of the current
# batch (only when the caller makes it mutable): precise BN reads them.
BATCH_MOMENTS = 'batch_moments'


class BatchStatsLayout:
    """How the local batch maps to statistics groups, validated against shapes."""

    def __init__(self, module: str, batch: int, k: int | None, axis_name: str | None):
        self.ghost_groups = 1  # local groups of examples with their own statistics
        self.axis_name = axis_name  # mapped axis to pool over, or None
        self.group_size = None  # devices per pool along axis_name (None: all)
        if k is None:
            return
        if k < batch:
            if batch % k:
                raise ValueError(
                    f'{module}(virtual_batch_size={k}) does not divide the local batch of '
                    f'{batch} examples: use a divisor of {batch}, {batch} itself, or a multiple '
                    'of it that divides the global batch'
                )
            self.ghost_groups = batch // k
            self.axis_name = None
        elif k == batch:
            self.axis_name = None
        else:
            if k % batch:
                raise ValueError(
                    f'{module}(virtual_batch_size={k}) is larger than the local batch of '
                    f'{batch} examples but not a multiple of it'
                )
            if axis_name is None:
                raise ValueError(
                    f'{module}(virtual_batch_size={k}) spans {k // batch} devices (local batch '
                    f'{batch}) but axis_name is None: set axis_name and run under jax.shard_map'
                )
            devices = F.axis_size(axis_name)
            if devices % (k // batch):
                raise ValueError(
                    f'{module}(virtual_batch_size={k}) does not divide the global batch of '
                    f'{batch * devices} examples ({devices} devices x {batch}) on axis '
                    f'{axis_name!r}'
                )
            self.group_size = k // batch


class BatchNorm(nn.Module):
    """Batch normalization, drop-in compatible with `flax.linen.BatchNorm`.

    Same fields, defaults, variables (``params/{scale,bias}``,
    ``batch_stats/{mean,var}``) and results as flax, plus accurate variance
    for large-mean inputs, count-weighted cross-device statistics and:

    Attributes (beyond flax's):
      virtual_batch_size: how many examples share statistics (module docstring).
      update_stats: if False, training-mode calls normalize with the current
        batch's statistics but leave ``batch_stats`` untouched (and need no
        mutable collection): evaluation with batch statistics.
      unbiased_running_var: store PyTorch's unbiased running variance.
    """

    use_running_average: bool | None = None
    axis: int | tuple[int, ...] = -1
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = nn.initializers.zeros
    scale_init: Initializer = nn.initializers.ones
    axis_name: str | None = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    virtual_batch_size: int | None = None
    update_stats: bool = True
    unbiased_running_var: bool = False

    def __post_init__(self):
        name = type(self).__name__
        check_epsilon(name, self.epsilon)
        check_momentum(name, self.momentum)
        check_positive_int(name, 'virtual_batch_size', self.virtual_batch_size)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        """Normalizes `x` with batch or running statistics.

        Args:
          x: the input; features on ``self.axis``, examples on axis 0.
          use_running_average: overrides the field of the same name.
          mask: optional boolean array broadcastable to `x`: which positions
            count towards the statistics (e.g. padded eval examples); the
            others may hold anything (module docstring).
        """
        use_running_average = nn.merge_param(
            'use_running_average', self.use_running_average, use_running_average
        )
        feature_axes = F.canonical_axes(x.ndim, self.axis, what=f'{type(self).__name__}(axis)')
        reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
        feature_shape = tuple(x.shape[a] for a in feature_axes)
        bshape = tuple(x.shape[i] if i in feature_axes else 1 for i in range(x.ndim))
        stat_dtype = jnp.float32 if self.force_float32_reductions else self.param_dtype
        ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, feature_shape, stat_dtype)
        ra_var = self.variable('batch_stats', 'var', jnp.ones, feature_shape, stat_dtype)
        scale, bias = affine_params(self, feature_shape, bshape)
        out_dtype = output_dtype(x, scale, bias, self.dtype)
        self._declare_state()

        if use_running_average:
            mean = ra_mean.value.reshape(bshape)
            var = ra_var.value.reshape(bshape)
            return F.normalize(
                x,
                mean,
                var,
                epsilon=self.epsilon,
                scale=scale,
                bias=bias,
                dtype=out_dtype,
                mask=mask,
            )

        running = (ra_mean.value.reshape(bshape), ra_var.value.reshape(bshape))
        y, mean, var, count = self._normalize_with_batch_stats(
            x, mask, reduction_axes, feature_shape, scale, bias, out_dtype, running
        )
        if not self.is_initializing():
            if self.unbiased_running_var:
                var = F.unbiased(var, count)
            self.sow(BATCH_MOMENTS, 'mean', mean)
            self.sow(BATCH_MOMENTS, 'var', var)
            if self.update_stats:
                new_mean = F.ema(ra_mean.value, mean, self.momentum)
                new_var = F.ema(ra_var.value, var, self.momentum)
                if mask is not None:  # a batch of padding says nothing about the data
                    new_mean = jnp.where(count > 0, new_mean, ra_mean.value)
                    new_var = jnp.where(count > 0, new_var, ra_var.value)
                ra_mean.value, ra_var.value = new_mean, new_var
        return y

    def _batch_moments(self, x, mask, reduction_axes):
        """Statistics of the current batch as (x_grouped, mask_grouped, Moments, ghost_groups)."""
        name = type(self).__name__
        if reduction_axes and reduction_axes[0] != 0 and self.virtual_batch_size is not None:
            raise ValueError(f'{name}(virtual_batch_size=...) needs examples on axis 0')
        if self.is_initializing():
            # Nothing is updated at init, and the init batch need not fit the layout.
            layout = BatchStatsLayout(name, x.shape[0], None, None)
        else:
            layout = BatchStatsLayout(name, x.shape[0], self.virtual_batch_size, self.axis_name)
        g = layout.ghost_groups
        axes = reduction_axes
        if g > 1:
            grouped = (g, x.shape[0] // g) + x.shape[1:]
            if mask is not None:
                mask = jnp.broadcast_to(mask, x.shape).reshape(grouped)
            x = x.reshape(grouped)
            axes = tuple(a + 1 for a in reduction_axes)
        m = F.moments(
            x,
            axes,
            dtype=F.stats_dtype(x.dtype, self.dtype, self.force_float32_reductions),
            mask=mask,
            single_pass=self.use_fast_variance,
            axis_name=layout.axis_name,
            group_size=layout.group_size,
            axis_index_groups=self.axis_index_groups if layout.axis_name else None,
        )
        return x, mask, m, g

    def _declare_state(self) -> None:
        """Subclasses declare further state here, in every mode (init included)."""

    def _batch_affine(self, m: F.Moments, running, scale, bias):
        """The scale and bias applied after normalizing with batch statistics."""
        del m, running
        return scale, bias

    def _normalize_with_batch_stats(
        self, x, mask, reduction_axes, feature_shape, scale, bias, out_dtype, running
    ):
        xg, mask, m, g = self._batch_moments(x, mask, reduction_axes)
        if g > 1:  # per-feature arrays gain the ghost-group axis
            scale, bias, *running = (
                None if a is None else a[None] for a in (scale, bias, *running)
            )
        scale, bias = self._batch_affine(m, running, scale, bias)
        y = F.normalize(xg, m.mean, m.var, epsilon=self.epsilon, scale=scale, bias=bias, mask=mask)
        y = y.reshape(x.shape).astype(out_dtype)
        mean, var, count = m.mean, m.var, jnp.broadcast_to(m.count, m.mean.shape)
        if g > 1:
            # Running statistics average the ghost groups' statistics, weighted by
            # their real examples (equal weights without a mask).
            total = jnp.sum(count, axis=0, keepdims=True)
            w = count / jnp.maximum(total, 1.0)
            mean, var = (jnp.sum(a * w, axis=0) for a in (mean, var))
            count = total[0] / g
        return (
            y,
            mean.reshape(feature_shape),
            var.reshape(feature_shape),
            count.reshape(feature_shape),
        )
