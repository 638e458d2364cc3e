"""normlab.nnx: normlab's norms as `flax.nnx` modules, computed by the same core.

`BatchNorm`, `LayerNorm`, `GroupNorm`, `InstanceNorm` and `RMSNorm` are
drop-ins for their `flax.nnx` namesakes (``num_features``, ``rngs``, the same
options and defaults, `nnx.Param` ``scale`` / ``bias``, float32 `nnx.BatchStat`
``mean`` / ``var``, ``use_running_average`` / ``model.train()`` /
``model.eval()`` / `nnx.view`), with every extra option of their
`normlab.norms` (Linen) versions; `BatchRenorm`, `FilterResponseNorm`,
`EvoNormB0`, `EvoNormS0` and `NoNorm` complete the registry (`make_norm`).
Each is a shell (`normlab.nnx.shell`) that applies the Linen module of the same
name to its variables, so both APIs compute every statistic in
`normlab.norms.functional`. `recompute_batch_stats` is precise BN.

    from flax import nnx
    from normlab import nnx as nlnnx

    bn = nlnnx.BatchNorm(64, momentum=0.9, virtual_batch_size=16, rngs=nnx.Rngs(0))
    gn = nlnnx.make_norm('group_norm', 64, num_groups=8, rngs=nnx.Rngs(0))
"""

from normlab.nnx.batch_norm import BatchNorm
from normlab.nnx.batch_renorm import BatchRenorm
from normlab.nnx.identity import NoNorm
from normlab.nnx.per_example import GroupNorm, InstanceNorm, LayerNorm, RMSNorm
from normlab.nnx.precise_bn import batch_moments_fn, recompute_batch_stats
from normlab.nnx.registry import SHELLS, is_stateful, make_norm, shell_for
from normlab.nnx.response_norms import EvoNormB0, EvoNormS0, FilterResponseNorm
from normlab.nnx.shell import NormShell, NormState, StatefulNorm, variable_type

__all__ = [
    'SHELLS',
    'BatchNorm',
    'BatchRenorm',
    'EvoNormB0',
    'EvoNormS0',
    'FilterResponseNorm',
    'GroupNorm',
    'InstanceNorm',
    'LayerNorm',
    'NoNorm',
    'NormShell',
    'NormState',
    'RMSNorm',
    'StatefulNorm',
    'batch_moments_fn',
    'is_stateful',
    'make_norm',
    'recompute_batch_stats',
    'shell_for',
    'variable_type',
]
