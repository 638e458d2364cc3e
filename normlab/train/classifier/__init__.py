"""`train_and_evaluate(config, workdir)` for image classifiers.

Wires data, model, norm, optimizer and mesh together and hands them to the one
training loop (`normlab.train.loop`), which owns resume, files, W&B, cadence
and divergence. A run writes ``config.json``, ``metrics.jsonl``,
``summary.json``, ``checkpoints/`` and its W&B files into `workdir`; calling it
again on the same `workdir` resumes from the newest checkpoint and ends with the
same numbers as an uninterrupted run.

Data that fits the devices (``config.data_placement``) lives there and every
batch is built inside the compiled step; otherwise `tf.data` streams it.
``steps_per_call`` steps run per dispatch (`normlab.train.steps`).
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from normlab import data, models, norms, parallel
from normlab.data import resident
from normlab.train import bundle, config_checks, loop, optim
from normlab.train import steps as multi_step
from normlab.train.classifier import steps
from normlab.train.classifier.evaluate import Evaluator
from normlab.train.config_checks import DTYPES
from normlab.train.state import TrainState, compile_init


def build_norm(config: ml_collections.ConfigDict) -> norms.ModuleDef:
    """The norm factory: the norm's own options from ``config.norm``, the data axis.

    Options the chosen norm does not take are skipped (an info line lists them each
    time a model is built), so one config can sweep over norms;
    ``norm.weight_standardization`` is not a norm option: `build_model` uses it.
    """
    fields = set(norms.norm_fields(config.norm.name))
    options = {
        k: v for k, v in config.norm.items() if k in fields and v is not None and k not in ('name',)
    }
    skipped = sorted(k for k in config.norm if k not in fields and k not in ('name',))
    if 'axis_name' in fields and norms.is_stateful(config.norm.name):
        # Batch statistics pool over the data axis; per-example norms never
        # need a collective (their axis_name is for model-parallel features).
        options['axis_name'] = parallel.DATA_AXIS
    if skipped:
        logging.info('norm %s ignores config.norm.%s', config.norm.name, ', '.join(skipped))
    return norms.make_norm(config.norm.name, **options)


def build_model(config: ml_collections.ConfigDict, num_classes: int):
    kwargs = dict(config.model_options)
    kwargs['dtype'] = DTYPES[config.dtype]
    if config.norm.weight_standardization:
        kwargs['conv'] = norms.WeightStandardizedConv
    return models.create(config.model, num_classes=num_classes, norm=build_norm(config), **kwargs)


def has_dropout(config) -> bool:
    """Whether the model drops units in training (``model_options.dropout_rate``)."""
    return bool(config.model_options.get('dropout_rate'))


def num_train_steps(config, *, data_dir=None) -> tuple[int, int]:
    """(total steps, steps per epoch); an explicit num_train_steps always wins."""
    examples = data.num_train_examples(config.dataset, data_dir=data_dir)
    steps_per_epoch = max(examples // config.batch_size, 1)
    if config.num_train_steps is not None:
        return config.num_train_steps, steps_per_epoch
    return max(int(math.ceil(config.num_epochs * steps_per_epoch)), 1), steps_per_epoch


def validate(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Every check that can fail before compiling (raises ConfigError).

    Besides the config checks this *traces* (does not compile) the init and the train
    step on the real mesh, so what the norms and models reject for the chosen sizes
    (groups that do not divide the channels, a virtual batch that does not fit the
    per-device batch, images too small for the model) is one line here.
    """
    config_checks.check_classifier_config(config, jax.device_count())
    config_checks.check_workdir(workdir)
    config_checks.check_resume(config, workdir)
    try:
        spec = data.get_spec(config.dataset)
        model = build_model(config, spec.num_classes)
        data.prepared_builder(config.dataset, data_dir=config.data_dir)
        trace_train_step(config, model, spec)
    except (ValueError, TypeError, data.DatasetNotPreparedError) as e:
        raise config_checks.ConfigError(str(e).strip().splitlines()[0]) from e


def abstract_state(model, tx, image_shape) -> TrainState:
    """The shapes and dtypes of a run's initial state (nothing is computed)."""
    dummy = jnp.zeros((2, *image_shape), jnp.float32)
    return jax.eval_shape(
        lambda: TrainState.create(model.init(jax.random.key(0, impl='rbg'), dummy, train=False), tx)
    )


