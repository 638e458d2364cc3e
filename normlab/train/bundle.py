"""Which runs may train together as one bundle: one compiled program with a run axis.

A study trains the same small network many times (seeds per grid point). Runs
whose configs are equal except for the keys below share one program, so they
train as one: `jax.vmap` over their train states and seeds inside the train
step's `shard_map` (`normlab.train.steps.make_train_call`), each run with its
own init and data order, its own work directory, files and W&B run
(`normlab.train.loop.run_bundle`). Every other key starts a new bundle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Iterable, Sequence

# Keys that may differ between the runs of one bundle: traced per run (`seed`: the
# init key and the resident data order) or bookkeeping that never reaches the program.
BUNDLE_KEYS = ('seed', 'wandb', 'study')
# Most bytes of train state (parameters, optimizer state, batch statistics) one
# bundle holds on a device; more runs than fit are split into several bundles.
STATE_BUDGET_BYTES = 512 * 2**20


def bundle_key(config: dict) -> Hashable:
    """What runs of one bundle share: the config (as JSON) without `BUNDLE_KEYS`."""
    return json.dumps({k: v for k, v in config.items() if k not in BUNDLE_KEYS}, sort_keys=True)


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
    """Raises ConfigError naming the first key outside `BUNDLE_KEYS` that differs."""
    from normlab.train.config_checks import ConfigError  # not at import: the sweep groups

    first = configs[0]
    for other in configs[1:]:
        for k in sorted(set(first) | set(other)):
            if k not in BUNDLE_KEYS and first.get(k) != other.get(k):
                raise ConfigError(
                    f'runs of one bundle differ in {k!r} ({first.get(k)!r} vs {other.get(k)!r}); '
                    f'only {", ".join(BUNDLE_KEYS)} may differ'
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
