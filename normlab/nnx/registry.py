"""`make_norm` for NNX: every registered norm by name, built for ``num_features``.

The names, the registry's defaults (``layer_norm`` over every non-batch axis)
and the checks of the options are `normlab.norms.make_norm`'s; this picks the
NNX shell of the Linen class it resolves to.
"""

from __future__ import annotations

from flax import nnx

from normlab import norms
from normlab.nnx.batch_norm import BatchNorm
from normlab.nnx.batch_renorm import BatchRenorm
from normlab.nnx.identity import NoNorm
from normlab.nnx.per_example import GroupNorm, InstanceNorm, LayerNorm, RMSNorm
from normlab.nnx.response_norms import EvoNormB0, EvoNormS0, FilterResponseNorm
from normlab.nnx.shell import NormShell

SHELLS: tuple[type[NormShell], ...] = (
    BatchNorm,
    BatchRenorm,
    EvoNormB0,
    EvoNormS0,
    FilterResponseNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    NoNorm,
    RMSNorm,
)
_BY_LINEN = {shell.linen: shell for shell in SHELLS}
# Options of the NNX constructors that Linen modules do not have.
_NNX_ONLY = ('promote_dtype', 'scale_metadata', 'bias_metadata')


def shell_for(name: str) -> type[NormShell]:
    """The NNX class of registered norm `name` (unknown names list the valid ones)."""
    factory = norms.make_norm(name)
    linen = factory.func
    if linen not in _BY_LINEN:
        raise ValueError(f'norm {name!r} ({linen.__name__}) has no normlab.nnx shell yet')
    return _BY_LINEN[linen]


def make_norm(name: str, num_features: int, *, rngs: nnx.Rngs, **kwargs) -> NormShell:
    """A registered norm as an NNX module: ``make_norm('group_norm', 64, num_groups=8, rngs=rngs)``.

    Takes the options of `normlab.norms.make_norm(name, ...)` (checked the same
    way, with the same registry defaults) plus flax.nnx's ``promote_dtype``,
    ``scale_metadata`` and ``bias_metadata``. Models build one per layer, e.g.
    from ``functools.partial(make_norm, 'batch_norm', momentum=0.9)``.
    """
    nnx_only = {k: kwargs.pop(k) for k in _NNX_ONLY if k in kwargs}
    options = norms.make_norm(name, **kwargs).keywords
    return shell_for(name)(num_features, rngs=rngs, **options, **nnx_only)


def is_stateful(norm: NormShell | str) -> bool:
    """Whether a norm (a module or a registered name) keeps running statistics."""
    cls = shell_for(norm) if isinstance(norm, str) else type(norm)
    return cls.stateful
