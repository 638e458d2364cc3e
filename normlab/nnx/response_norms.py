"""FRN + TLU and EvoNorm-B0 / -S0 for NNX, over their `normlab.norms` modules.

Each takes ``num_features`` and ``rngs`` and otherwise the Linen module's
options; EvoNorm-B0 keeps its running batch variance as an `nnx.BatchStat`
``var`` and switches modes as `normlab.nnx.BatchNorm` does.
"""

from __future__ import annotations

import jax.numpy as jnp

from normlab import norms
from normlab.nnx.shell import AFFINE, NormShell, ParamSpec, StatefulNorm
from normlab.norms.response_norms import LEARNED_EPSILON_INIT


class FilterResponseNorm(NormShell):
    """Filter Response Normalization with a TLU (``tau``; ``eps`` if ``learnable_epsilon``)."""

    linen = norms.FilterResponseNorm
    param_specs = {
        **AFFINE,
        'tau': ParamSpec('use_tlu', 'tau_init'),
        'eps': ParamSpec('learnable_epsilon', LEARNED_EPSILON_INIT, False, jnp.float32),
    }
    promotes = False

    def __call__(self, x):
        return self._apply(x)


class EvoNormB0(StatefulNorm):
    """EvoNorm-B0: batch-dependent, running batch variance in ``var``."""

    linen = norms.EvoNormB0
    param_specs = {**AFFINE, 'v': ParamSpec(None, 'v_init')}
    state_specs = {'var': ('batch_stats', jnp.ones)}
    promotes = False

    def __call__(self, x, use_running_average: bool | None = None):
        return self._apply(x, use_running_average=self._running_average(use_running_average))


class EvoNormS0(NormShell):
    """EvoNorm-S0: batch-independent, per-group statistics (``num_groups`` or ``group_size``)."""

    linen = norms.EvoNormS0
    param_specs = {**AFFINE, 'v': ParamSpec(None, 'v_init')}
    promotes = False

    def __call__(self, x):
        return self._apply(x)
