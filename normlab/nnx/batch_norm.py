"""Batch normalization for NNX: a drop-in for `flax.nnx.BatchNorm`.

Same constructor (``num_features``, ``rngs``, ``use_running_average=False``,
``axis``, ``momentum=0.99``, ``epsilon=1e-5``, ``promote_dtype``, ...),
variables (``scale``, ``bias`` as `nnx.Param`; ``mean``, ``var`` as float32
`nnx.BatchStat`), output dtype (the promotion of the input, the parameters and
the float32 statistics, unless ``dtype`` is set) and modes (the constructor or
call argument, ``model.train()`` / ``model.eval()``, `nnx.view`), computed by
`normlab.norms.BatchNorm`: accurate variance at large offsets, count-weighted
cross-device statistics (``axis_name`` under `jax.shard_map`),
``virtual_batch_size`` (ghost batches, per-device statistics, device groups
or every device), ``update_stats=False`` (evaluation with batch statistics)
and ``unbiased_running_var`` (PyTorch's running variance; convert PyTorch's
momentum with `normlab.norms.momentum_from_pytorch`). The conventions are
those of the Linen module's docstring.

Example::

  >>> from flax import nnx
  >>> import jax.numpy as jnp
  >>> from normlab import nnx as nlnnx
  >>> bn = nlnnx.BatchNorm(4, momentum=0.9, rngs=nnx.Rngs(0))
  >>> y = bn(jnp.ones((8, 4)))                    # training: updates bn.mean, bn.var
  >>> y = bn(jnp.ones((8, 4)), use_running_average=True)  # or bn.eval(); bn(x)
"""

from __future__ import annotations

from normlab import norms
from normlab.nnx.shell import StatefulNorm
from normlab.norms import functional as F


class BatchNorm(StatefulNorm):
    """Batch normalization (Ioffe & Szegedy 2015) over `normlab.norms.BatchNorm`.

    Options: every field of `normlab.norms.BatchNorm` (flax's plus
    ``virtual_batch_size``, ``update_stats``, ``unbiased_running_var``,
    ``force_float32_reductions``), and flax.nnx's ``promote_dtype``,
    ``scale_metadata``, ``bias_metadata``.
    """

    linen = norms.BatchNorm

    def param_axes(self, ndim):
        return F.canonical_axes(ndim, self.axis, what=f'{type(self).__name__}(axis)')

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        """Normalizes `x` (examples on axis 0, features on ``self.axis``).

        Args:
          x: the input.
          use_running_average: overrides the attribute of the same name.
          mask: optional boolean array broadcastable to `x`: the positions that
            count towards the statistics.
        """
        ura = self._running_average(use_running_average)
        return self._apply(x, use_running_average=ura, mask=mask)
