"""Orbax checkpoints of a `TrainState`: save every N steps, keep the last k, resume.

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a run killed at any moment (SIGKILL included) leaves only whole
checkpoints behind, and a resumed run restarts from the newest one that restores
and verifies (a damaged one, from a disk error or a hand edit, is moved aside).
"""

from __future__ import annotations

import logging as py_logging
import os

import jax
import jax.numpy as jnp
import numpy as np
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


def _verify(state, abstract) -> str | None:
    """Why a restored state cannot be trusted, or None: shapes and dtypes as the
    state's, every floating value finite."""
    for (path, got), want in zip(
        jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(abstract), strict=True
    ):
        name = jax.tree_util.keystr(path)
        if got.shape != want.shape or got.dtype != want.dtype:
            return f'{name} is {got.dtype}{list(got.shape)}, not {want.dtype}{list(want.shape)}'
        if jnp.issubdtype(got.dtype, jnp.inexact) and not np.isfinite(jax.device_get(got)).all():
            return f'{name} holds non-finite values'
    return None


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int):
        quiet_libraries()
        self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
        self.keep = keep
        self.manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state))

    def restore(self, state_like):
        """The newest checkpoint that restores and verifies, laid out (shapes, dtypes,
        shardings) like `state_like`; None when there is none.

        A damaged one (unreadable files, other shapes or dtypes than the state's, or
        non-finite values) is moved aside to ``checkpoints/damaged-<step>`` (never
        deleted), with one line saying so, and the next older one is tried.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
                problem = _verify(state, abstract)
            except Exception as e:  # noqa: BLE001 - any failure to read makes it damaged
                problem = f'{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}'
            if problem is None:
                return state
            moved = self._move_aside(step)
            logging.warning(
                'checkpoint of step %d is damaged (%s); moved to %s, trying an older one',
                step,
                problem,
                moved,
            )
        return None

    def _move_aside(self, step: int) -> str:
        self.manager.wait_until_finished()
        src = os.path.join(self.directory, str(step))
        dst = os.path.join(self.directory, f'damaged-{step}')
        n = 1
        while os.path.exists(dst):
            n += 1
            dst = os.path.join(self.directory, f'damaged-{step}.{n}')
        os.rename(src, dst)
        # A fresh manager: one that read a damaged step may have inferred its layout
        # from it.
        self.manager.close()
        self.manager = self._open()
        return dst

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
