"""Every config and every study, loaded and validated as the launcher and the sweep do.

A table over ``configs/*.py`` (default and ``smoke=True``) and ``experiments/*.py``
(``smoke=True``, and their other datasets): each config is parsed as ``normlab.main``
parses it (locked), sent to its trainer by ``normlab.train.registry.trainer_for``,
checked by that trainer's ``validate(config, workdir)``, and its train step is traced
with ``jax.eval_shape`` on an abstract batch (nothing compiles, nothing trains).
A study is loaded by ``load_study`` and planned by ``runner.plan`` as the sweep does,
then every run is validated and traced on the number of devices it would run on:
a study's ``env`` may set it, else a CPU run has one device. This session has 4, so
one-device runs are validated together in a single child process.

Datasets not prepared here (mnist, cifar10, imagenet2012, celeb_a) go through
``tfds.testing.mock_data`` with their metadata written to a temporary data directory:
TFDS then finds them prepared, and everything normlab does with them is the real code
(reading gives random examples of the right features).
"""

import contextlib
import dataclasses
import functools
import glob
import importlib
import json
import os
import re
import subprocess
import sys

import jax
import pytest
import tensorflow_datasets as tfds

from normlab import data, models
from normlab.config.model_options import MODEL_OPTIONS
from normlab.studies import command, load_study, runner
from normlab.train import ConfigError, registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, 'configs/*.py')))
STUDY_FILES = sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, 'experiments/*.py'))
)
# Every study in its smoke size, plus the studies' other datasets.
STUDIES = [f'{p}:smoke=True' for p in STUDY_FILES] + [
    'experiments/batch_size.py:dataset=cifar10,smoke=True',
    'experiments/bn_paper_mnist.py:dataset=mnist,smoke=True',
]
PREPARED = ('digits', 'mnist5k', 'mnist1d')  # built offline on first use
MOCKED = ('mnist', 'cifar10', 'imagenet2012', 'celeb_a')
MOCK_EXAMPLES = 64


@contextlib.contextmanager
def datasets_for(dataset: str, tmp_dir: str):
    """`dataset` ready to use: prepared for real, or mocked with its metadata on disk."""
    if dataset in PREPARED:
        yield
        return
    assert dataset in MOCKED, f'{dataset}: add it to PREPARED or MOCKED (never skipped)'
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES, data_dir=tmp_dir):
        builder = tfds.builder(dataset)  # mock_data points every builder at tmp_dir
        spec = data.get_spec(dataset)
        splits = {spec.train_split, spec.eval_split}
        builder.info.set_splits(
            tfds.core.SplitDict(
                [
                    tfds.core.SplitInfo(name=s, shard_lengths=[MOCK_EXAMPLES], num_bytes=0)
                    for s in splits
                ]
            )
        )
        os.makedirs(builder.data_dir, exist_ok=True)
        builder.info.write_to_directory(builder.data_dir)
        yield


def check_run(config, workdir: str, *, trace_step: bool = True) -> None:
    """What the launcher does before training: both trainers' `validate` trace their
    init and train step."""
    del trace_step
    train_and_evaluate = registry.trainer_for(config)
    trainer = importlib.import_module(train_and_evaluate.__module__)
    trainer.validate(config, workdir)


def parse(config_flag: str, workdir: str, *overrides: str):
    config, _ = command.parse([f'--config={config_flag}', f'--workdir={workdir}', *overrides])
    return config


@pytest.mark.parametrize('smoke', [True, False], ids=['smoke', 'full'])
@pytest.mark.parametrize('path', CONFIGS)
def test_config_validates_and_its_step_traces(path, smoke, tmp_path):
    """Smoke configs are checked and traced; full-size ones checked (their init traced)."""
    flag = f'{path}:smoke=True' if smoke else path
    config = parse(os.path.join(REPO, flag), str(tmp_path / 'run'))
    with datasets_for(config.dataset, str(tmp_path / 'tfds')):
        check_run(config, str(tmp_path / 'run'), trace_step=smoke)


# --- studies -------------------------------------------------------------------------------


def run_devices(study) -> int:
    """Devices a run of `study` sees on a CPU machine: the study's env decides, else 1."""
    found = re.search(r'xla_force_host_platform_device_count=(\d+)', study.env.get('XLA_FLAGS', ''))
    return int(found.group(1)) if found else 1


# What the structure of a classifier's train step depends on; runs that agree on these
# (and differ in batch size or scalar hyperparameters) share one trace of the step.
STEP_KEYS = ('dataset', 'model', 'model_options', 'norm', 'dtype', 'optimizer')


def check_study(spec: str, tmp_dir: str) -> int:
    """Loads and plans `spec` as the sweep does, then validates each run (runs that
    differ only in their seed once); returns how many were validated."""
    study = load_study(spec)
    validated, traced = set(), set()
    for run, argv, expected in runner.plan(study, os.path.join(tmp_dir, 'runs')):
        key = json.dumps({k: v for k, v in expected.items() if k not in ('seed', 'study')})
        if key in validated:
            continue
        validated.add(key)
        step_key = json.dumps({k: expected[k] for k in STEP_KEYS if k in expected})
        config, workdir = command.parse(argv)
        try:
            with datasets_for(config.dataset, os.path.join(tmp_dir, 'tfds')):
                check_run(config, workdir, trace_step=step_key not in traced)
        except ConfigError as e:
            raise ConfigError(f'run {run.name}: {e}') from e
        traced.add(step_key)
    return len(validated)


