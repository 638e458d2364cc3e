"""Layer, Group, Instance and RMS normalization for NNX: drop-ins for their `flax.nnx` namesakes.

Same constructors (``num_features``, ``rngs``, ...), defaults and ``nnx.Param``
``scale`` / ``bias``, computed by the `normlab.norms` modules of the same name
(whose docstring says which axes each reduces). No state, no mode: these
normalize each example on its own.
"""

from __future__ import annotations

from normlab import norms
from normlab.nnx.shell import NormShell
from normlab.norms import functional as F


class LayerNorm(NormShell):
    """Layer normalization over `normlab.norms.LayerNorm` (``reduction_axes=None``
    reduces every non-batch axis)."""

    linen = norms.LayerNorm

    def param_axes(self, ndim):
        return F.canonical_axes(ndim, self.feature_axes, what='LayerNorm(feature_axes)')

    def __call__(self, x, *, mask=None):
        return self._apply(x, mask=mask)


class RMSNorm(NormShell):
    """Root-mean-square normalization over `normlab.norms.RMSNorm` (a scale, no bias)."""

    linen = norms.RMSNorm

    def param_axes(self, ndim):
        return F.canonical_axes(ndim, self.feature_axes, what='RMSNorm(feature_axes)')

    def __call__(self, x, mask=None):
        return self._apply(x, mask=mask)


class InstanceNorm(NormShell):
    """Instance normalization over `normlab.norms.InstanceNorm`."""

    linen = norms.InstanceNorm

    def param_axes(self, ndim):
        return F.canonical_axes(ndim, self.feature_axes, what='InstanceNorm(feature_axes)')

    def __call__(self, x, *, mask=None):
        return self._apply(x, mask=mask)


class GroupNorm(NormShell):
    """Group normalization over `normlab.norms.GroupNorm`.

    As in `flax.nnx.GroupNorm`, give ``num_groups`` (default 32) or
    ``group_size`` (with ``num_groups=None``); afterwards both attributes hold
    the sizes used for ``num_features`` channels.
    """

    linen = norms.GroupNorm

    def __init__(self, num_features: int, *, rngs, **options):
        super().__init__(num_features, rngs=rngs, **options)
        groups = self.linen_module().num_groups_for(num_features)
        self.num_groups, self.group_size = groups, num_features // groups

    def linen_options(self):
        options = super().linen_options()
        if options['num_groups'] is not None:  # resolved: the group count alone says it
            options['group_size'] = None
        return options

    def __call__(self, x, *, mask=None):
        return self._apply(x, mask=mask)
