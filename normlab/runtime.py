"""Process-wide setup for a run: TF hidden from GPUs, XLA:CPU options, the XLA cache."""

from __future__ import annotations

import os

import jax

CACHE_DIR = os.environ.get(
    'NORMLAB_COMPILATION_CACHE', os.path.join(os.path.expanduser('~'), '.cache', 'normlab', 'xla')
)
# jaxlib 0.10's XLA:CPU runs convolutions through YNNPACK, whose kernels are slower than
# Eigen's on AVX2 CPUs: CIFAR ResNet-20 trains 1.3x faster without it and its
# weight-gradient convolutions run 2.7-3.4x faster (BENCHMARKS.md, section 2).
# Simulated CPU devices (``xla_force_host_platform_device_count``) meet in collective
# rendezvous; on a loaded 2-core machine a device thread can arrive late, and past
# XLA's termination timeout the process aborts (SIGABRT, "Termination timeout ...
# exceeded"): wait up to 10 minutes instead.
# CPU-only flags: other backends ignore them. A value the user put in XLA_FLAGS wins.
CPU_XLA_FLAGS = {
    '--xla_cpu_experimental_ynn_fusion_type': '-individual_convolution',
    '--xla_cpu_collective_call_terminate_timeout_seconds': '600',
}


def xla_flags(current: str) -> str:
    """`current` (an XLA_FLAGS value) plus normlab's defaults for flags it does not set."""
    for name, value in CPU_XLA_FLAGS.items():
        if name not in current:
            current = f'{current} {name}={value}'.strip()
    return current


def hide_gpus_from_tf() -> None:
    """Keeps TensorFlow off the GPUs: tf.data only feeds the input pipeline, and the
    accelerators' memory belongs to JAX (as in flax's ImageNet example).

    `setup` calls it, and so does `normlab.data.prepared_builder`, through which every
    use of TF in normlab passes, for callers that never ran `setup`. A no-op once TF
    has initialized its devices.
    """
    import tensorflow as tf  # imported on use: it is slow to import

    try:
        tf.config.set_visible_devices([], 'GPU')
    except RuntimeError:  # TF already initialized its devices; nothing to hide then
        pass


def setup() -> None:
    """Call once at start-up, before compiling anything (XLA reads its flags then)."""
    os.environ['XLA_FLAGS'] = xla_flags(os.environ.get('XLA_FLAGS', ''))
    hide_gpus_from_tf()
    # Re-running a config reuses compiled executables across processes.
    jax.config.update('jax_compilation_cache_dir', CACHE_DIR)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
