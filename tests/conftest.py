"""Test setup: 4 simulated CPU devices and strict rank promotion, before jax loads."""

import os
import tempfile

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('WANDB_MODE', 'offline')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402

from normlab import runtime  # noqa: E402

# The XLA:CPU options users' runs get (`runtime.setup`), before the backend starts.
os.environ['XLA_FLAGS'] = runtime.xla_flags(os.environ['XLA_FLAGS'])

# A (C,) statistic broadcast against the wrong axis fails loudly here.
jax.config.update('jax_numpy_rank_promotion', 'raise')
# Runs of identical programs within the session (and their subprocesses) reuse
# compiled code, as users' re-runs do.
os.environ.setdefault(
    'NORMLAB_COMPILATION_CACHE', tempfile.mkdtemp(prefix='normlab-test-xla-cache-')
)
jax.config.update('jax_compilation_cache_dir', os.environ['NORMLAB_COMPILATION_CACHE'])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