def child_main() -> None:
    """In a process with another device count: checks the studies named in argv and
    prints one JSON line, {spec: error or the number of runs checked}."""
    import tempfile

    jax.config.update('jax_numpy_rank_promotion', 'raise')  # as conftest.py does
    out = {}
    for spec in sys.argv[1:]:
        try:
            out[spec] = check_study(spec, tempfile.mkdtemp(prefix='normlab-test-configs-'))
        except Exception as e:  # noqa: BLE001 - reported to the parent test
            out[spec] = f'{type(e).__name__}: {e}'
    print(json.dumps(out))


@pytest.fixture(scope='module', autouse=True)
def checked_elsewhere():
    """``result(spec)``: `child_main`'s result for a study whose runs see a device count
    other than this session's. The children (one per count) start with this module and
    run while the tests here do."""
    by_devices = {}
    for spec in STUDIES:
        devices = run_devices(load_study(spec))
        if devices != jax.device_count():
            by_devices.setdefault(devices, []).append(spec)
    code = 'from tests import test_configs; test_configs.child_main()'
    children = {}
    for devices, specs in by_devices.items():
        env = {
            **os.environ,
            'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
            'PYTHONPATH': REPO,
        }
        child = subprocess.Popen(
            [sys.executable, '-c', code, *specs],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        children.update(dict.fromkeys(specs, child))
    results = {}

    def result(spec: str):
        if spec not in results:
            out, err = children[spec].communicate(timeout=600)
            assert children[spec].returncode == 0, err[-3000:]
            results.update(json.loads(out.strip().splitlines()[-1]))
        return results[spec]

    result.specs = set(children)
    yield result
    for child in children.values():
        if child.poll() is None:  # a test failed before reading it
            child.kill()
            child.communicate()


@pytest.mark.parametrize('spec', STUDIES)
def test_study_loads_and_every_run_validates(spec, tmp_path, checked_elsewhere):
    if spec in checked_elsewhere.specs:
        result = checked_elsewhere(spec)
    else:
        result = check_study(spec, str(tmp_path))
    assert isinstance(result, int) and result > 0, result


def test_every_study_file_is_in_the_table():
    assert {s.partition(':')[0] for s in STUDIES} == set(STUDY_FILES)


# --- model options -------------------------------------------------------------------------

# Model fields that are no config option: set from other keys by the trainer, or fixed
# by the model's name (normlab.config.model_options).
NOT_OPTIONS = {'dtype', 'conv', 'stage_sizes', 'stem', 'bottleneck', 'preact'}


@pytest.mark.parametrize('name', sorted(MODEL_OPTIONS))
def test_model_options_are_the_models_fields(name):
    constructor = models.MODELS[name]
    bound = constructor.keywords if isinstance(constructor, functools.partial) else {}
    cls = constructor.func if bound else constructor
    defaults = {f.name: bound.get(f.name, f.default) for f in dataclasses.fields(cls)}
    options, fields = MODEL_OPTIONS[name], set(models.model_fields(name))
    assert set(options) <= fields
    # Left out: what the name fixes, and options its partial binds for good (a
    # pre-activation ResNet's zero_init_last_norm=False).
    assert fields - set(options) - NOT_OPTIONS <= set(bound), name
    for key, kind in options.items():
        # None: an option that is off unless set (the MLP's depth), typed by the table.
        assert defaults[key] is None or isinstance(defaults[key], kind), (name, key)


def test_every_classifier_model_has_its_options():
    gans = {'dcgan_generator', 'dcgan_discriminator'}
    assert set(MODEL_OPTIONS) == set(models.MODELS) - gans


CLASSIFIER_CONFIGS = [p for p in CONFIGS if not p.endswith('_dcgan.py')]


# Transformers place their norms with norm_placement (pre/post/peri), not norm_position.
POSITIONED_CONFIGS = [p for p in CLASSIFIER_CONFIGS if not p.endswith('_vit.py')]


@pytest.mark.parametrize('path', POSITIONED_CONFIGS)
def test_norm_position_override_reaches_the_model(path, tmp_path):
    flag = os.path.join(REPO, f'{path}:smoke=True')
    config = parse(flag, str(tmp_path), '--config.model_options.norm_position=after_activation')
    from normlab.train import classifier

    model = classifier.build_model(config, data.get_spec(config.dataset).num_classes)
    assert model.norm_position == 'after_activation'


def test_a_model_without_the_option_says_so(tmp_path):
    flag = os.path.join(REPO, 'configs/cifar10_resnet.py:smoke=True')
    config = parse(
        flag,
        str(tmp_path / 'run'),
        '--config.model=nf_resnet20',
        '--config.norm.name=none',
        '--config.model_options.norm_position=after_activation',
    )
    with datasets_for('cifar10', str(tmp_path / 'tfds')), pytest.raises(ConfigError) as e:
        check_run(config, str(tmp_path / 'run'))
    assert 'nf_resnet20 takes no option norm_position' in str(e.value)
    with pytest.raises(command.FlagError, match='Did you mean "norm_position"'):
        parse(flag, str(tmp_path), '--config.model_options.norm_positon=after_activation')
    vit = os.path.join(REPO, 'configs/digits_vit.py:smoke=True')
    config = parse(vit, str(tmp_path / 'vit'), '--config.model_options.norm_placement=peri')
    assert config.model_options.norm_placement == 'peri'
    with pytest.raises(command.FlagError, match='norm_position'):
        parse(vit, str(tmp_path / 'vit'), '--config.model_options.norm_position=before_activation')
