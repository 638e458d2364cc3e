"""The one training loop every trainer runs: resume, cadence, files, W&B, divergence.

A trainer (`normlab.train.classifier`, `normlab.train.gan`) builds a `Trainer`:
its initial state, a ``train(state, n)`` call that runs ``n`` steps in one
dispatch and returns their metrics stacked, an ``evaluate(state, step)`` and,
optionally, its own divergence rule. `run` does the rest, the same way for all:

- **resume**: the newest checkpoint is restored and ``metrics.jsonl`` cut back to
  it, so a run killed at any moment (SIGKILL included) ends with the numbers of
  an uninterrupted one; a run whose ``summary.json`` says finished is reported
  and left untouched.
- **cadence**: a call never crosses a logging, checkpoint or evaluation step
  (``log_every_steps``, ``checkpoint_every_steps``, ``eval_every_steps``,
  ``eval_steps``; ``0`` in ``eval_steps`` evaluates the initial weights), so the
  files hold the same rows and numbers whatever ``steps_per_call`` is. Metrics stay
  on the device until a logging step, so a call costs no host round-trip.
- **divergence**: every step reports whether its loss and gradients are finite,
  and every call whether the whole state (parameters, optimizer state, batch
  statistics) is (`normlab.train.steps.scan_steps`). At the next flush the run
  stops with `DivergedError` naming the first bad step and the last checkpoint that
  exists; ``summary.json`` says ``diverged`` with that step (and the evaluation of
  the last good state when it is still there); the launcher exits 3.
- only process 0 writes files and logs to W&B.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging

from normlab.logging import RunFiles, WandbRun
from normlab.train.checkpointing import Checkpointer
from normlab.train.config_checks import ConfigError
from normlab.train.progress import Progress

# Per-step flag every train call returns next to its metrics (not logged).
FINITE = 'finite'


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says where the run stopped."""


