"""A study as a W&B sweep definition, so ``wandb agent`` can spread it over machines.

    python -m normlab.sweep --config=experiments/batch_size.py --workdir=runs/batch_size \\
        --emit_wandb_sweep=batch_size.yaml
    wandb sweep batch_size.yaml          # prints SWEEP_ID
    wandb agent ENTITY/PROJECT/SWEEP_ID  # on every machine, from the repository root

The sweep is ``method: grid`` over one parameter per grid key plus ``config.seed``,
each named ``config.KEY``: an agent passes parameters as ``--NAME=VALUE``, so the
run's command line is ``python -m normlab.main --config=... --workdir=...
--config.norm.name=group_norm --config.batch_size=16 ...``, exactly a sweep run's.
Derived and fixed overrides are constants of the sweep, the study's environment
(``XLA_FLAGS`` for simulated devices) prefixes the command. Every agent run writes to
``<workdir>/wandb_sweep/$WANDB_RUN_ID`` (the agent sets the variable; a shell
expands it, since W&B's own ``${envvar:...}`` is filled in before the id is set),
and logs to the study's W&B group, so ``normlab.compare --wandb_group`` reads
them back.

W&B grids are products: a study whose grid zips keys, or whose derived values
change across the grid, cannot be written this way and is refused with a message.
"""

from __future__ import annotations

import itertools
import os
import shlex
from collections.abc import Sequence

import yaml

from normlab.studies.grid import format_value
from normlab.studies.study import Study, StudyError


def product_axes(study: Study) -> dict[str, list]:
    """The grid as independent axes ``{key: values}``; StudyError if it is not a product."""
    keys = list(dict.fromkeys(k for p in study.grid for k in p))
    axes = {k: list(dict.fromkeys(_hashable(p.get(k)) for p in study.grid)) for k in keys}
    expected = {tuple(combo) for combo in itertools.product(*axes.values())}
    actual = [tuple(_hashable(p.get(k)) for k in keys) for p in study.grid]
    if len(actual) != len(expected) or set(actual) != expected:
        raise StudyError(
            f'study {study.name!r}: its grid ({len(actual)} points over {", ".join(keys)}) is '
            'not a full product of per-key values, which a W&B grid sweep cannot express; '
            'run it with normlab.sweep'
        )
    return {k: [_plain(v) for v in vs] for k, vs in axes.items()}


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def _plain(value):
    """A value W&B writes back as the flag text config_flags parses."""
    if isinstance(value, tuple):
        return format_value(value)
    return value


def constants(study: Study) -> dict:
    """Overrides that are the same for every run: fixed ones and constant derived ones."""
    runs = study.runs()
    grid_keys = {k for p in study.grid for k in p}
    out = {}
    for key in runs[0].overrides:
        if key in grid_keys or key == 'seed':
            continue
        values = {repr(r.overrides.get(key)) for r in runs}
        if len(values) > 1:
            raise StudyError(
                f'study {study.name!r}: {key!r} is derived from the grid point, which a W&B '
                'grid sweep cannot express; run it with normlab.sweep'
            )
        if runs[0].overrides[key] is not None:
            out[key] = _plain(runs[0].overrides[key])
    return out


def sweep_definition(study: Study, workdir: str, project: str, entity: str | None) -> dict:
    """The sweep as a dict (see the module docstring)."""
    parameters = {f'config.{k}': {'values': v} for k, v in product_axes(study).items()}
    parameters['config.seed'] = {'values': list(study.seeds)}
    for key, value in constants(study).items():
        parameters[f'config.{key}'] = {'value': value}
    run_dir = shlex.quote(os.path.join(workdir, 'wandb_sweep'))
    env = ''.join(f'{k}={shlex.quote(v)} ' for k, v in study.env.items())
    launcher = (
        f'exec env {env}"$0" -m normlab.main {shlex.quote(f"--config={study.config_flag}")} '
        f'--workdir={run_dir}/"$WANDB_RUN_ID" "$@"'
    )
    out = {
        'name': study.name,
        'description': f'normlab study {study.source or study.name}',
        'program': 'normlab/main.py',
        'method': 'grid',
        'metric': {'name': study.report.metrics[0], 'goal': 'minimize'},
        'project': project,
        'parameters': parameters,
        'command': ['/bin/sh', '-c', launcher, '${interpreter}', '${args}'],
    }
    if entity is not None:
        out['entity'] = entity
    return out


def write(study: Study, path: str, workdir: str, project: str, entity: str | None) -> dict:
    definition = sweep_definition(study, workdir, project, entity)
    with open(path, 'w') as f:
        f.write(
            f'# normlab study {study.name!r}: `wandb sweep {os.path.basename(path)}`, then\n'
            '# `wandb agent ENTITY/PROJECT/SWEEP_ID` from the repository root.\n'
        )
        yaml.safe_dump(definition, f, sort_keys=False, default_flow_style=False)
    return definition


def parameter_keys(definition: dict) -> Sequence[str]:
    """The config keys a sweep sets (without the ``config.`` prefix)."""
    return [k.removeprefix('config.') for k in definition['parameters']]
