"""How an NNX norm runs: its variables in, its Linen namesake's computation, its state out.

Every `normlab.nnx` norm is a `NormShell`: it owns `nnx.Param` / `nnx.BatchStat`
variables as plain attributes (as `flax.nnx` norms do) and, when called, builds
the `normlab.norms` Linen module with the same options and applies it to those
values. So the axes, the layouts of `virtual_batch_size`, the checks, the
variables and every statistic come from one place (`normlab.norms` over
`normlab.norms.functional`): the two APIs cannot drift apart, and an option or
variable added to a Linen norm is one of the NNX norm too. Building and
applying the Linen module happens while tracing; under `nnx.jit` the compiled
program is the Linen one's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from normlab.norms.batch_norm import BATCH_MOMENTS


class NormState(nnx.Variable):
    """A norm's state that is neither a parameter nor a batch statistic.

    It holds the variables of any other Linen collection a norm declares, so
    optimizers (``wrt=nnx.Param``) and code that averages or resets
    `nnx.BatchStat` leave it alone.
    """


def variable_type(collection: str) -> type[nnx.Variable]:
    """The NNX variable type that holds a Linen collection's variables."""
    return {'params': nnx.Param, 'batch_stats': nnx.BatchStat}.get(collection, NormState)


_NOT_OPTIONS = ('parent', 'name')
# Options that name axes of the input; the init input has enough of them.
_AXIS_OPTIONS = ('axis', 'reduction_axes', 'feature_axes')

_RUNNING_AVERAGE_HELP = (
    'pass use_running_average to the constructor or the call '
    '(norm(x, use_running_average=True)), call model.train() / model.eval(), or use '
    'nnx.view(model, use_running_average=True)'
)


