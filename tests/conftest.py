"""Test setup: 4 simulated CPU devices and strict rank promotion, before jax loads."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('WANDB_MODE', 'offline')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402

# A (C,) statistic broadcast against the wrong axis fails loudly here.
jax.config.update('jax_numpy_rank_promotion', 'raise')
