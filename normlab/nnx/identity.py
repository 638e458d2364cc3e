"""The `none` norm for NNX: the identity, with every norm's constructor."""

from __future__ import annotations

from normlab import norms
from normlab.nnx.shell import NormShell


class NoNorm(NormShell):
    """Returns its input unchanged (cast to ``dtype`` if set); no variables."""

    linen = norms.NoNorm
    promotes = False

    def __call__(self, x, *, mask=None):
        return self._apply(x, mask=mask)