class NormShell(nnx.Module):
    """Base class: an NNX norm computed by its `normlab.norms` Linen namesake.

    Subclasses name the Linen class (`linen`); the options are its fields,
    the variables are those its ``init`` creates for ``num_features``
    features, each an attribute of its NNX type (`variable_type`), per-feature
    ones of shape ``(num_features,)`` as in `flax.nnx`. Initializers draw from
    the key ``rngs.params()`` as Linen draws from its init key (per name), so
    random initializers give other values than `flax.nnx`'s.
    """

    linen: ClassVar[type[nn.Module]]
    # Keeps running statistics (and takes `use_running_average`).
    stateful: ClassVar[bool] = False
    # Whether `promote_dtype` applies (flax.nnx namesakes take one).
    promotes: ClassVar[bool] = True

    def __init__(
        self,
        num_features: int,
        *,
        rngs: nnx.Rngs,
        promote_dtype: Callable | None = None,
        scale_metadata: Mapping[str, Any] = MappingProxyType({}),
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
        **options,
    ):
        name = type(self).__name__
        fields = self.option_names()
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise ValueError(
                f'{name} got unknown option(s) {unknown}; valid: num_features, rngs, '
                f'{", ".join(fields)}'
            )
        if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features < 1:
            raise ValueError(f'{name}(num_features={num_features!r}): must be a positive int')
        if promote_dtype is not None and not self.promotes:
            raise ValueError(f'{name} takes no promote_dtype (flax.nnx has no {name})')
        self.num_features = num_features
        defaults = {f.name: f.default for f in dataclasses.fields(self.linen) if f.name in fields}
        if self.stateful:
            defaults['use_running_average'] = False  # flax.nnx.BatchNorm's default
        for field, value in {**defaults, **options}.items():
            setattr(self, field, value)
        if self.promotes:
            self.promote_dtype = promote_dtype or dtypes.promote_dtype

        # The Linen module's own init (its checks, variables and initializers) on
        # a one-example input with the features on the parameter axes.
        rank = 2
        for option in _AXIS_OPTIONS:
            axes = getattr(self, option, None)
            for a in () if axes is None else (axes,) if isinstance(axes, int) else axes:
                rank = max(rank, a + 1 if a >= 0 else -a)
        shape = [1] * rank
        shape[self.param_axes(rank)[0]] = num_features
        call = {'use_running_average': True} if self.stateful else {}
        variables = self.linen_module().init(rngs.params(), jnp.zeros(shape), **call)
        metadata = {'scale': scale_metadata, 'bias': bias_metadata}
        collections = {}
        for collection, values in variables.items():
            for vname, value in values.items():
                value = value.reshape(-1) if value.ndim else value
                var = variable_type(collection)(value, **metadata.get(vname, {}))
                setattr(self, vname, var)
                collections[vname] = collection
        # Which Linen collection each variable goes back to.
        self.linen_collections = collections
        for vname in ('scale', 'bias'):  # disabled ones are None, as in flax.nnx
            if hasattr(self, f'use_{vname}') and vname not in collections:
                setattr(self, vname, nnx.data(None))

    @classmethod
    def option_names(cls) -> list[str]:
        """The keyword options the constructor takes: the Linen class's fields.

        Stateless norms drop ``use_running_average`` (their Linen versions accept
        and ignore it; `flax.nnx`'s take none).
        """
        skip = _NOT_OPTIONS if cls.stateful else (*_NOT_OPTIONS, 'use_running_average')
        return [f.name for f in dataclasses.fields(cls.linen) if f.init and f.name not in skip]

    def linen_options(self) -> dict[str, Any]:
        """The Linen module's fields, from this module's current attributes.

        The mode goes to the Linen call instead (Linen refuses it twice).
        """
        return {f: getattr(self, f) for f in self.option_names() if f != 'use_running_average'}

    def linen_module(self) -> nn.Module:
        """The `normlab.norms` module with this module's options."""
        return self.linen(**self.linen_options())

    def param_axes(self, ndim: int) -> tuple[int, ...]:
        """The axes of a rank-`ndim` input the parameters run along (default: the last)."""
        return (ndim - 1,)

    def _running_average(self, use_running_average: bool | None) -> bool:
        """The call's flag, else the attribute's (flax.nnx's `first_from` rule)."""
        if use_running_average is not None:
            return use_running_average
        if self.use_running_average is None:
            raise ValueError(
                f'{type(self).__name__}: no use_running_average was given: {_RUNNING_AVERAGE_HELP}'
            )
        return self.use_running_average

    def _apply(self, x, *, use_running_average: bool | None = None, **call):
        """Applies the Linen module to this module's variables and writes its state back.

        Args:
          x: the input.
          use_running_average: the resolved mode of a stateful norm (None for
            stateless ones).
          **call: further keyword arguments of the Linen call (``mask``); None
            ones are left out.
        """
        axes = self.param_axes(x.ndim)
        feature_shape = tuple(x.shape[a] for a in axes)
        features = 1
        for size in feature_shape:
            features *= size
        if features != self.num_features:
            raise ValueError(
                f'{type(self).__name__}(num_features={self.num_features}) got an input of shape '
                f'{x.shape} with {features} features on axes {axes}'
            )
        variables = {}
        for vname, collection in self.linen_collections.items():
            value = getattr(self, vname)[...]
            variables.setdefault(collection, {})[vname] = (
                value.reshape(feature_shape) if value.ndim else value
            )
        if self.promotes:
            # flax.nnx's rule: the input, parameters and running statistics share one
            # dtype. The statistics themselves stay float32 (flax would round them).
            params = variables.get('params', {})
            affine = [k for k in ('scale', 'bias') if k in params]
            stats = list(variables.get('batch_stats', {}).values())
            x, *promoted = self.promote_dtype(
                (x, *(params[k] for k in affine), *stats), dtype=self.dtype
            )
            params.update(zip(affine, promoted, strict=False))

        call = {k: v for k, v in call.items() if v is not None}
        training = use_running_average is False
        mutable = []
        if training and getattr(self, 'update_stats', True):
            mutable = [c for c in variables if c != 'params']
        if training and self.records_batch_moments():
            mutable.append(BATCH_MOMENTS)
        if use_running_average is not None:
            call['use_running_average'] = use_running_average
        module = self.linen_module()
        if not mutable:
            return module.apply(variables, x, **call)
        y, updates = module.apply(variables, x, mutable=mutable, **call)
        sown = updates.pop(BATCH_MOMENTS, None)
        if sown is not None:
            self.sow(nnx.Intermediate, BATCH_MOMENTS, sown)
        for collection in updates.values():
            for vname, value in collection.items():
                getattr(self, vname)[...] = value.reshape(-1) if value.ndim else value
        return y

    def records_batch_moments(self) -> bool:
        """Whether training calls keep their batch statistics (set by precise BN's copy)."""
        return getattr(self, '_record_batch_moments', False)


class StatefulNorm(NormShell):
    """A norm with running statistics, switched between modes as `flax.nnx.BatchNorm` is.

    Training mode (``use_running_average=False``, the default, or after
    ``model.train()``) normalizes with the batch's statistics and updates the
    running ones; evaluation mode (``use_running_average=True`` or
    ``model.eval()``) normalizes with the running ones. The call's argument
    wins over the attribute.
    """

    stateful = True

    def set_view(self, use_running_average: bool | None = None, update_stats: bool | None = None):
        """Used by `nnx.view`: ``nnx.view(model, use_running_average=True)`` evaluates;
        ``nnx.view(model, update_stats=False)`` trains on batch statistics without
        storing them (evaluation with batch statistics)."""
        if use_running_average is not None:
            self.use_running_average = use_running_average
        if update_stats is not None and hasattr(self, 'update_stats'):
            self.update_stats = update_stats
