"""Devices, the data mesh and multi-process setup.

normlab uses one mesh axis, ``data``: every device holds a replica of the
model and a slice of the global batch. Train and eval steps run under
`jax.shard_map` over it, so every cross-device value (gradients, metrics,
batch statistics) is reduced explicitly inside the step.
"""

from __future__ import annotations

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """`jax.distributed.initialize` for multi-host runs; a no-op for one process.

    With all three arguments given, connects to the coordinator (on CPU the
    collectives go through gloo). With none, auto-detects cluster
    environments (SLURM, TPU pods) and otherwise stays single-process.
    """
    given = [a is not None for a in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError(
            'multi-process runs need all of --coordinator_address, --num_processes and '
            f'--process_id (got {coordinator_address!r}, {num_processes!r}, {process_id!r})'
        )
    if all(given):
        # CPU collectives across processes (ignored by GPU/TPU backends). Asking
        # for the backend here would initialize it too early.
        jax.config.update('jax_cpu_collectives_implementation', 'gloo')
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
        return
    try:
        jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:
        logging.debug('single-process run (%s)', e)


def data_mesh() -> Mesh:
    """A one-axis mesh over every device of every process."""
    return Mesh(np.array(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(mesh: Mesh, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assembles each process's slice of a batch into one global array per key."""
    sharding = batch_sharded(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }


def replicate(mesh: Mesh, tree):
    """Places a host pytree (identical on every process) on every device."""
    sharding = replicated(mesh)
    return jax.tree.map(
        lambda a: jax.make_array_from_callback(np.shape(a), sharding, lambda _: np.asarray(a)),
        tree,
    )
