"""Orbax checkpoints of a `TrainState`: save every N steps, keep the last k, resume.

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a run killed at any moment (SIGKILL included) leaves only whole
checkpoints behind, and a resumed run restarts from the newest one.
"""

from __future__ import annotations

import logging as py_logging
import os

import jax
import orbax.checkpoint as ocp
from absl import logging


class _DropLibraryInfo(py_logging.Filter):
    """orbax and tfds log every save, restore and dataset read at INFO: keep
    normlab's own lines readable (their warnings still show)."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        noisy = '/orbax/' in record.pathname or '/tensorflow_datasets/' in record.pathname
        return record.levelno >= py_logging.WARNING or not noisy


def quiet_libraries() -> None:
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
        handler.addFilter(_DropLibraryInfo())
    py_logging.getLogger('absl').addFilter(_DropLibraryInfo())


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int):
        quiet_libraries()
        self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state))

    def restore(self, state_like):
        """The newest checkpoint, laid out (shapes, dtypes, shardings) like `state_like`."""
        step = self.manager.latest_step()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
