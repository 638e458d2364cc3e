"""The pure functional core every normalization layer is built from.

Plain `jnp`/`lax` functions, no module calls: the layers in this package only
choose axes and own variables, then call these. Five ideas set them apart from
`flax.linen.normalization`:

* **Accurate single-pass variance.** ``E[x^2] - E[x]^2`` collapses in float32
  when the mean is large against the spread (``1e4 + N(0, 1)`` loses every
  digit). :func:`moments` subtracts a shift ``K`` (the value of the first
  element of each statistic, a constant under `stop_gradient`) before the one
  fused reduction, so it computes ``Var[x - K]`` with ``E[x - K]`` near zero.
  The result is exact algebra for any ``K``; only rounding depends on it. On
  CPU, where XLA never fuses the two sums anyway, it subtracts the exact mean
  instead (two passes: more accurate still, and faster there).
* **Hand-written derivatives.** :func:`normalize` has a closed-form JVP whose
  transpose is the classic BatchNorm backward (two reductions of ``dy`` and
  ``dy * (x - mean)`` per statistic), faster than autodiff of the forward;
  derivatives of every order, forward mode and collectives work as before.
* **Pooled statistics, not averaged ones.** Across devices it reduces sums and
  example counts (one stacked `psum`), so masked or uneven shards give the
  statistics of the pooled examples instead of a mean of per-device means.
* **Device groups inside `shard_map`.** `shard_map` has no
  ``axis_index_groups``; a group-wise sum is one `psum` of a
  ``(num_groups, ...)`` buffer where each device writes only its group's slot.
* **Masked positions may hold anything.** Padding is often garbage (NaN, inf);
  :func:`fill_masked` replaces it with zeros (`jnp.where`: multiplying by a 0
  mask keeps NaN) before any sum, so it reaches no statistic, no output at a
  real position and no gradient. Without a mask no `where` is emitted.

Complex inputs follow flax: the mean is complex and the variance is the real
``E|x - E[x]|^2``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class Moments(NamedTuple):
    """Statistics of a normalization, each broadcastable to the input.

    Attributes:
      mean: the mean over the reduced axes (zeros when the mean is not used).
      var: the biased (population) variance over the reduced axes, or the mean
        square when the mean is not used (RMSNorm).
      count: how many (unmasked) elements each statistic pooled, summed over
        devices (0 for a statistic that saw none: its mean and variance are 0);
        used for the unbiased variance correction and to skip empty batches.
    """

    mean: jax.Array
    var: jax.Array
    count: jax.Array


def canonical_axes(ndim: int, axes: int | Iterable[int], *, what: str = 'axes') -> tuple[int, ...]:
    """Returns sorted non-negative axes; raises ValueError on out-of-range ones."""
    if isinstance(axes, int):
        axes = (axes,)
    axes = tuple(axes)
    out = []
    for axis in axes:
        if not isinstance(axis, int) or not -ndim <= axis < ndim:
            raise ValueError(
                f'{what}={axes} is out of range for an input of rank {ndim}: '
                f'valid axes are {-ndim}..{ndim - 1}'
            )
        out.append(axis % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f'{what}={axes} names the same axis twice for an input of rank {ndim}')
    return tuple(sorted(out))


def stats_dtype(x_dtype, dtype=None, force_float32: bool = True):
    """The dtype statistics are computed in: at least float32 unless told otherwise."""
    dtype = x_dtype if dtype is None else dtype
    return jnp.promote_types(dtype, jnp.float32) if force_float32 else jnp.dtype(dtype)


def fill_masked(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """`x` with zeros where `mask` (broadcastable to `x`) is False; `x` itself without a mask.

    A `jnp.where`, not a product with the mask: ``nan * 0`` is NaN. Its derivative
    is zero at masked positions, so they get no gradient either.
    """
    if mask is None:
        return x
    return jnp.where(jnp.broadcast_to(mask, x.shape), x, jnp.zeros((), x.dtype))


def abs_square(v: jax.Array) -> jax.Array:
    """``|v|^2``, real for complex `v` (flax's convention for the variance)."""
    if jnp.iscomplexobj(v):
        return lax.square(lax.real(v)) + lax.square(lax.imag(v))
    return lax.square(v)


def _real_dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """``Re(conj(a) * b)``: the derivative of ``|a|^2 / 2`` along `b` (``a * b`` if real)."""
    if jnp.iscomplexobj(a) or jnp.iscomplexobj(b):
        return lax.real(a) * lax.real(b) + lax.imag(a) * lax.imag(b)
    return a * b


def axis_size(axis_name: str) -> int:
    """The size of a named mapped axis, with a clear error outside a mapped context."""
    try:
        return lax.axis_size(axis_name)
    except NameError as e:
        raise ValueError(
            f'axis_name={axis_name!r} is not bound: cross-device statistics must run inside '
            f'jax.shard_map (or jax.pmap) over a mesh axis named {axis_name!r}; outside one, '
            'pass axis_name=None'
        ) from e


def grouped_psum(
    value: jax.Array,
    axis_name: str,
    *,
    group_size: int | None = None,
    axis_index_groups: Sequence[Sequence[int]] | None = None,
) -> jax.Array:
    """`psum` over `axis_name`, optionally within groups of consecutive devices.

    Args:
      value: the per-device value to sum.
      axis_name: the mapped axis.
      group_size: if set, sum only over the `group_size` consecutive devices
        that share ``axis_index // group_size`` (works under `shard_map`).
      axis_index_groups: explicit groups, passed to `lax.psum` (pmap only).
    """
    size = axis_size(axis_name)
    if axis_index_groups is not None:
        return lax.psum(value, axis_name, axis_index_groups=axis_index_groups)
    if group_size is None or group_size == size:
        return lax.psum(value, axis_name)
    num_groups = size // group_size
    group = lax.axis_index(axis_name) // group_size
    onehot = jax.nn.one_hot(group, num_groups, dtype=value.dtype)
    slots = onehot.reshape((num_groups,) + (1,) * value.ndim) * value[None]
    return lax.dynamic_index_in_dim(lax.psum(slots, axis_name), group, keepdims=False)


def moments(
    x: jax.Array,
    axes: Sequence[int],
    *,
    dtype=jnp.float32,
    mask: jax.Array | None = None,
    use_mean: bool = True,
    single_pass: bool | str = True,
    axis_name: str | None = None,
    group_size: int | None = None,
    axis_index_groups: Sequence[Sequence[int]] | None = None,
    feature_groups: int | None = None,
) -> Moments:
    """Mean and biased variance of `x` over `axes`, kept as broadcastable dims.

    Args:
      x: the input.
      axes: non-negative axes to reduce.
      dtype: the dtype of the reduction (float32 for half-precision inputs).
      mask: optional boolean array broadcastable to `x`; only True elements
        count towards the statistics. Masked elements may hold anything (NaN,
        inf): they are replaced by zeros before any sum (`fill_masked`).
      use_mean: False gives the mean square instead of the variance (RMSNorm).
      single_pass: True reduces shifted sums and squares in one fused pass and
        one collective; False subtracts the exact mean first (two passes, two
        collectives). Both are accurate; the second is the textbook reference.
        On CPU, True also uses the two passes, which XLA:CPU runs faster
        than its unfused "single" pass; ``'always'`` takes the single pass
        on every backend (an accelerator's numerics, reproduced on CPU).
      axis_name: a mapped axis to pool the statistics over.
      group_size: pool only within groups of this many consecutive devices.
      axis_index_groups: explicit device groups (pmap only).
      feature_groups: if set, the last axis (not in `axes`) is split into this
        many blocks of consecutive features and each statistic also pools its
        block (GroupNorm); the statistics are returned per feature, equal within
        a block, so every full-size operation stays in `x`'s layout.

    Returns:
      `Moments` whose arrays have `x`'s rank with size-1 reduced axes.
    """
    x = fill_masked(x.astype(dtype), mask)
    if feature_groups is not None and (
        not isinstance(feature_groups, int)
        or feature_groups <= 0
        or x.ndim - 1 in axes
        or x.shape[-1] % feature_groups
    ):
        raise ValueError(
            f'feature_groups={feature_groups} needs a last axis outside axes={tuple(axes)} '
            f'whose size ({x.shape[-1]}) it divides'
        )

    # Counts and variances are real for complex inputs too.
    real_dtype = jnp.finfo(dtype).dtype
    if mask is not None:
        weights = jnp.broadcast_to(mask, x.shape).astype(real_dtype)
        count = _reduce(weights, axes, feature_groups)
    else:
        weights = None
        per_feature = x.shape[-1] // feature_groups if feature_groups else 1
        count = jnp.asarray(_static_count(x.shape, axes) * per_feature, real_dtype)

    def pooled(*sums):
        """Sums (count first) pooled over devices in one collective."""
        if axis_name is None:
            return sums
        shape = jnp.broadcast_shapes(*(s.shape for s in sums))
        stacked = jnp.stack([jnp.broadcast_to(s, shape) for s in sums])
        total = grouped_psum(
            stacked, axis_name, group_size=group_size, axis_index_groups=axis_index_groups
        )
        # A complex sum made the stack complex: the real sums keep their dtype.
        return tuple(
            total[i] if jnp.iscomplexobj(s) else jnp.real(total[i]) for i, s in enumerate(sums)
        )

    def wsum(v):
        return _reduce(v if weights is None else v * weights, axes, feature_groups)

    if not use_mean:
        count, sq = pooled(count, wsum(abs_square(x)))
        return Moments(jnp.zeros_like(sq), sq / jnp.maximum(count, 1.0), count)

    def shifted(x, count, weights):
        shift = lax.stop_gradient(_first_element(x, axes, feature_groups))
        if axis_name is not None:
            # Every device in a pool must subtract the same shift.
            shift = grouped_psum(
                shift, axis_name, group_size=group_size, axis_index_groups=axis_index_groups
            ) / (group_size or _group_len(axis_name, axis_index_groups))
        d = x - shift
        count, s1, s2 = pooled(count, wsum(d), wsum(abs_square(d)))
        n = jnp.maximum(count, 1.0)
        mean_d = s1 / n
        var = jnp.maximum(s2 / n - abs_square(mean_d), 0.0)
        # A statistic without one unmasked element has mean 0, as in the two passes.
        return Moments(jnp.where(count > 0, shift + mean_d, 0.0), var, count)

    def two_pass(x, count, weights):
        count, s1 = pooled(count, wsum(x))
        n = jnp.maximum(count, 1.0)
        mean = s1 / n
        (s2,) = pooled(_centered_sum_of_squares(x, mean, weights, tuple(axes), feature_groups))
        return Moments(mean, s2 / n, count)

    if single_pass not in (True, False, 'always'):
        raise ValueError(f"single_pass={single_pass!r}: valid values are True, False, 'always'")
    if not single_pass:
        return two_pass(x, count, weights)
    if single_pass == 'always':
        return shifted(x, count, weights)
    # XLA:CPU never fuses the two sums of the single pass: it materializes the
    # shifted copy and reads it twice, so there the exact two-pass formula is
    # both more accurate and faster (BENCHMARKS.md), and across devices it needs
    # as many collectives (the shift is pooled too). Decided when lowering.
    return lax.platform_dependent(x, count, weights, cpu=two_pass, default=shifted)


def combine_moments(
    m: Moments,
    axes: Sequence[int],
    *,
    axis_name: str | None = None,
    group_size: int | None = None,
    axis_index_groups: Sequence[Sequence[int]] | None = None,
) -> Moments:
    """The moments over `axes` too (and devices), from equal-count moments `m`.

    Exact (Chan et al.): the mean of the means, and the mean of the variances plus
    the variance of the means, so nothing full-size is read again. Every slice of
    `m` must pool the same number of elements (no masks).
    """
    groups = (group_size or _group_len(axis_name, axis_index_groups)) if axis_name else 1

    def mean(v):
        v = jnp.mean(v, tuple(axes), keepdims=True)
        if axis_name is not None:
            psum = grouped_psum(
                v, axis_name, group_size=group_size, axis_index_groups=axis_index_groups
            )
            v = psum / groups
        return v

    pooled_mean = mean(m.mean)
    var = mean(m.var + abs_square(m.mean - pooled_mean))
    return Moments(pooled_mean, var, m.count * _static_count(m.mean.shape, axes) * groups)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _centered_sum_of_squares(x, mean, weights, axes, feature_groups=None):
    """``sum(w * |x - mean|**2)`` over `axes` (and feature blocks, as in `moments`),
    where `mean` is the weighted mean of `x` over the same elements.

    Its derivative with respect to the mean, ``-2 * sum(w * (x - mean))``, vanishes
    identically (summed over every device that pooled the mean), so the JVP leaves
    it out and the backward pass skips a full-size reduction of zeros. The
    function of `x` it differentiates is unchanged, so derivatives of every order
    stay exact.
    """
    d = x - mean
    return _reduce(
        abs_square(d) if weights is None else weights * abs_square(d), axes, feature_groups
    )


@_centered_sum_of_squares.defjvp
def _centered_sum_of_squares_jvp(axes, feature_groups, primals, tangents):
    x, mean, weights = primals
    tx = tangents[0]
    d = x - mean
    wd = d if weights is None else weights * d
    return (
        _reduce(_real_dot(wd, d), axes, feature_groups),
        _reduce(2.0 * _real_dot(wd, tx), axes, feature_groups),
    )


def _reduce(v: jax.Array, axes: Sequence[int], feature_groups: int | None) -> jax.Array:
    """The sums every statistic of `moments` is made of: over `axes`, then feature blocks."""
    return _feature_group_sum(_staged_sum(v, axes), feature_groups)


def _feature_group_sum(v: jax.Array, groups: int | None) -> jax.Array:
    """Sums of the last axis over blocks of `groups`, broadcast back to every feature."""
    if groups is None:
        return v
    split = v.shape[:-1] + (groups, v.shape[-1] // groups)
    block = jnp.sum(v.reshape(split), -1, keepdims=True)
    return jnp.broadcast_to(block, split).reshape(v.shape)


def _staged_sum(v: jax.Array, axes: Sequence[int]) -> jax.Array:
    """``jnp.sum(v, axes, keepdims=True)``, one contiguous block of axes at a time.

    XLA:CPU sums a contiguous block of axes at memory speed but is ~20x slower
    when the summed axes straddle a kept one (a norm over (H, W, channel in group)
    of a grouped view, around the group axis). Summing the outer block first (the barrier
    keeps XLA from merging the two sums back) leaves a small second sum.
    """
    runs: list[list[int]] = []
    for a in sorted(axes):
        if runs and runs[-1][-1] == a - 1:
            runs[-1].append(a)
        else:
            runs.append([a])
    if len(runs) <= 1:
        return jnp.sum(v, tuple(axes), keepdims=True)
    outer = tuple(a for run in runs[:-1] for a in run)
    partial = lax.optimization_barrier(jnp.sum(v, outer, keepdims=True))
    return jnp.sum(partial, tuple(runs[-1]), keepdims=True)


def _static_count(shape: Sequence[int], axes: Sequence[int]) -> int:
    return math.prod(shape[a] for a in axes)


def _first_element(x: jax.Array, axes: Sequence[int], groups: int | None = None) -> jax.Array:
    """`x` at index 0 of every reduced axis (and feature block): a per-statistic shift."""
    index = tuple(slice(0, 1) if i in axes else slice(None) for i in range(x.ndim))
    first = x[index]
    if groups is None:
        return first
    split = first.shape[:-1] + (groups, first.shape[-1] // groups)
    return jnp.broadcast_to(first.reshape(split)[..., :1], split).reshape(first.shape)


def _group_len(axis_name: str, axis_index_groups) -> int:
    if axis_index_groups is not None:
        return len(axis_index_groups[0])
    return axis_size(axis_name)


def normalize(
    x: jax.Array,
    mean: jax.Array | float,
    var: jax.Array,
    *,
    epsilon: float,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    dtype=None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """``(x - mean) * rsqrt(var + epsilon) * scale + bias`` in `dtype`.

    With a `mask` (broadcastable to `x`), masked positions are read as zeros
    (`fill_masked`): their outputs are finite and meaningless, and whatever they
    held reaches no gradient (the backward's sums of ``dy * (x - mean)`` would
    otherwise turn ``0 * nan`` into NaN parameter gradients).

    All statistics and parameters must already broadcast against `x`. The
    per-feature factor ``rsqrt(var + eps) * scale`` is folded first so the
    full-size tensor sees one subtract, one multiply and one add (writing it
    left to right is ~2.5x slower on CPU). The mean is subtracted before the
    multiply, not folded into the bias, so large offsets cancel exactly.

    Differentiated through a hand-written JVP (`_normalize_jvp`) whose
    transpose, the backward pass, sums ``dy`` and ``dy * (x - mean)`` once
    per statistic and folds the per-feature factors in afterwards, where
    autodiff of the expression above would also sum ``dy * mul`` and write it
    out full-size (the norm layers' training rows in BENCHMARKS.md, section 1).
    Forward- and reverse-mode autodiff both work.
    """
    operands = {'x': fill_masked(x, mask), 'var': var}
    if not isinstance(mean, int | float):
        operands['mean'] = mean
    elif mean != 0:
        operands['mean'] = jnp.asarray(mean, x.dtype)
    if scale is not None:
        operands['scale'] = scale
    if bias is not None:
        operands['bias'] = bias
    y = _normalize(operands, epsilon)
    return y.astype(dtype) if dtype is not None else y


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _normalize(operands: dict, epsilon: float) -> jax.Array:
    return _normalize_jvp(epsilon, (operands,), None)[0]


@_normalize.defjvp
def _normalize_jvp(epsilon: float, primals, tangents):
    """`normalize` and, if `tangents` is given, its directional derivative.

    The tangent is written so that its transpose reduces full-size arrays as
    little as possible: a per-statistic tangent (of the mean, the variance, the
    scale) is combined with the other per-statistic factors *before* it is
    broadcast against the full-size ``x - mean``, so the transpose sums ``dy``
    and ``dy * (x - mean)`` over the broadcast axes and multiplies by those
    factors after the sum.
    """
    (p,) = primals
    rstd = lax.rsqrt(p['var'] + epsilon)
    scale = p.get('scale')
    mul = rstd if scale is None else rstd * scale
    xc = p['x'] - p['mean'] if 'mean' in p else p['x']
    y = xc * mul
    if 'bias' in p:
        y = y + p['bias']
    if tangents is None:
        return y, None
    (t,) = tangents
    d_rstd = -0.5 * rstd * rstd * rstd * t['var']
    if scale is not None and math.prod(mul.shape) >= math.prod(xc.shape):
        # Per-token LayerNorm / RMSNorm: statistics and scale together span x.
        t_xhat = t['x'] * rstd + xc * d_rstd
        if 'mean' in p:
            t_xhat = t_xhat - t['mean'] * rstd
        ty = t_xhat * scale + (xc * rstd) * t['scale']
        return y, ty + t['bias'] if 'bias' in p else ty
    # A distinct copy of a per-statistic factor: if the backward's dy * mul shares
    # the forward's broadcast of it, XLA:CPU writes that broadcast out full-size.
    mul_t = lax.optimization_barrier(mul) if math.prod(mul.shape) < math.prod(xc.shape) else mul
    ty = t['x'] * mul_t
    if scale is None:
        ty = ty + xc * d_rstd
    else:
        # Statistics times per-feature factors is smaller than x (BatchNorm, Instance-,
        # Group- and LayerNorm of feature maps): one sum of dy * (x - mean) over the
        # axes neither varies along, then per-(statistic, feature) arithmetic.
        ty = ty + xc * (d_rstd * scale + rstd * t['scale'])
    # The mean's and the bias's tangents, added as one term while that is smaller
    # than x: the transpose then reduces dy once for both.
    terms = [-t['mean'] * mul_t] if 'mean' in p else []
    if 'bias' in p:
        terms.append(t['bias'])
    if len(terms) == 2 and math.prod(jnp.broadcast_shapes(*(a.shape for a in terms))) < math.prod(
        xc.shape
    ):
        terms = [terms[0] + terms[1]]
    for term in terms:
        ty = ty + term
    return y, ty


def ema(running: jax.Array, batch: jax.Array, momentum: float) -> jax.Array:
    """Exponential moving average with `momentum` as a decay (flax/haiku/TF).

    ``running <- momentum * running + (1 - momentum) * batch``. PyTorch's
    ``momentum=0.1`` is the weight of the *new* value: use
    `momentum_from_pytorch` to convert.
    """
    return momentum * running + (1.0 - momentum) * batch


def momentum_from_pytorch(torch_momentum: float) -> float:
    """Converts PyTorch's BatchNorm momentum (new-value weight) to a decay."""
    if not 0.0 < torch_momentum <= 1.0:
        raise ValueError(f'PyTorch momentum must be in (0, 1], got {torch_momentum}')
    return 1.0 - torch_momentum


def unbiased(var: jax.Array, count: jax.Array) -> jax.Array:
    """Bessel's correction ``var * n / (n - 1)`` (PyTorch's running variance)."""
    return var * count / jnp.maximum(count - 1.0, 1.0)