class DivergedError(RuntimeError):
    """Training became non-finite (or hit a trainer's own divergence rule)."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


@dataclasses.dataclass
class Trainer:
    """What a trainer hands the loop.

    Attributes:
      state: the initial state (a pytree with an int ``step``), replicated; after
        `run` the final one.
      total_steps: steps to train.
      examples_per_step: for the throughput figure.
      steps_per_call: most steps one ``train`` call runs.
      train: ``(state, n) -> (state, metrics)``: runs ``n <= steps_per_call`` steps
        from ``state.step`` in one dispatch; ``metrics`` maps names to arrays of
        ``steps_per_call`` rows (rows past ``n`` are ignored) and holds `FINITE`.
      evaluate: ``(state, step) -> metrics``; numpy arrays among them are images,
        logged to W&B only; it may write its own files (samples).
      check: ``(step, row) -> reason or None``: a trainer's own divergence rule on
        one step's metrics (e.g. a collapsed GAN discriminator).
      progress_metric: the metric the progress line shows.
      description: the run's one-line description for the log.
      summary: ``state -> dict`` of extra summary entries (parameter counts, ...).
    """

    state: Any
    total_steps: int
    examples_per_step: int
    steps_per_call: int
    train: Callable[[Any, int], tuple[Any, dict]]
    evaluate: Callable[[Any, int], dict]
    check: Callable[[int, dict], str | None] | None = None
    progress_metric: str = 'train/loss'
    description: str = ''
    summary: Callable[[Any], dict] | None = None


def _is_event(step: int, every: int | None) -> bool:
    return every is not None and step % every == 0


def _next_boundary(step: int, config, total: int) -> int:
    """The first step after `step` at which something is logged, saved or evaluated."""
    candidates = [total]
    for every in (config.log_every_steps, config.checkpoint_every_steps, config.eval_every_steps):
        if every is not None:
            candidates.append((step // every + 1) * every)
    candidates += [s for s in config.eval_steps if s > step]
    return min(candidates)


class _Flusher:
    """Metrics of finished calls, fetched from the devices only when logged."""

    def __init__(self, trainer: Trainer, files, wandb_run, progress, is_chief):
        self.trainer, self.files, self.wandb_run = trainer, files, wandb_run
        self.progress, self.is_chief = progress, is_chief
        self.pending: list[tuple[int, int, dict]] = []  # (first step, n, stacked metrics)
        self.last_window: dict = {}

    def add(self, first: int, n: int, metrics: dict) -> None:
        self.pending.append((first, n, metrics))

    def __call__(self, step: int) -> None:
        """Logs the mean of the pending steps at `step`; raises DivergedError on the
        first bad step (after logging the steps up to it, so the curves show it)."""
        if not self.pending:
            return
        fetched = jax.device_get([m for _, _, m in self.pending])
        rows = []
        for (first, n, _), metrics in zip(self.pending, fetched, strict=True):
            for i in range(n):
                rows.append((first + i + 1, {k: v[i] for k, v in metrics.items()}))
        self.pending.clear()
        bad = None
        for s, row in rows:
            reason = None
            if not row[FINITE]:
                reason = 'training became non-finite (loss, gradients, parameters, optimizer state '
                reason += f'or batch statistics; loss {float(row[self.trainer.progress_metric])})'
            elif self.trainer.check is not None:
                reason = self.trainer.check(s, row)
            if reason:
                bad = (s, reason)
                rows = [(t, r) for t, r in rows if t <= s]
                break
        keys = [k for k in rows[-1][1] if k != FINITE and not k.startswith('_')]
        window = {k: float(np.mean([r[k] for _, r in rows])) for k in keys}
        if 'train/lr' in window:
            window['train/lr'] = float(rows[-1][1]['train/lr'])
        self.last_window = window
        logged_at = rows[-1][0]
        if self.is_chief:
            self.files.log_metrics(logged_at, window)
            self.wandb_run.log(window, logged_at)
        self.progress.update(logged_at, window.get(self.trainer.progress_metric, math.nan))
        if bad is not None:
            raise DivergedError(bad[1], bad[0])


@contextlib.contextmanager
def owned(workdir: str):
    """Holds `workdir` for one run: a second run on it fails at once.

    An advisory lock (``flock``) on ``workdir/.lock``, held by process 0 of a run; the
    kernel releases it when the process dies, so a killed run never leaves it stuck.
    """
    if jax.process_index() != 0:
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, '.lock'), 'a+') as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or 'another process'
            raise ConfigError(
                f'workdir={workdir!r} is in use by another run ({holder}); wait for it or '
                'use another workdir'
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f'pid {os.getpid()} on {socket.gethostname()}')
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run(config, workdir: str, trainer: Trainer) -> dict:
    """Trains `trainer` in `workdir` as ``config`` says; returns the summary."""
    with owned(workdir):
        return _run(config, workdir, trainer)


def _run(config, workdir: str, trainer: Trainer) -> dict:
    t_start = time.perf_counter()
    is_chief = jax.process_index() == 0
    files = RunFiles(workdir)
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
    total = trainer.total_steps
    previous = files.read_summary()
    if previous and previous.get('status') == 'finished' and ckpt.latest_step() == total:
        logging.info('%s already finished (summary.json); nothing to do', workdir)
        ckpt.close()
        return previous
    state, start = trainer.state, 0
    restored = ckpt.restore(state) if ckpt.latest_step() is not None else None
    if restored is not None:
        state, start = restored, int(restored.step)
        logging.info('resumed from the checkpoint at step %d', start)
    if is_chief:
        files.write_config(config)
        files.truncate_metrics(start)
    wandb_run = WandbRun(config, workdir)
    logging.info('%s; W&B %s', trainer.description, wandb_run.mode)

    progress = Progress(total, start, trainer.examples_per_step, enabled=is_chief)
    flush = _Flusher(trainer, files, wandb_run, progress, is_chief)
    last_eval: dict = {}

    def evaluate(step: int) -> dict:
        nonlocal last_eval
        out = trainer.evaluate(state, step)
        # Arrays are images (a GAN's samples): W&B shows them; files get the numbers.
        images = {k: v for k, v in out.items() if isinstance(v, np.ndarray)}
        row = {k: v for k, v in out.items() if k not in images}
        last_eval = {'step': step, **row}
        if is_chief:
            files.log_metrics(step, row)
            wandb_run.log(row, step)
            if images:
                wandb_run.log_images(images, step)
        return row

    step, compile_s = start, math.nan
    try:
        if start == 0 and 0 in config.eval_steps:
            evaluate(0)
        while step < total:
            n = min(trainer.steps_per_call, _next_boundary(step, config, total) - step)
            state, metrics = trainer.train(state, n)
            flush.add(step, n, metrics)
            if step == start:  # the first call compiled
                jax.block_until_ready(state)
                compile_s = time.perf_counter() - t_start
                progress.started(step + n)
            step += n
            if _is_event(step, config.log_every_steps) or step == total:
                flush(step)
            if _is_event(step, config.checkpoint_every_steps) and step < total:
                flush(step)
                ckpt.save(step, state)
            if _is_event(step, config.eval_every_steps) or step in config.eval_steps:
                flush(step)
                evaluate(step)
        flush(step)
    except KeyboardInterrupt:
        progress.close()
        ckpt.close()
        kept = ckpt.latest_step()
        wandb_run.finish(exit_code=130)
        resume = f'the checkpoint at step {kept}' if kept is not None else 'the start'
        raise Interrupted(
            f'interrupted during step {step + 1} of {total}; run the same command again to '
            f'resume from {resume}'
        ) from None
    except DivergedError as e:
        progress.close()
        kept = ckpt.latest_step()
        where = (
            f'the last good checkpoint (step {kept}) is kept in {ckpt.directory}'
            if kept is not None
            else 'no checkpoint had been written yet'
        )
        message = f'run diverged at step {e.step}: {e}; {where}'
        logging.warning('%s', message)
        # With one step per call the state is the last good one: evaluate it.
        results = {}
        if _finite_on_host(state):
            out = trainer.evaluate(state, e.step - 1)
            results = {k: v for k, v in out.items() if not isinstance(v, np.ndarray)}
        if is_chief:
            files.write_summary(
                {
                    'status': 'diverged',
                    'steps': e.step,
                    'reason': str(e),
                    'checkpoint': kept,
                    **results,
                }
            )
        ckpt.close()
        wandb_run.finish(exit_code=1)
        raise DivergedError(message, e.step) from None
    progress.close()
    trainer.state = state
    train_end = time.perf_counter()
    if step > start or ckpt.latest_step() != total:
        ckpt.save(total, state)
    ckpt.close()

    results = last_eval if last_eval.get('step') == total else {}
    results = {k: v for k, v in results.items() if k != 'step'} or evaluate(total)
    last_train = flush.last_window or _last_logged_train(files)
    summary = {
        'status': 'finished',
        'steps': total,
        **last_train,
        **results,
        **(trainer.summary(state) if trainer.summary else {}),
        'wall_s': time.perf_counter() - t_start,
        'compile_s': compile_s,
        'examples_per_s': progress.examples_per_s(step) if step > start else math.nan,
        'train_s': train_end - t_start,
    }
    if is_chief:
        files.write_summary(summary)
        wandb_run.summary(summary)
    wandb_run.finish()
    logging.info('done: %d steps in %.1f s', total, summary['wall_s'])
    return summary


def _finite_on_host(tree) -> bool:
    # On the host: eager jnp ops would compile one small program per leaf shape.
    leaves = jax.device_get(jax.tree.leaves(tree))
    return all(np.isfinite(x).all() for x in leaves if np.issubdtype(x.dtype, np.inexact))


def _last_logged_train(files: RunFiles) -> dict:
    """Resumed at the final checkpoint: the last logged training window."""
    rows = [r for r in files.read_metrics() if any(k.startswith('train/') for k in r)]
    return {k: v for k, v in rows[-1].items() if k != 'step'} if rows else {}
