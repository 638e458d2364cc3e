"""A run as a command line: the flags ``normlab.main`` takes, built and parsed.

Every run of a sweep is exactly ``python -m normlab.main`` with these flags, whether
it runs in its own process or in a reused worker (`normlab.studies.worker`), so any
run can be repeated by hand from its ``command.sh``.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from normlab.studies.grid import format_value

LAUNCHER = ('-m', 'normlab.main')


class FlagError(ValueError):
    """A run's flags do not parse (unknown key, value of the wrong type)."""


def run_flags(config_flag: str, workdir: str, overrides: Mapping) -> list[str]:
    """``['--config=...', '--workdir=...', '--config.KEY=VALUE', ...]``.

    None values are dropped: they can only equal the base config's placeholder
    (the study checks this), and config_flags cannot parse ``None`` for a typed one.
    """
    out = [f'--config={config_flag}', f'--workdir={workdir}']
    out += [f'--config.{k}={format_value(v)}' for k, v in overrides.items() if v is not None]
    return out


def parse(argv: Sequence[str]) -> tuple[ml_collections.ConfigDict, str]:
    """(config, workdir) from `run_flags`, parsed as ``normlab.main`` parses them.

    Uses a fresh FlagValues each time, so one process can parse many runs.
    Raises FlagError (with absl's message) on a bad flag or value.
    """
    argv = ['normlab.main', *argv]
    values = flags.FlagValues()
    config = config_flags.DEFINE_config_file(
        'config', None, 'Config file.', flag_values=values, lock_config=True, sys_argv=argv
    )
    workdir = flags.DEFINE_string('workdir', None, 'Work directory.', flag_values=values)
    try:
        values(argv)
    except (flags.Error, AttributeError, KeyError, TypeError) as e:
        message = str(e).replace('\n', ' ').strip('\'"')
        raise FlagError(message) from e
    return config.value, workdir.value


def shell_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The one-line shell command that repeats a run."""
    prefix = ''.join(f'{k}={shlex.quote(v)} ' for k, v in (env or {}).items())
    return prefix + shlex.join(['python', *LAUNCHER, *argv])


def subprocess_argv(argv: Sequence[str]) -> list[str]:
    """The launcher invoked with this interpreter."""
    return [sys.executable, *LAUNCHER, *argv]


def write_command_file(workdir: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
    """``workdir/command.sh``: the run's command, runnable from the repository root."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, 'command.sh')
    with open(path, 'w') as f:
        f.write('#!/bin/sh\n# Repeats (or resumes) this run; from the repository root.\n')
        f.write(shell_command(argv, env) + '\n')
    os.chmod(path, 0o755)
