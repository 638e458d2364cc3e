"""How an NNX norm runs: its variables in, its Linen namesake's computation, its state out.

Every `normlab.nnx` norm is a `NormShell`: it owns `nnx.Param` / `nnx.BatchStat`
variables as plain attributes (as `flax.nnx` norms do) and, when called, builds
the `normlab.norms` Linen module with the same options and applies it to those
values. So the axes, the layouts of `virtual_batch_size`, the checks and every
statistic come from one place (`normlab.norms` over `normlab.norms.functional`):
the two APIs cannot drift apart, and an option added to a Linen norm is an
NNX option too. Building and applying the Linen module happens while tracing;
under `nnx.jit` the compiled program is the Linen one's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from normlab.norms.batch_norm import BATCH_MOMENTS
from normlab.norms.batch_renorm import STEPS_COLLECTION


class ParamSpec(NamedTuple):
    """One learned parameter of a norm.

    Attributes:
      enabled_by: the boolean option that switches it on (None: always there).
      init: the option holding its initializer, or the initializer itself.
      per_feature: shaped ``(num_features,)`` (else a scalar).
      dtype: its dtype; None uses the norm's ``param_dtype``.
    """

    enabled_by: str | None
    init: str | Callable
    per_feature: bool = True
    dtype: Any = None


AFFINE = {
    'scale': ParamSpec('use_scale', 'scale_init'),
    'bias': ParamSpec('use_bias', 'bias_init'),
}


class NormSteps(nnx.Variable):
    """A norm's count of training steps (Batch Renorm's clip ramp; Linen's ``norm_steps``).

    Not a batch statistic, so code that averages or resets `nnx.BatchStat`
    never touches it, and not an `nnx.Param`, so optimizers leave it alone.
    """


# The NNX variable type of each Linen collection a norm reads or writes.
VARIABLE_TYPES: dict[str, type[nnx.Variable]] = {
    'params': nnx.Param,
    'batch_stats': nnx.BatchStat,
    STEPS_COLLECTION: NormSteps,
}

_NOT_OPTIONS = ('parent', 'name')

_RUNNING_AVERAGE_HELP = (
    'pass use_running_average to the constructor or the call '
    '(norm(x, use_running_average=True)), call model.train() / model.eval(), or use '
    'nnx.view(model, use_running_average=True)'
)


class NormShell(nnx.Module):
    """Base class: an NNX norm computed by its `normlab.norms` Linen namesake.

    Subclasses name the Linen class (`linen`) and declare their variables
    (`params`, `state`); their options are the Linen class's fields.
    """

    linen: ClassVar[type[nn.Module]]
    param_specs: ClassVar[Mapping[str, ParamSpec]] = AFFINE
    # name -> (Linen collection, init(shape, dtype) of a per-feature state array)
    state_specs: ClassVar[Mapping[str, tuple[str, Callable]]] = {}
    # Options whose NNX default differs from the Linen one.
    nnx_defaults: ClassVar[Mapping[str, Any]] = {}
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
        for field, value in {**defaults, **self.nnx_defaults, **options}.items():
            setattr(self, field, value)
        if self.promotes:
            self.promote_dtype = promote_dtype or dtypes.promote_dtype
        self.linen_module()  # the Linen field checks, now rather than at the first call

        metadata = {'scale': scale_metadata, 'bias': bias_metadata}
        for pname, spec in self.param_specs.items():
            if spec.enabled_by is not None and not getattr(self, spec.enabled_by):
                setattr(self, pname, nnx.data(None))
                continue
            init = getattr(self, spec.init) if isinstance(spec.init, str) else spec.init
            shape = (num_features,) if spec.per_feature else ()
            value = init(rngs.params(), shape, spec.dtype or self.param_dtype)
            setattr(self, pname, nnx.Param(value, **metadata.get(pname, {})))
        stats_dtype = jnp.float32 if getattr(self, 'force_float32_reductions', True) else None
        for sname, (collection, init) in self.state_specs.items():
            value = init((num_features,), stats_dtype or self.param_dtype)
            setattr(self, sname, VARIABLE_TYPES[collection](value))

    @classmethod
    def option_names(cls) -> list[str]:
        """The keyword options the constructor takes: the Linen class's fields.

        Stateless norms drop ``use_running_average`` (their Linen versions accept
        and ignore it; `flax.nnx`'s take none).
        """
        skip = _NOT_OPTIONS if cls.state_specs else (*_NOT_OPTIONS, 'use_running_average')
        return [f.name for f in dataclasses.fields(cls.linen) if f.init and f.name not in skip]

    def linen_options(self) -> dict[str, Any]:
        """The Linen module's fields, from this module's current attributes.

        The mode goes to the Linen call instead (Linen refuses it twice).
        """
        return {f: getattr(self, f) for f in self.option_names() if f != 'use_running_average'}

    def linen_module(self) -> nn.Module:
        """The `normlab.norms` module with this module's options."""
        return self.linen(**self.linen_options())

    def param_axes(self, x) -> tuple[int, ...]:
        """The axes of `x` the parameters run along (default: the last one)."""
        return (x.ndim - 1,)

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
          **call: further keyword arguments of the Linen call (``mask``).
        """
        axes = self.param_axes(x)
        features = 1
        for a in axes:
            features *= x.shape[a]
        if features != self.num_features:
            raise ValueError(
                f'{type(self).__name__}(num_features={self.num_features}) got an input of shape '
                f'{x.shape} with {features} features on axes {axes}'
            )
        feature_shape = tuple(x.shape[a] for a in axes)
        params = {}
        for pname, spec in self.param_specs.items():
            p = getattr(self, pname)
            if p is not None:
                params[pname] = p[...].reshape(feature_shape) if spec.per_feature else p[...]
        variables = {'params': params}
        for sname, (collection, _) in self.state_specs.items():
            variables.setdefault(collection, {})[sname] = getattr(self, sname)[...]
        if self.promotes:
            # flax.nnx's rule: the input, parameters and running statistics share one
            # dtype. The statistics themselves stay float32 (flax would round them).
            affine = [k for k in ('scale', 'bias') if k in params]
            stats = list(variables.get('batch_stats', {}).values())
            x, *promoted = self.promote_dtype(
                (x, *(params[k] for k in affine), *stats), dtype=self.dtype
            )
            params.update(zip(affine, promoted, strict=False))

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
            for sname, value in collection.items():
                getattr(self, sname)[...] = value
        return y

    def records_batch_moments(self) -> bool:
        """Whether training calls keep their batch statistics for precise BN."""
        return getattr(self, '_record_batch_moments', False)


class StatefulNorm(NormShell):
    """A norm with running statistics, switched between modes as `flax.nnx.BatchNorm` is.

    Training mode (``use_running_average=False``, the default, or after
    ``model.train()``) normalizes with the batch's statistics and updates the
    running ones; evaluation mode (``use_running_average=True`` or
    ``model.eval()``) normalizes with the running ones. The call's argument
    wins over the attribute.
    """

    nnx_defaults = {'use_running_average': False}

    def set_view(self, use_running_average: bool | None = None, update_stats: bool | None = None):
        """Used by `nnx.view`: ``nnx.view(model, use_running_average=True)`` evaluates;
        ``nnx.view(model, update_stats=False)`` trains on batch statistics without
        storing them (evaluation with batch statistics)."""
        if use_running_average is not None:
            self.use_running_average = use_running_average
        if update_stats is not None and hasattr(self, 'update_stats'):
            self.update_stats = update_stats
