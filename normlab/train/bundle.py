"""Which runs may train together as one bundle: one compiled program with a run axis.

A study trains the same small network many times (seeds per grid point, a grid
of learning rates). Runs whose configs are equal except for the keys below share
one program, so they train as one: `jax.vmap` over their train states and seeds
inside the train step's `shard_map` (`normlab.train.steps.make_train_call`), each
run with its own init, data order and optimizer scalars (held in its optimizer
state, `normlab.train.optim.HYPERPARAMS`), its own work directory, files and W&B
run (`normlab.train.loop.run_bundle`). Every other key starts a new bundle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Iterable, Sequence

# The optimizer's scalars, traced per run (`normlab.train.optim` keeps them in the
# optimizer state), each with what of its value still shapes the program (None:
# nothing; a zero momentum or weight decay drops a buffer or a term).
OPTIMIZER_SCALARS = {'learning_rate': None, 'weight_decay': bool, 'momentum': bool}
# Keys that may differ between the runs of one bundle: `seed` (the init key and the
# resident data order), the optimizer's scalars, and bookkeeping (`wandb`, `study`).
BUNDLE_KEYS = {'seed': None, 'wandb': None, 'study': None, **OPTIMIZER_SCALARS}
# Most bytes of train state (parameters, optimizer state, batch statistics) one
# bundle holds on a device; more runs than fit are split into several bundles.
STATE_BUDGET_BYTES = 512 * 2**20


def _program_view(config: dict) -> dict:
    """What of `config` shapes the program: every key but `BUNDLE_KEYS`, and of those
    what their reductions keep."""
    shared = {k: v for k, v in config.items() if k not in BUNDLE_KEYS}
    shared.update({k: f(config[k]) for k, f in BUNDLE_KEYS.items() if f and k in config})
    return shared


def bundle_key(config: dict) -> Hashable:
    """What runs of one bundle share: `_program_view` of the config, as JSON."""
    return json.dumps(_program_view(config), sort_keys=True)


def group(configs: Sequence[dict], cap: int | None) -> list[list[int]]:
    """Indices of `configs` in bundles of at most `cap` runs (None: no cap), in order of
    first appearance; runs that differ outside `BUNDLE_KEYS` never share one."""
    if cap is not None and cap < 1:
        raise ValueError(f'bundle={cap} must be a positive number of runs per program')
    groups: dict[Hashable, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(bundle_key(config), []).append(i)
    out = []
    for members in groups.values():
        size = cap or len(members)
        out += [members[i : i + size] for i in range(0, len(members), size)]
    return out


def check_bundle(configs: Sequence[dict]) -> None:
    """Raises ConfigError naming the first key that differs where a bundle may not."""
    from normlab.train.config_checks import ConfigError  # not at import: the sweep groups

    first = _program_view(configs[0])
    for config in configs[1:]:
        other = _program_view(config)
        for k in sorted(set(first) | set(other)):
            if first.get(k) != other.get(k):
                zero = ', '.join(name for name, f in BUNDLE_KEYS.items() if f is bool)
                raise ConfigError(
                    f'runs of one bundle differ in {k!r} ({configs[0].get(k)!r} vs '
                    f'{config.get(k)!r}); only {", ".join(BUNDLE_KEYS)} may differ ({zero}: '
                    'zero and nonzero do not mix)'
                )


def split_by_memory(indices: Iterable[int], state_bytes: int, budget: int) -> list[list[int]]:
    """`indices` in chunks whose stacked state (``state_bytes`` each) fits ``budget``."""
    indices = list(indices)
    size = max(1, budget // max(state_bytes, 1))
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def has_checkpoint(workdir: str) -> bool:
    """Whether `workdir` holds a checkpoint (such a run resumes alone, not in a bundle)."""
    directory = os.path.join(workdir, 'checkpoints')
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))
