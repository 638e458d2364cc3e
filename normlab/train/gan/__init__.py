"""`train_and_evaluate(config, workdir)` for GANs: DCGAN with any norm in G and in D.

The GAN counterpart of `normlab.train.classifier`, with the same launcher, mesh,
checkpoints, W&B and files. A config with ``trainer = 'gan'`` comes here
(`normlab.train.registry`); its keys are in `normlab.config.gan`.

* Two networks, each with its own parameters, Adam state (betas (0.5, 0.999), Radford
  et al. 2016), ``batch_stats`` and norm (``config.generator.norm``,
  ``config.discriminator.norm``); spectral norm for D (Miyato et al. 2018); a
  class-conditional generator through conditional normalization and a projection
  discriminator (``config.conditional``); non-saturating or hinge loss; an optional
  EMA of the generator's weights for evaluation.
* One train step (`normlab.train.gan.steps`) = ``discriminator.steps`` D updates and
  one G update, under `jax.shard_map` over the ``data`` axis, reductions inside.
* Evaluation (`normlab.train.gan.evaluate`) every ``eval_every_steps`` and at the end:
  Frechet distance and label entropy in the features of a classifier normlab trains
  on the same dataset (not Inception FID), and a sample grid written to
  ``samples/step_NNNNNNN.png`` (the newest also as ``samples.png``) and to W&B.
* Divergence is a result, not a crash: a non-finite loss or a collapsed
  discriminator (`normlab.config.gan.divergence_config`) stops the run, and
  ``summary.json`` says ``"status": "diverged"`` with the reason and step (and the
  evaluation of the last state when it is finite). The call returns normally, so a
  sweep records it like any other run.

A run writes ``config.json``, ``metrics.jsonl``, ``summary.json``, ``samples/``,
``checkpoints/`` and its W&B files into `workdir`; calling it again on the same
`workdir` resumes from the newest checkpoint and ends with the same state and
numbers as an uninterrupted run (data and noise are functions of the step; the
collapse counter and the EMA weights are part of the checkpointed state).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from normlab import data, models, parallel
from normlab.data import resident
from normlab.train import config_checks, loop, optim
from normlab.train import steps as multi_step
from normlab.train.classifier import build_norm
from normlab.train.config_checks import DTYPES
from normlab.train.gan import checks as gan_checks
from normlab.train.gan.evaluate import GANEvaluator
from normlab.train.gan.feature_classifier import load_or_train
from normlab.train.gan.images import ImageSpace, save_png
from normlab.train.gan.losses import get_loss
from normlab.train.gan.steps import GANState, StepOptions, train_step_fn
from normlab.train.state import TrainState, initialize


def num_classes(config) -> int:
    """Classes the networks condition on: the dataset's when conditional, else 0."""
    return data.get_spec(config.dataset).num_classes if config.conditional else 0


def image_space(config) -> ImageSpace:
    return ImageSpace.create(data.get_spec(config.dataset), config.image_size)


def build_networks(config: ml_collections.ConfigDict):
    """(generator, discriminator), each with its own norm from its own config section."""
    space = image_space(config)
    dtype = DTYPES[config.dtype]
    g, d = config.generator, config.discriminator
    generator = models.create(
        'dcgan_generator',
        num_classes=num_classes(config),
        norm=build_norm(g),
        image_size=space.size,
        out_channels=space.channels,
        latent_dim=g.latent_dim,
        width=g.width,
        dtype=dtype,
    )
    discriminator = models.create(
        'dcgan_discriminator',
        num_classes=num_classes(config),
        norm=build_norm(d),
        spectral_norm=d.spectral_norm,
        width=d.width,
        dtype=dtype,
    )
    return generator, discriminator


def build_optimizers(config):
    """Adam for each network, constant learning rate (DCGAN)."""
    g, d = config.generator, config.discriminator
    return (
        optax.adam(g.learning_rate, b1=g.b1, b2=g.b2),
        optax.adam(d.learning_rate, b1=d.b1, b2=d.b2),
    )


def step_options(config) -> StepOptions:
    return StepOptions(
        loss=get_loss(config.loss),
        latent_dim=config.generator.latent_dim,
        num_classes=num_classes(config),
        d_steps=config.discriminator.steps,
        r1_weight=float(config.discriminator.r1_weight),
        ema_decay=config.generator.ema_decay,
        seed=config.seed,
        space=image_space(config),
    )


def collapse_floor(config) -> float:
    """The discriminator loss below which a step counts towards collapse (-inf: never)."""
    floor = config.divergence.d_loss_floor
    return float('-inf') if floor is None else float(floor)


