"""`file_lock`: one process at a time through a block, across local processes.

Used where several processes of one machine (a parallel sweep, a multi-process run)
may prepare the same file at once: the dataset `digits`, a cached feature classifier.
"""

from __future__ import annotations

import contextlib
import fcntl
import os


@contextlib.contextmanager
def file_lock(path: str):
    """Holds an exclusive ``flock`` on `path` (created, with its directory) for the block.

    Remote file systems (``gs://...``) have no flock: there the block runs unlocked.
    """
    if '://' in path:
        yield
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'a') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
