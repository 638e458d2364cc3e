"""The command-line launcher: parse flags, call a trainer. Nothing else.

    python -m normlab.main --config=configs/digits_cnn.py --workdir=runs/digits_cnn
    python -m normlab.main --config=configs/digits_cnn.py:norm=group_norm --workdir=runs/gn \
        --config.batch_size=16
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, "Directory for the run's files.")
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for multi-process runs.'
)
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, "This process's index.")
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    # Import after flag parsing so `--help` and flag errors are instant.
    from normlab import runtime

    runtime.setup()
    from normlab import parallel
    from normlab.train import ConfigError, DivergedError
    from normlab.train.registry import trainer_for

    try:
        parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        trainer_for(_CONFIG.value)(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, DivergedError) as e:
        logging.flush()
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2 if isinstance(e, ConfigError) else 3)
    except KeyboardInterrupt as e:  # loop.Interrupted says where; elsewhere nothing ran yet
        logging.flush()
        print(f'stopped: {e or "interrupted before training started"}', file=sys.stderr)
        sys.exit(130)


def one_line(error: BaseException) -> str:
    """The message of a flag or config error without the traceback text inside it."""
    text = str(error).replace('\\n', '\n').replace("\\'", "'")
    lines = [line.strip().strip('\'"') for line in text.splitlines() if line.strip()]
    if any(line.startswith('Traceback') for line in lines):
        return lines[-1]
    return ': '.join(lines)


def parse_flags(argv):
    """absl's flag parsing; a bad flag, config file or key is one line and exit 2."""
    try:
        rest = FLAGS(argv)
        _CONFIG.value.trainer  # noqa: B018 - loads the config file now, not at first use
        return rest
    except Exception as e:  # noqa: BLE001 - every parsing failure is reported the same way
        print(f'error: {one_line(e)}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