def _init_variables(config, generator, discriminator):
    """Variables of both networks, from keys derived from the seed."""
    space = image_space(config)
    key_g, key_d = jax.random.split(jax.random.key(config.seed))
    z = jnp.zeros((2, config.generator.latent_dim), jnp.float32)
    images = jnp.zeros((2, space.size, space.size, space.channels), jnp.float32)
    labels = jnp.zeros((2,), jnp.int32) if num_classes(config) else None
    g_vars = generator.init(key_g, z, labels=labels, train=False)
    d_vars = discriminator.init(key_d, images, labels=labels, train=False)
    return g_vars, d_vars


def initial_state(config, generator, discriminator, g_tx, d_tx) -> GANState:
    """The state before the first step (a pure function of the config: jit or trace it)."""
    g_vars, d_vars = _init_variables(config, generator, discriminator)

    g_state = TrainState.create(g_vars, g_tx)
    return GANState(
        step=jnp.zeros((), jnp.int32),
        generator=g_state,
        discriminator=TrainState.create(d_vars, d_tx),
        ema_params=g_state.params if config.generator.ema_decay is not None else None,
        collapsed_steps=jnp.zeros((), jnp.int32),
    )


def validate(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Every check that can fail before compiling (raises ConfigError).

    Besides the config checks, this *traces* (does not compile) the init and the
    train step on the real mesh, so any error the norms or models raise for the
    chosen sizes (groups that do not divide the channels, a virtual batch size that
    does not fit the per-device batch, an image side the DCGAN stage plan cannot
    reach) becomes one line here instead of a traceback after minutes of setup.
    """
    gan_checks.check_gan_config(config, jax.device_count())
    config_checks.check_workdir(workdir)
    config_checks.check_resume(config, workdir)
    try:
        data.prepared_builder(config.dataset, data_dir=config.data_dir)
        generator, discriminator = build_networks(config)
        g_tx, d_tx = build_optimizers(config)
        state = jax.eval_shape(lambda: initial_state(config, generator, discriminator, g_tx, d_tx))
        mesh = parallel.data_mesh()
        step = multi_step.make_train_call(
            _step_fn(config, generator, discriminator, g_tx, d_tx),
            mesh,
            steps_per_call=1,
            batch_fn=None,
        )
        native = data.get_spec(config.dataset).image_shape
        batch = {'image': (1, config.batch_size, config.discriminator.steps, *native)}
        if config.conditional:
            batch['label'] = (1, config.batch_size, config.discriminator.steps)
        abstract_batch = {
            k: jax.ShapeDtypeStruct(shape, jnp.float32 if k == 'image' else jnp.int32)
            for k, shape in batch.items()
        }
        jax.eval_shape(step, state, abstract_batch, np.int32(0), np.int32(1))
    except (ValueError, TypeError, data.DatasetNotPreparedError) as e:
        raise config_checks.ConfigError(str(e).strip().splitlines()[0]) from e


def init_state(config, generator, discriminator, g_tx, d_tx, mesh) -> GANState:
    init = functools.partial(initial_state, config, generator, discriminator, g_tx, d_tx)
    return initialize(init, parallel.replicated(mesh))


def _step_fn(config, generator, discriminator, g_tx, d_tx):
    return train_step_fn(
        generator,
        discriminator,
        g_tx,
        d_tx,
        step_options(config),
        global_batch_size=config.batch_size,
        d_loss_floor=collapse_floor(config),
    )


def _real_batches(config, start_step: int):
    """Host batches for one train step: ``discriminator.steps`` real batches stacked on
    axis 1. Unaugmented: a GAN should learn the data, not its augmentations."""
    d_steps = config.discriminator.steps
    batches = data.train_iterator(
        config.dataset,
        global_batch_size=config.batch_size,
        seed=config.seed,
        start_step=start_step * d_steps,
        augment=False,
        data_dir=config.data_dir,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    keys = ('image', 'label') if config.conditional else ('image',)
    while True:
        group = [next(batches) for _ in range(d_steps)]
        yield {k: np.stack([b[k] for b in group], axis=1) for k in keys}


def _resident_batches(config, split: resident.Split, steps_per_call: int) -> dict:
    """The same batches built on the devices: real batch ``step * d_steps + j``."""
    d_steps = config.discriminator.steps
    keys = ('image', 'label') if config.conditional else ('image',)

    def prepare(arrays, seed, first_step):
        plan = resident.epoch_plan(
            seed,
            first_step * d_steps,
            num_batches=steps_per_call * d_steps,
            batch_size=config.batch_size,
            num_examples=split.num_examples,
        )
        return arrays, plan

    def batch_fn(data, seed, step, i):
        del i
        arrays, plan = data
        group = [
            resident.train_batch(
                arrays,
                plan,
                seed,
                step * d_steps + j,
                split=split,
                batch_size=config.batch_size,
                augment=False,
            )
            for j in range(d_steps)
        ]
        return {k: jnp.stack([b[k] for b in group], axis=1) for k in keys}

    return {'batch_fn': batch_fn, 'prepare': prepare}


def _collapse_check(config):
    """The loop's extra divergence rule: a discriminator that stays collapsed."""
    patience = config.divergence.patience_steps
    if patience is None:
        return None

    def check(step: int, row: dict) -> str | None:
        if row['collapsed_steps'] >= patience:
            return (
                f'discriminator collapsed: d_loss < {config.divergence.d_loss_floor:g} for '
                f'{patience} consecutive steps (until step {step})'
            )
        return None

    return check


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains and evaluates a GAN; returns the summary (also in summary.json)."""
    validate(config, workdir)
    mesh = parallel.data_mesh()
    generator, discriminator = build_networks(config)
    g_tx, d_tx = build_optimizers(config)
    state = init_state(config, generator, discriminator, g_tx, d_tx, mesh)
    classifier = load_or_train(
        config.dataset,
        image_size=config.image_size,
        data_dir=config.data_dir,
        cache_dir=config.eval.cache_dir,
        steps=config.eval.classifier_steps,
    )
    on_device = resident.on_device(
        config.dataset,
        config.data_placement,
        budget_mb=config.device_data_mb,
        num_devices=mesh.devices.size,
        data_dir=config.data_dir,
    )
    split = None
    if on_device:
        spec = data.get_spec(config.dataset)
        split = resident.load(config.dataset, spec.train_split, mesh, data_dir=config.data_dir)
    k = multi_step.default_steps_per_call(config, convolutional=True)
    call = multi_step.make_train_call(
        _step_fn(config, generator, discriminator, g_tx, d_tx),
        mesh,
        steps_per_call=k,
        **(_resident_batches(config, split, k) if on_device else {'batch_fn': None}),
    )
    seed = np.int32(config.seed)
    host_batches = None

    def train(state, n):
        nonlocal host_batches
        if on_device:
            return call(state, split.arrays, seed, np.int32(n))
        if host_batches is None:  # opened at the resumed step, on the first call
            host_batches = multi_step.HostBatches(_real_batches(config, int(state.step)), mesh, k)
        return call(state, host_batches.take(n), seed, np.int32(n))

    data_kwargs = dict(
        data_dir=config.data_dir,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    evaluator = GANEvaluator(config, generator, mesh, classifier, data_kwargs)
    is_chief = jax.process_index() == 0

    def evaluate(state, step: int) -> dict:
        metrics, grid = evaluator(state)
        if is_chief:
            save_png(os.path.join(workdir, 'samples', f'step_{step:07d}.png'), grid)
            save_png(os.path.join(workdir, 'samples.png'), grid)
        return {**metrics, 'samples': np.asarray(grid)}

    g_params = optim.count_params(state.generator.params)
    d_params = optim.count_params(state.discriminator.params)
    space = image_space(config)
    d_name = config.discriminator.norm.name
    d_name += '+spectral' if config.discriminator.spectral_norm else ''
    trainer = loop.Trainer(
        state=state,
        total_steps=config.num_train_steps,
        examples_per_step=config.batch_size * config.discriminator.steps,
        steps_per_call=k,
        train=train,
        evaluate=evaluate,
        check=_collapse_check(config),
        progress_metric='train/d_loss',
        description=(
            f'DCGAN on {config.dataset} at {space.size}x{space.size}: G '
            f'{config.generator.norm.name} ({g_params} params), D {d_name} ({d_params} '
            f'params), {config.loss} loss, {config.num_train_steps} steps of '
            f'{config.batch_size} on {jax.device_count()} device(s); feature classifier '
            f'{100 * classifier.test_accuracy:.2f}% accurate'
        ),
        summary=lambda state: {
            'eval/classifier_accuracy': classifier.test_accuracy,
            'feature_classifier': classifier.path,
            'g_params': g_params,
            'd_params': d_params,
        },
    )
    return loop.run(config, workdir, trainer)
