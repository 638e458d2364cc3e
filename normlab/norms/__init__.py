"""normlab.norms: normalization layers for JAX/Flax research.

Activation norms (`make_norm` names): `BatchNorm` (batch_norm), `LayerNorm`
(layer_norm), `GroupNorm` (group_norm), `InstanceNorm` (instance_norm),
`RMSNorm` (rms_norm), `BatchRenorm` (batch_renorm), `FilterResponseNorm`
(frn), `EvoNormB0` (evonorm_b0), `EvoNormS0` (evonorm_s0), `NoNorm` (none).
Weight norms wrap layers: `WeightStandardizedConv`, `SpectralNorm`,
`WeightNorm`. The pure functions under them are in `normlab.norms.functional`.
"""

from normlab.norms.batch_norm import BATCH_MOMENTS, BatchNorm
from normlab.norms.batch_renorm import BatchRenorm
from normlab.norms.functional import momentum_from_pytorch
from normlab.norms.identity import NoNorm
from normlab.norms.per_example import GroupNorm, InstanceNorm, LayerNorm, RMSNorm
from normlab.norms.precise_bn import batch_moments_fn, recompute_batch_stats
from normlab.norms.registry import NORMS, ModuleDef, is_stateful, make_norm, norm_fields
from normlab.norms.response_norms import EvoNormB0, EvoNormS0, FilterResponseNorm
from normlab.norms.weight_layers import (
    SPECTRAL_STATS,
    SpectralNorm,
    WeightNorm,
    WeightStandardizedConv,
    standardize_kernel,
)

__all__ = [
    'BATCH_MOMENTS',
    'NORMS',
    'SPECTRAL_STATS',
    'BatchNorm',
    'BatchRenorm',
    'EvoNormB0',
    'EvoNormS0',
    'FilterResponseNorm',
    'GroupNorm',
    'InstanceNorm',
    'LayerNorm',
    'ModuleDef',
    'NoNorm',
    'RMSNorm',
    'SpectralNorm',
    'WeightNorm',
    'WeightStandardizedConv',
    'batch_moments_fn',
    'is_stateful',
    'make_norm',
    'momentum_from_pytorch',
    'norm_fields',
    'recompute_batch_stats',
    'standardize_kernel',
]
