"""FRN + TLU and EvoNorm-B0 / -S0 for NNX, over their `normlab.norms` modules.

Each takes ``num_features`` and ``rngs`` and otherwise the Linen module's
options and variables (``tau``, ``v``, FRN's learned ``eps``); EvoNorm-B0 keeps
its running batch variance as an `nnx.BatchStat` ``var`` and switches modes as
`normlab.nnx.BatchNorm` does. A ``mask`` is passed on to Linen modules that
take one.
"""

from __future__ import annotations

from normlab import norms
from normlab.nnx.shell import NormShell, StatefulNorm


class FilterResponseNorm(NormShell):
    """Filter Response Normalization with a TLU, over `normlab.norms.FilterResponseNorm`."""

    linen = norms.FilterResponseNorm
    promotes = False

    def __call__(self, x, *, mask=None):
        return self._apply(x, mask=mask)


class EvoNormB0(StatefulNorm):
    """EvoNorm-B0 over `normlab.norms.EvoNormB0`: batch-dependent, running variance ``var``."""

    linen = norms.EvoNormB0
    promotes = False

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        ura = self._running_average(use_running_average)
        return self._apply(x, use_running_average=ura, mask=mask)


class EvoNormS0(NormShell):
    """EvoNorm-S0 over `normlab.norms.EvoNormS0`: batch-independent group statistics."""

    linen = norms.EvoNormS0
    promotes = False

    def __call__(self, x, *, mask=None):
        return self._apply(x, mask=mask)