def optimizer_and_step(config, model) -> tuple:
    """(``make_tx(values)``: the optimizer starting from ``values``; the optimizer;
    the per-device train step) of a config's runs; the optimizer's updates read each
    run's hyperparameters from its state."""
    total_steps, steps_per_epoch = num_train_steps(config, data_dir=config.data_dir)
    tx = optim.make_optimizer(config, total_steps, steps_per_epoch)
    step_fn = steps.train_step_fn(
        model,
        tx,
        optim.learning_rate_of(config, total_steps, steps_per_epoch),
        record_grad_norms=config.record_grad_norms,
        dropout=has_dropout(config),
    )

    def make_tx(values):
        return optim.make_optimizer(config, total_steps, steps_per_epoch, values)

    return make_tx, tx, step_fn


def trace_train_step(config, model, spec) -> None:
    """Traces (no compile) the init and one train step with abstract inputs."""
    _, tx, step_fn = optimizer_and_step(config, model)
    state = abstract_state(model, tx, spec.image_shape)
    call = multi_step.make_train_call(
        step_fn, parallel.data_mesh(), steps_per_call=1, batch_fn=None
    )
    b = config.batch_size
    batch = {
        'image': jax.ShapeDtypeStruct((1, b, *spec.image_shape), jnp.float32),
        'label': jax.ShapeDtypeStruct((1, b), jnp.int32),
        'mask': jax.ShapeDtypeStruct((1, b), jnp.float32),
    }
    jax.eval_shape(call, state, batch, np.int32(0), np.int32(1))


def init_state(config, model, tx, mesh, image_shape) -> TrainState:
    """The initial state of one run whose optimizer `tx` holds its hyperparameters."""
    return init_states([config], model, lambda values: tx, mesh, image_shape)[0]


