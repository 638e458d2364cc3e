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
from normlab.norms.validation import channel_groups, check_group_spec


class LayerNorm(NormShell):
    """Layer normalization over `normlab.norms.LayerNorm` (``reduction_axes=None``
    reduces every non-batch axis)."""

    linen = norms.LayerNorm

    def param_axes(self, x):
        return F.canonical_axes(x.ndim, self.feature_axes, what='LayerNorm(feature_axes)')

    def __call__(self, x, *, mask=None):
        return self._apply(x, mask=mask)


class RMSNorm(NormShell):
    """Root-mean-square normalization over `normlab.norms.RMSNorm` (a scale, no bias)."""

    linen = norms.RMSNorm
    param_specs = {'scale': NormShell.param_specs['scale']}

    def param_axes(self, x):
        return F.canonical_axes(x.ndim, self.feature_axes, what='RMSNorm(feature_axes)')

    def __call__(self, x, mask=None):
        return self._apply(x, mask=mask)


class InstanceNorm(NormShell):
    """Instance normalization over `normlab.norms.InstanceNorm`."""

    linen = norms.InstanceNorm

    def param_axes(self, x):
        return F.canonical_axes(x.ndim, self.feature_axes, what='InstanceNorm(feature_axes)')

    def __call__(self, x, *, mask=None):
        return self._apply(x, mask=mask)


class GroupNorm(NormShell):
    """Group normalization over `normlab.norms.GroupNorm`.

    As in `flax.nnx.GroupNorm`, give ``num_groups`` (default 32) or
    ``group_size`` (with ``num_groups=None``); both attributes then hold the
    resolved sizes for ``num_features`` channels.
    """

    linen = norms.GroupNorm

    def __init__(self, num_features: int, *, rngs, **options):
        spec = {k: options.pop(k, getattr(self.linen, k)) for k in ('num_groups', 'group_size')}
        check_group_spec('GroupNorm', *spec.values())
        groups = channel_groups('GroupNorm', *spec.values(), num_features)
        super().__init__(num_features, rngs=rngs, num_groups=groups, **options)
        self.group_size = num_features // groups

    def linen_options(self):
        return {**super().linen_options(), 'group_size': None}

    def __call__(self, x, *, mask=None):
        return self._apply(x, mask=mask)
