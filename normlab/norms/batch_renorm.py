"""Batch Renormalization (Ioffe 2017, arXiv:1702.03275).

Training normalizes with the batch statistics, then corrects towards the
running ones: ``y = ((x - mu_B) / sigma_B * r + d) * scale + bias`` with
``r = clip(sigma_B / sigma, 1/r_max, r_max)`` and
``d = clip((mu_B - mu) / sigma, -d_max, d_max)`` treated as constants
(`stop_gradient`), where ``mu, sigma`` are the running statistics. With
``r = 1, d = 0`` it is BatchNorm; unclipped it reproduces inference-mode
outputs during training, which is what keeps small or non-i.i.d. batches
from hurting. The paper starts with plain BN and relaxes the clipping
(``r_max`` 1 -> 3, ``d_max`` 0 -> 5); ``ramp_steps`` does this linearly over
that many training steps.

State: the running ``batch_stats/{mean,var}`` of BatchNorm, so a flax loop
that applies with ``mutable=['batch_stats']`` trains it unchanged. With
``ramp_steps > 0`` the ramp's step counter is ``batch_stats/steps`` (float32,
counted up to ``ramp_steps`` and then held, so it is exact). It is not a batch
statistic, but it lives with them on purpose: it advances with them (only
when ``batch_stats`` is mutable and ``update_stats`` is on), every device
advances it identically, so a `pmean` of ``batch_stats`` or an average of
checkpoints leaves it unchanged, and a separate collection would make the
flax convention fail (``ModifyScopeVariableError``) or, if skipped when
immutable, freeze the ramp silently. ``ramp_steps=0`` keeps no counter.

The paper suggests a larger running-average update rate than BN's, since the
running statistics are used during training: default ``momentum=0.99``
matches flax BatchNorm; consider 0.9 for short runs.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from normlab.norms.batch_norm import BatchNorm
from normlab.norms.functional import Moments
from normlab.norms.validation import check_real


class BatchRenorm(BatchNorm):
    """BatchNorm with Batch Renormalization's r/d correction (all BatchNorm fields).

    Attributes (beyond BatchNorm's):
      r_max: the final clip of the std ratio ``r`` (>= 1).
      d_max: the final clip of the mean shift ``d`` (>= 0).
      ramp_steps: training steps over which the clips grow linearly from
        ``r_max=1, d_max=0`` (plain BN) to their final values; 0 = no ramp.
    """

    r_max: float = 3.0
    d_max: float = 5.0
    ramp_steps: int = 0

    def __post_init__(self):
        if not self.r_max >= 1.0 or not self.d_max >= 0.0 or self.ramp_steps < 0:
            raise ValueError(
                f'BatchRenorm(r_max={self.r_max}, d_max={self.d_max}, '
                f'ramp_steps={self.ramp_steps}): need r_max >= 1, d_max >= 0, ramp_steps >= 0'
            )
        super().__post_init__()

    def clip_limits(self, step):
        """(r_max, d_max) in force at training step `step`."""
        if self.ramp_steps == 0:
            return jnp.float32(self.r_max), jnp.float32(self.d_max)
        frac = jnp.minimum(jnp.asarray(step, jnp.float32) / self.ramp_steps, 1.0)
        return 1.0 + (self.r_max - 1.0) * frac, self.d_max * frac

    def _declare_state(self) -> None:
        if self.ramp_steps:
            self.variable('batch_stats', 'steps', lambda: jnp.zeros((), jnp.float32))

    def _batch_affine(self, m: Moments, running, scale, bias):
        check_real('BatchRenorm', m.mean.dtype)
        if self.is_initializing():
            return scale, bias
        steps = self.get_variable('batch_stats', 'steps') if self.ramp_steps else 0
        r_max, d_max = self.clip_limits(steps)
        ra_mean, ra_var = running
        sigma = jnp.sqrt(ra_var + self.epsilon)
        r = lax.stop_gradient(jnp.clip(jnp.sqrt(m.var + self.epsilon) / sigma, 1 / r_max, r_max))
        d = lax.stop_gradient(jnp.clip((m.mean - ra_mean) / sigma, -d_max, d_max))
        if self.update_stats and self.ramp_steps:
            self.put_variable('batch_stats', 'steps', jnp.minimum(steps + 1, self.ramp_steps))
        # Fold r and d into the affine: (xhat * r + d) * scale + bias.
        new_scale = r if scale is None else r * scale
        shift = d if scale is None else d * scale
        new_bias = shift if bias is None else shift + bias
        return new_scale, new_bias