def init_states(configs, model, make_tx, mesh, image_shape) -> list[TrainState]:
    """Each config's initial state from its seed and `optim.hyperparams`, all by one
    compiled init; ``make_tx(values)`` is the optimizer starting from ``values``."""
    dummy = jnp.zeros((2, *image_shape), jnp.float32)

    def init(key_data, values):  # arguments, so every seed and value share one executable
        # XLA:CPU takes ~10x longer to compile threefry than rbg for a model's init.
        key = jax.random.wrap_key_data(key_data, impl='rbg')
        return TrainState.create(model.init(key, dummy, train=False), make_tx(values))

    keys = [np.asarray(jax.random.key_data(jax.random.key(c.seed, impl='rbg'))) for c in configs]
    if jax.process_count() > 1:  # the one thing that must agree: the seed, checked cheaply
        for c, key_data in zip(configs, keys, strict=True):
            multihost_utils.assert_equal(key_data, f'seed={c.seed} differs between processes')
    values = [optim.hyperparams(c) for c in configs]
    compiled = compile_init(init, parallel.replicated(mesh), keys[0], values[0])
    return [compiled(k, v) for k, v in zip(keys, values, strict=True)]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains and evaluates a classifier; returns the summary (also in summary.json)."""
    (outcome,) = _train([config], [workdir], bundled=False)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def train_bundle(configs, workdirs) -> list:
    """Trains runs that differ only in `normlab.train.bundle.BUNDLE_KEYS` (seeds, the
    optimizer's scalar hyperparameters) as bundles;
    returns per run its summary or its error (`DivergedError`, `ConfigError`).

    Fresh runs on device-resident data train together, in bundles whose stacked state
    fits `bundle.STATE_BUDGET_BYTES`; a run with a checkpoint resumes alone (a finished
    one is reported), and streamed data trains one run at a time. Each run's files and
    numbers are those of its solo run.
    """
    bundle.check_bundle([json.loads(c.to_json()) for c in configs])
    outcomes: list = [None] * len(configs)
    fresh = [i for i, w in enumerate(workdirs) if len(configs) > 1 and not bundle.has_checkpoint(w)]
    resident_data = bool(fresh) and resident.on_device(
        configs[0].dataset,
        configs[0].data_placement,
        budget_mb=configs[0].device_data_mb,
        num_devices=jax.device_count(),
        data_dir=configs[0].data_dir,
    )
    chunks = []
    if resident_data and len(fresh) > 1:
        chunks = bundle.split_by_memory(fresh, _state_bytes(configs[0]), bundle.STATE_BUDGET_BYTES)
        chunks = [chunk for chunk in chunks if len(chunk) > 1]
    bundled = {i for chunk in chunks for i in chunk}
    chunks += [[i] for i in range(len(configs)) if i not in bundled]
    for chunk in sorted(chunks):
        try:
            results = _train(
                [configs[i] for i in chunk], [workdirs[i] for i in chunk], bundled=len(chunk) > 1
            )
        except (config_checks.ConfigError, loop.DivergedError) as e:
            results = [e] * len(chunk)
        for i, result in zip(chunk, results, strict=True):
            outcomes[i] = result
    return outcomes


def _state_bytes(config) -> int:
    """Bytes of one run's train state (from shapes only, nothing is computed)."""
    spec = data.get_spec(config.dataset)
    model = build_model(config, spec.num_classes)
    _, tx, _ = optimizer_and_step(config, model)
    state = abstract_state(model, tx, spec.image_shape)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def _train(configs, workdirs, *, bundled: bool) -> list:
    """The runs of `configs` as one program: a bundle (a leading run axis) or one solo run."""
    for c, w in zip(configs, workdirs, strict=True):
        if c is configs[0]:
            validate(c, w)
        else:  # the rest differ only in traced values and bookkeeping: the traces hold
            config_checks.check_classifier_config(c, jax.device_count())
            config_checks.check_workdir(w)
            config_checks.check_resume(c, w)
    config = configs[0]
    mesh = parallel.data_mesh()
    spec = data.get_spec(config.dataset)
    total_steps, steps_per_epoch = num_train_steps(config, data_dir=config.data_dir)
    model = build_model(config, spec.num_classes)
    make_tx, tx, step_fn = optimizer_and_step(config, model)
    states = init_states(configs, model, make_tx, mesh, spec.image_shape)
    state = jax.tree.map(lambda *xs: jnp.stack(xs), *states) if bundled else states[0]

    on_device = resident.on_device(
        config.dataset,
        config.data_placement,
        budget_mb=config.device_data_mb,
        num_devices=mesh.devices.size,
        data_dir=config.data_dir,
    )
    if bundled and not on_device:
        raise config_checks.ConfigError('only runs on device-resident data train in a bundle')
    load = lambda split: resident.load(config.dataset, split, mesh, data_dir=config.data_dir)  # noqa: E731
    train_split = load(spec.train_split) if on_device else None
    eval_split = load(spec.eval_split) if on_device else None
    k = multi_step.default_steps_per_call(config, convolutional=_convolutional(model, spec))
    call = multi_step.make_train_call(
        step_fn,
        mesh,
        steps_per_call=k,
        **(
            steps.resident_batches(train_split, config.batch_size, config.augment, k)
            if on_device
            else {'batch_fn': None}
        ),
        options=multi_step.compiler_options(config),
        bundled=bundled,
    )
    seeds = np.asarray([c.seed for c in configs], np.int32)
    seed = seeds if bundled else seeds[0]
    host_batches = None

    def train(state, n):
        nonlocal host_batches
        if on_device:
            return call(state, train_split.arrays, seed, np.int32(n))
        if host_batches is None:  # opened at the resumed step, on the first call
            iterator = data.train_iterator(
                config.dataset,
                global_batch_size=config.batch_size,
                seed=config.seed,
                start_step=int(state.step),
                augment=config.augment,
                data_dir=config.data_dir,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
            )
            host_batches = multi_step.HostBatches(iterator, mesh, k)
        return call(state, host_batches.take(n), seed, np.int32(n))

    # Evaluation never drops units, not even with batch statistics or for precise BN
    # (the population statistics inference will see); dropout has no parameters.
    eval_model = model.clone(dropout_rate=0.0) if has_dropout(config) else model
    evaluator = Evaluator(
        config, eval_model, mesh, train_split=train_split, eval_split=eval_split, fused=k > 1
    )
    evaluates = [lambda state, step, seed=c.seed: evaluator(state, seed=seed) for c in configs]
    params = optim.count_params(states[0].params)
    runs = f'{len(configs)} runs in one bundle, ' if bundled else ''
    trainer = loop.Trainer(
        state=state,
        total_steps=total_steps,
        examples_per_step=config.batch_size,
        steps_per_call=k,
        train=train,
        evaluate=evaluates if bundled else evaluates[0],
        description=(
            f'{runs}{config.model} on {config.dataset} '
            f'({"on the devices" if on_device else "streamed"}), norm {config.norm.name}: '
            f'{params} params, {total_steps} steps of {config.batch_size} on '
            f'{jax.device_count()} device(s), {k} per call'
        ),
        summary=lambda state: {'params': params},
        runs=len(configs) if bundled else None,
    )
    outcomes = loop.run_bundle(configs, workdirs, trainer)
    for workdir, outcome in zip(workdirs, outcomes, strict=True):
        if isinstance(outcome, dict):
            logging.info('%s: eval error %.4f', workdir, outcome['eval/error'])
    return outcomes


def _convolutional(model, spec) -> bool:
    dummy = jax.ShapeDtypeStruct((2, *spec.image_shape), jnp.float32)
    return multi_step.has_convolutions(
        lambda x: model.init(jax.random.key(0, impl='rbg'), x, train=False), dummy
    )
