"""Process-wide XLA options: normlab's defaults never override the user's."""

from normlab import runtime

YNN = '--xla_cpu_experimental_ynn_fusion_type'
TIMEOUT = '--xla_cpu_collective_call_terminate_timeout_seconds'


def test_defaults_are_added_to_other_flags():
    flags = runtime.xla_flags('--xla_force_host_platform_device_count=4')
    assert flags.split() == [
        '--xla_force_host_platform_device_count=4',
        f'{YNN}=-individual_convolution',
        f'{TIMEOUT}=600',
    ]
    assert runtime.xla_flags('') == f'{YNN}=-individual_convolution {TIMEOUT}=600'


def test_a_flag_the_user_set_wins():
    mine = f'{YNN}=individual_convolution,reduce {TIMEOUT}=5'
    assert runtime.xla_flags(mine) == mine
