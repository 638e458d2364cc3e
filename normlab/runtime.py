"""Process-wide setup for a run: TF hidden from GPUs, the XLA compilation cache."""

from __future__ import annotations

import os

import jax

CACHE_DIR = os.environ.get(
    'NORMLAB_COMPILATION_CACHE', os.path.join(os.path.expanduser('~'), '.cache', 'normlab', 'xla')
)


def setup() -> None:
    """Call once at start-up, before compiling anything."""
    # tf.data only feeds the input pipeline: the accelerators belong to JAX.
    import tensorflow as tf

    tf.config.set_visible_devices([], 'GPU')
    # Re-running a config reuses compiled executables across processes.
    jax.config.update('jax_compilation_cache_dir', CACHE_DIR)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
