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
* One train step (`normlab.train.gan_steps`) = ``discriminator.steps`` D updates and
  one G update, under `jax.shard_map` over the ``data`` axis, reductions inside.
* Evaluation (`normlab.train.gan_eval`) every ``eval_every_steps`` and at the end:
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
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from normlab import data, models, parallel
from normlab.logging import RunFiles, WandbRun
from normlab.train import config_checks, gan_config_checks, optim
from normlab.train.checkpointing import Checkpointer
from normlab.train.classifier import DTYPES, build_norm
from normlab.train.feature_classifier import load_or_train
from normlab.train.gan_eval import GANEvaluator
from normlab.train.gan_images import ImageSpace, save_png
from normlab.train.gan_losses import get_loss
from normlab.train.gan_steps import GANState, StepOptions, make_train_step
from normlab.train.init_compile import run_init
from normlab.train.progress import Progress
from normlab.train.steps import TrainState


class Diverged(Exception):
    """Raised inside the loop when the run diverges; reported in the summary."""


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

    def train_state(variables, tx):
        variables = dict(variables)
        params = variables.pop('params')
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            model_state=variables,
        )

    g_state = train_state(g_vars, g_tx)
    return GANState(
        step=jnp.zeros((), jnp.int32),
        generator=g_state,
        discriminator=train_state(d_vars, d_tx),
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
    gan_config_checks.check_gan_config(config, jax.device_count())
    config_checks.check_workdir(workdir)
    gan_config_checks.check_gan_resume(config, workdir)
    try:
        data.prepared_builder(config.dataset, data_dir=config.data_dir)
        generator, discriminator = build_networks(config)
        g_tx, d_tx = build_optimizers(config)
        state = jax.eval_shape(lambda: initial_state(config, generator, discriminator, g_tx, d_tx))
        mesh = parallel.data_mesh()
        step = make_train_step(generator, discriminator, g_tx, d_tx, mesh, step_options(config))
        native = data.get_spec(config.dataset).image_shape
        batch = {'image': (config.batch_size, config.discriminator.steps, *native)}
        if config.conditional:
            batch['label'] = (config.batch_size, config.discriminator.steps)
        abstract_batch = {
            k: jax.ShapeDtypeStruct(shape, jnp.float32 if k == 'image' else jnp.int32)
            for k, shape in batch.items()
        }
        jax.eval_shape(step, state, abstract_batch, 0.0)
    except (ValueError, TypeError, data.DatasetNotPreparedError) as e:
        raise config_checks.ConfigError(str(e).strip().splitlines()[0]) from e


def init_state(config, generator, discriminator, g_tx, d_tx, mesh) -> GANState:
    init = functools.partial(initial_state, config, generator, discriminator, g_tx, d_tx)
    return run_init(init, parallel.replicated(mesh))


def _real_batches(config, start_step: int, data_kwargs: dict):
    """Host batches for one train step: ``discriminator.steps`` real batches stacked on
    axis 1. Unaugmented: a GAN should learn the data, not its augmentations."""
    d_steps = config.discriminator.steps
    batches = data.train_iterator(
        config.dataset,
        global_batch_size=config.batch_size,
        seed=config.seed,
        start_step=start_step * d_steps,
        augment=False,
        **data_kwargs,
    )
    keys = ('image', 'label') if config.conditional else ('image',)
    while True:
        group = [next(batches) for _ in range(d_steps)]
        yield {k: np.stack([b[k] for b in group], axis=1) for k in keys}


def _is_finite(tree) -> bool:
    # On the host: eager jnp ops would compile one tiny program per leaf shape.
    return all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(tree)))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains and evaluates a GAN; returns the summary (also in summary.json)."""
    t_start = time.perf_counter()
    validate(config, workdir)
    mesh = parallel.data_mesh()
    data_kwargs = dict(
        data_dir=config.data_dir,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    total_steps = config.num_train_steps
    generator, discriminator = build_networks(config)
    g_tx, d_tx = build_optimizers(config)
    state = init_state(config, generator, discriminator, g_tx, d_tx, mesh)

    is_chief = jax.process_index() == 0
    files = RunFiles(workdir)
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
    start_step = 0
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state)
        start_step = int(state.step)
        logging.info('resumed from the checkpoint at step %d', start_step)
    if is_chief:
        files.write_config(config)
        files.truncate_metrics(start_step)
    classifier = load_or_train(
        config.dataset,
        image_size=config.image_size,
        data_dir=config.data_dir,
        cache_dir=config.eval.cache_dir,
        steps=config.eval.classifier_steps,
    )
    wandb_run = WandbRun(config, workdir)
    g_params = optim.count_params(state.generator.params)
    d_params = optim.count_params(state.discriminator.params)
    logging.info(
        'DCGAN on %s at %dx%d: G %s (%d params), D %s%s (%d params), %s loss, %d steps of %d '
        'on %d device(s); feature classifier %.2f%% accurate; W&B %s',
        config.dataset,
        image_space(config).size,
        image_space(config).size,
        config.generator.norm.name,
        g_params,
        config.discriminator.norm.name,
        '+spectral' if config.discriminator.spectral_norm else '',
        d_params,
        config.loss,
        total_steps,
        config.batch_size,
        jax.device_count(),
        100 * classifier.test_accuracy,
        wandb_run.mode,
    )

    train_step = make_train_step(generator, discriminator, g_tx, d_tx, mesh, step_options(config))
    d_loss_floor = collapse_floor(config)
    evaluator = GANEvaluator(config, generator, mesh, classifier, data_kwargs)
    batches = _real_batches(config, start_step, data_kwargs)
    progress = Progress(
        total_steps, start_step, config.batch_size * config.discriminator.steps, enabled=is_chief
    )
    pending: list[tuple[int, dict]] = []
    last_train: dict = {}
    compile_s = float('nan')
    patience = config.divergence.patience_steps

    def flush(step: int) -> None:
        """Fetches the pending metrics; raises Diverged on a non-finite loss or a
        collapsed discriminator."""
        nonlocal last_train
        if not pending:
            return
        rows = jax.device_get(pending)
        pending.clear()
        window = {
            k: float(np.mean([m[k] for _, m in rows]))
            for k in rows[-1][1]
            if k.startswith('train/')
        }
        last_train = window
        # Logged before the checks: the curves show what the divergence looked like.
        if is_chief:
            files.log_metrics(step, window)
            wandb_run.log(window, step)
        progress.update(step, window['train/d_loss'])
        for s, m in rows:
            for key in ('train/d_loss', 'train/g_loss'):
                if not np.isfinite(m[key]):
                    raise Diverged(f'non-finite {key.split("/")[1]} ({m[key]}) at step {s}', s)
            if patience is not None and m['collapsed_steps'] >= patience:
                raise Diverged(
                    f'discriminator collapsed: d_loss < {config.divergence.d_loss_floor:g} for '
                    f'{patience} consecutive steps (until step {s})',
                    s,
                )

    last_eval: tuple[int, dict] = (-1, {})

    def evaluate(step: int) -> dict:
        nonlocal last_eval
        if last_eval[0] == step:
            return last_eval[1]
        metrics, grid = evaluator(state)
        last_eval = (step, metrics)
        if is_chief:
            path = os.path.join(workdir, 'samples', f'step_{step:07d}.png')
            save_png(path, grid)
            save_png(os.path.join(workdir, 'samples.png'), grid)
            files.log_metrics(step, metrics)
            wandb_run.log(metrics, step)
            wandb_run.log_images({'samples': grid}, step)
        return metrics

    status, reason, diverged_at = 'finished', None, None
    step = start_step
    try:
        for step in range(start_step + 1, total_steps + 1):
            batch = parallel.global_batch(mesh, next(batches))
            state, metrics = train_step(state, batch, d_loss_floor)
            pending.append((step, metrics))
            if step == start_step + 1:
                jax.block_until_ready(state)
                compile_s = time.perf_counter() - t_start
                progress.started(step)
            if step % config.log_every_steps == 0 or step == total_steps:
                flush(step)
            if step % config.checkpoint_every_steps == 0 and step < total_steps:
                flush(step)
                ckpt.save(step, state)
            if config.eval_every_steps and step % config.eval_every_steps == 0:
                flush(step)
                evaluate(step)
        flush(step)
    except Diverged as e:
        status, reason, diverged_at = 'diverged', e.args[0], e.args[1]
        logging.warning('run diverged: %s', reason)
    progress.close()
    train_end = time.perf_counter()
    if status == 'finished' and (step > start_step or ckpt.latest_step() != total_steps):
        ckpt.save(total_steps, state)
    ckpt.close()

    final_step = total_steps if status == 'finished' else step  # the state's step
    finite = _is_finite(state.eval_generator_variables()['params'])
    results = evaluate(final_step) if finite else {}
    summary = {
        'status': status,
        'steps': final_step,
        **last_train,
        **results,
        'eval/classifier_accuracy': classifier.test_accuracy,
        'feature_classifier': classifier.path,
        'g_params': g_params,
        'd_params': d_params,
        'wall_s': time.perf_counter() - t_start,
        'compile_s': compile_s,
        'examples_per_s': progress.examples_per_s(step) if step > start_step else float('nan'),
        'train_s': train_end - t_start,
    }
    if status == 'diverged':
        summary['reason'] = reason
        summary['diverged_at_step'] = diverged_at
    if is_chief:
        files.write_summary(summary)
        wandb_run.summary(summary)
    wandb_run.finish(exit_code=0 if status == 'finished' else 1)
    logging.info(
        '%s after %d steps in %.1f s: Frechet distance %s (floor %s), label entropy %s',
        status,
        final_step,
        summary['wall_s'],
        results.get('eval/frechet_distance'),
        results.get('eval/frechet_floor'),
        results.get('eval/label_entropy'),
    )
    return summary
