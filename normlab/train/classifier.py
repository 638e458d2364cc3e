"""`train_and_evaluate(config, workdir)` for image classifiers.

The only place that wires data, model, norm, optimizer, mesh, checkpoints
and logging together. A run writes ``config.json``, ``metrics.jsonl``,
``summary.json``, ``checkpoints/`` and its W&B files into `workdir`; calling
it again on the same `workdir` resumes from the newest checkpoint and ends
with the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util
from jax.experimental import multihost_utils

from normlab import data, models, norms, parallel
from normlab.logging import RunFiles, WandbRun
from normlab.train import config_checks, optim
from normlab.train.checkpointing import Checkpointer
from normlab.train.progress import Progress
from normlab.train.steps import (
    TrainState,
    compiler_options,
    make_eval_step,
    make_intermediates_step,
    make_moments_step,
    make_train_step,
)

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


def build_norm(config: ml_collections.ConfigDict) -> norms.ModuleDef:
    """The norm factory: the norm's own options from ``config.norm``, the data axis.

    Options the chosen norm does not take are skipped (logged once), so one
    config can sweep over norms.
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


def num_train_steps(config, *, data_dir=None) -> tuple[int, int]:
    """(total steps, steps per epoch); an explicit num_train_steps always wins."""
    examples = data.num_train_examples(config.dataset, data_dir=data_dir)
    steps_per_epoch = max(examples // config.batch_size, 1)
    if config.num_train_steps is not None:
        return config.num_train_steps, steps_per_epoch
    return max(int(math.ceil(config.num_epochs * steps_per_epoch)), 1), steps_per_epoch


def validate(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Every check that can fail before compiling (raises ConfigError)."""
    config_checks.check_classifier_config(config, jax.device_count())
    config_checks.check_workdir(workdir)
    config_checks.check_resume(config, workdir)
    try:
        spec = data.get_spec(config.dataset)
        model = build_model(config, spec.num_classes)
        # Tracing init (no compile) surfaces shape errors: groups vs channels,
        # images too small for the model.
        dummy = jax.ShapeDtypeStruct((2, *spec.image_shape), jnp.float32)
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), dummy)
        data.prepared_builder(config.dataset, data_dir=config.data_dir)
    except (ValueError, TypeError, data.DatasetNotPreparedError) as e:
        raise config_checks.ConfigError(str(e)) from e


def _pad_with_real_rows(batch: dict) -> dict:
    """Replaces padding rows by copies of real ones so batch statistics stay clean."""
    mask = batch['mask'] > 0
    if mask.all() or not mask.any():
        return batch
    real = np.flatnonzero(mask)
    fill = real[np.arange((~mask).sum()) % len(real)]
    out = {k: v.copy() for k, v in batch.items()}
    for k in ('image', 'label'):
        out[k][~mask] = batch[k][fill]
    return out


class Evaluator:
    """Evaluation of the current state in each of ``config.eval_modes``."""

    def __init__(self, config, model, mesh, data_kwargs):
        self.config, self.model, self.mesh, self.data_kwargs = config, model, mesh, data_kwargs
        self.modes = config_checks.eval_modes(config)
        self.running = make_eval_step(model, mesh)
        self.batch = make_eval_step(model, mesh, batch_statistics=True)
        self.moments = make_moments_step(model, mesh)
        self.intermediates = make_intermediates_step(model, mesh)

    def preactivation_percentiles(self, variables) -> dict:
        """15/50/85th percentiles of each sown pre-activation on the first eval batch:
        pooled over all of a layer's units (``preact3/p50``) and of its first unit
        alone (``preact3/unit0/p50``), the one-sigmoid view of Ioffe & Szegedy's Fig. 1."""
        local = next(
            data.eval_iterator(
                self.config.dataset,
                global_batch_size=self.config.eval_batch_size,
                **self.data_kwargs,
            )
        )
        batch = parallel.global_batch(self.mesh, local)
        sown = traverse_util.flatten_dict(self.intermediates(variables, batch['image']), sep='/')
        real = np.asarray(jax.device_get(batch['mask'])) > 0
        out = {}
        for name, values in sown.items():
            values = np.asarray(jax.device_get(values))[real]
            unit0 = values.reshape(len(values), -1)[:, 0]
            for q in (15, 50, 85):
                out[f'{name}/p{q}'] = float(np.percentile(values, q))
                out[f'{name}/unit0/p{q}'] = float(np.percentile(unit0, q))
        return out

    def _pass(self, step_fn, variables, batch_size, *, fill_padding=False, split=None):
        totals = np.zeros(3)
        for local in data.eval_iterator(
            self.config.dataset, global_batch_size=batch_size, split=split, **self.data_kwargs
        ):
            if fill_padding:
                local = _pad_with_real_rows(local)
            batch = parallel.global_batch(self.mesh, local)
            totals += np.asarray(jax.device_get(step_fn(variables, batch)))
        loss, correct, count = totals
        return {'loss': loss / count, 'error': 1.0 - correct / count, 'examples': int(count)}

    def precise_stats(self, variables):
        batches = (
            parallel.global_batch(self.mesh, b)['image']
            for b in data.train_iterator(
                self.config.dataset,
                global_batch_size=self.config.batch_size,
                seed=self.config.seed + 1,
                augment=self.config.augment,
                **self.data_kwargs,
            )
        )
        return norms.recompute_batch_stats(
            self.model,
            variables,
            batches,
            num_batches=self.config.precise_bn_batches,
            moments_fn=self.moments,
        )

    def _evaluate(self, mode, variables, split=None) -> dict:
        """Loss, error and example count on `split` (None: the eval split) in `mode`."""
        if mode == 'running' or 'batch_stats' not in variables:
            return self._pass(self.running, variables, self.config.eval_batch_size, split=split)
        if mode == 'batch':
            # Batches of the training size, as the norms saw in training.
            return self._pass(
                self.batch, variables, self.config.batch_size, fill_padding=True, split=split
            )
        stats = parallel.replicate(self.mesh, self.precise_stats(variables))
        variables = {**variables, 'batch_stats': stats}
        return self._pass(self.running, variables, self.config.eval_batch_size, split=split)

    def __call__(self, state: TrainState) -> dict:
        variables = state.variables()
        out = {}
        passes = [(f'eval_{m}' if i else 'eval', m, None) for i, m in enumerate(self.modes)]
        if self.config.eval_train_split:  # the train split, as the headline mode sees it
            train_split = data.get_spec(self.config.dataset).train_split
            passes.append(('eval_train', self.modes[0], train_split))
        for prefix, mode, split in passes:
            r = self._evaluate(mode, variables, split)
            out[f'{prefix}/loss'] = r['loss']
            out[f'{prefix}/error'] = r['error']
            out[f'{prefix}/examples'] = r['examples']
        if self.config.record_preactivations:
            out.update(self.preactivation_percentiles(variables))
        return out


def init_state(config, model, tx, mesh, image_shape) -> TrainState:
    dummy = jnp.zeros((2, *image_shape), jnp.float32)

    # Created replicated across every process's devices, not put there afterwards:
    # `device_put` of a host value onto a multi-process mesh runs a cross-process
    # all-gather of the whole state to check that every process holds the same one.
    @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
    def init(key_data):  # an argument, so every seed shares one executable
        # XLA:CPU takes ~10x longer to compile threefry than rbg for a model's init.
        key = jax.random.wrap_key_data(key_data, impl='rbg')
        variables = model.init(key, dummy, train=False)
        params = variables.pop('params')
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            model_state=dict(variables),
        )

    key_data = np.asarray(jax.random.key_data(jax.random.key(config.seed, impl='rbg')))
    if jax.process_count() > 1:  # the one thing that must agree: the seed, checked cheaply
        multihost_utils.assert_equal(key_data, f'seed={config.seed} differs between processes')
    return init(key_data)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains and evaluates a classifier; returns the summary (also in summary.json)."""
    t_start = time.perf_counter()
    validate(config, workdir)
    mesh = parallel.data_mesh()
    spec = data.get_spec(config.dataset)
    data_kwargs = dict(
        data_dir=config.data_dir,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    total_steps, steps_per_epoch = num_train_steps(config, data_dir=config.data_dir)
    model = build_model(config, spec.num_classes)
    lr_fn = optim.schedule(config, total_steps, steps_per_epoch)
    tx = optim.make_optimizer(config, lr_fn)
    state = init_state(config, model, tx, mesh, spec.image_shape)

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
    wandb_run = WandbRun(config, workdir)
    logging.info(
        '%s on %s, norm %s: %d params, %d steps of %d on %d device(s), W&B %s',
        config.model,
        config.dataset,
        config.norm.name,
        optim.count_params(state.params),
        total_steps,
        config.batch_size,
        jax.device_count(),
        wandb_run.mode,
    )

    train_step = make_train_step(
        model,
        tx,
        mesh,
        lr_fn,
        options=compiler_options(config),
        record_grad_norms=config.record_grad_norms,
    )
    evaluate = Evaluator(config, model, mesh, data_kwargs)
    train_batches = data.train_iterator(
        config.dataset,
        global_batch_size=config.batch_size,
        seed=config.seed,
        start_step=start_step,
        augment=config.augment,
        **data_kwargs,
    )
    progress = Progress(total_steps, start_step, config.batch_size, enabled=is_chief)
    pending: list[tuple[int, dict]] = []
    last_train: dict = {}
    compile_s = float('nan')

    def flush(step: int) -> None:
        """Fetches the pending metrics; stops at the first non-finite loss."""
        nonlocal last_train
        if not pending:
            return
        rows = jax.device_get(pending)
        pending.clear()
        for s, m in rows:
            if not np.isfinite(m['train/loss']):
                raise NonFiniteLossError(
                    f'non-finite training loss ({m["train/loss"]}) at step {s}; the last good '
                    f'checkpoint is kept in {workdir}/checkpoints'
                )
        window = {k: float(np.mean([m[k] for _, m in rows])) for k in rows[-1][1]}
        window['train/lr'] = float(rows[-1][1]['train/lr'])
        last_train = window
        if is_chief:
            files.log_metrics(step, window)
            wandb_run.log(window, step)
        progress.update(step, window['train/loss'])

    def evaluate_and_log(step: int) -> None:
        row = evaluate(state)
        if is_chief:
            files.log_metrics(step, row)
            wandb_run.log(row, step)

    eval_steps = set(config.eval_steps)
    step = start_step
    if start_step == 0 and 0 in eval_steps:
        evaluate_and_log(0)  # the initial weights
    try:
        for step in range(start_step + 1, total_steps + 1):
            batch = parallel.global_batch(mesh, next(train_batches))
            state, metrics = train_step(state, batch)
            pending.append((step, metrics))
            if step == start_step + 1:
                jax.block_until_ready(state)
                compile_s = time.perf_counter() - t_start
                progress.started(step)
            # With record_grad_norms the first step (the initial weights' gradients)
            # is logged alone.
            first = step == 1 and config.record_grad_norms
            if step % config.log_every_steps == 0 or step == total_steps or first:
                flush(step)
            if step % config.checkpoint_every_steps == 0 and step < total_steps:
                flush(step)
                ckpt.save(step, state)
            periodic = config.eval_every_steps and step % config.eval_every_steps == 0
            if periodic or step in eval_steps:
                flush(step)
                evaluate_and_log(step)
        flush(step)
    except NonFiniteLossError:
        progress.close()
        if is_chief:
            files.write_summary({'status': 'diverged', 'steps': step})
        ckpt.close()
        wandb_run.finish(exit_code=1)
        raise
    progress.close()
    train_end = time.perf_counter()
    if step > start_step or ckpt.latest_step() != total_steps:
        ckpt.save(total_steps, state)
    ckpt.close()

    results = evaluate(state)
    if not last_train:  # resumed at the final checkpoint: reuse the logged window
        rows = [r for r in files.read_metrics() if 'train/loss' in r]
        last_train = {k: v for k, v in rows[-1].items() if k != 'step'} if rows else {}
    summary = {
        'status': 'finished',
        'steps': total_steps,
        **last_train,
        **results,
        'params': optim.count_params(state.params),
        'wall_s': time.perf_counter() - t_start,
        'compile_s': compile_s,
        'examples_per_s': progress.examples_per_s(step) if step > start_step else float('nan'),
        'train_s': train_end - t_start,
    }
    if is_chief:
        files.log_metrics(total_steps, results)
        files.write_summary(summary)
        wandb_run.log(results, total_steps)
        wandb_run.summary(summary)
    wandb_run.finish()
    logging.info(
        'done: eval error %.4f after %d steps in %.1f s',
        summary['eval/error'],
        total_steps,
        summary['wall_s'],
    )
    return summary
