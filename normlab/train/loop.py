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
- **bundles** (`run_bundle`): runs that differ only in their seed train as one
  program with a leading run axis; each keeps its own work directory, lock, files,
  checkpoints (its solo state: it resumes alone) and W&B run, and a run that
  diverges is stopped and reported alone while the others go on.
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
        logged to W&B only; it may write its own files (samples). A bundle's is a list,
        one per run, each called with that run's own state.
      check: ``(step, row) -> reason or None``: a trainer's own divergence rule on
        one step's metrics (e.g. a collapsed GAN discriminator).
      progress_metric: the metric the progress line shows.
      description: the run's one-line description for the log.
      summary: ``state -> dict`` of extra summary entries (parameter counts, ...).
      runs: a bundle's number of runs: ``state`` and every metric then carry a leading
        run axis (`run_bundle`); None for one solo run.
    """

    state: Any
    total_steps: int
    examples_per_step: int
    steps_per_call: int
    train: Callable[[Any, int], tuple[Any, dict]]
    evaluate: Callable[[Any, int], dict] | list[Callable[[Any, int], dict]]
    check: Callable[[int, dict], str | None] | None = None
    progress_metric: str = 'train/loss'
    description: str = ''
    summary: Callable[[Any], dict] | None = None
    runs: int | None = None


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


def _window(trainer: Trainer, rows: list[tuple[int, dict]]):
    """``(window, logged_at, bad)`` of one run's fetched rows: the mean of the steps up to
    the first bad one (so the curves show it), and ``(step, reason)`` of that step."""
    bad = None
    for s, row in rows:
        reason = None
        if not row[FINITE]:
            reason = 'training became non-finite (loss, gradients, parameters, optimizer state '
            reason += f'or batch statistics; loss {float(row[trainer.progress_metric])})'
        elif trainer.check is not None:
            reason = trainer.check(s, row)
        if reason:
            bad = (s, reason)
            rows = [(t, r) for t, r in rows if t <= s]
            break
    keys = [k for k in rows[-1][1] if k != FINITE and not k.startswith('_')]
    window = {k: float(np.mean([r[k] for _, r in rows])) for k in keys}
    if 'train/lr' in window:
        window['train/lr'] = float(rows[-1][1]['train/lr'])
    return window, rows[-1][0], bad


@dataclasses.dataclass
class _Member:
    """One run of a bundle (the only one of a solo run): its files, checkpoints, W&B."""

    index: int
    config: Any
    workdir: str
    files: RunFiles
    ckpt: Checkpointer
    wandb_run: Any = None
    last_window: dict = dataclasses.field(default_factory=dict)
    last_eval: dict = dataclasses.field(default_factory=dict)
    outcome: Any = None  # the summary, or the DivergedError, once the run has ended


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
    (outcome,) = run_bundle([config], [workdir], trainer)
    if isinstance(outcome, DivergedError):
        raise outcome
    return outcome


def run_bundle(configs, workdirs, trainer: Trainer) -> list:
    """Trains the runs of a bundle (``trainer.runs`` of them, a leading axis of its state
    and metrics; None: one solo run) in their own `workdirs`; returns per run its summary
    or its `DivergedError`. A run that diverges stops alone; the others go on."""
    with contextlib.ExitStack() as stack:
        for workdir in workdirs:
            stack.enter_context(owned(workdir))
        return _run(configs, workdirs, trainer)


def _take(trainer: Trainer, tree, r: int):
    """Run `r`'s part of a bundle's state or metrics (a solo run's is all of it)."""
    return tree if trainer.runs is None else jax.tree.map(lambda x: x[r], tree)


def _run(configs, workdirs, trainer: Trainer) -> list:
    t_start = time.perf_counter()
    is_chief = jax.process_index() == 0
    config = configs[0]  # a bundle's runs share every key but seed and bookkeeping
    members = [
        _Member(r, c, w, RunFiles(w), Checkpointer(w, keep=c.keep_checkpoints))
        for r, (c, w) in enumerate(zip(configs, workdirs, strict=True))
    ]
    total = trainer.total_steps
    state, start = trainer.state, 0
    if trainer.runs is None:
        (m,) = members
        previous = m.files.read_summary()
        if previous and previous.get('status') == 'finished' and m.ckpt.latest_step() == total:
            logging.info('%s already finished (summary.json); nothing to do', m.workdir)
            m.ckpt.close()
            return [previous]
        restored = m.ckpt.restore(state) if m.ckpt.latest_step() is not None else None
        if restored is not None:
            state, start = restored, int(restored.step)
            logging.info('resumed from the checkpoint at step %d', start)
    else:
        resumable = [m for m in members if m.ckpt.latest_step() is not None]
        if resumable:
            for m in members:
                m.ckpt.close()
            raise ConfigError(
                f'{resumable[0].workdir} has a checkpoint: only fresh runs train in a bundle; '
                'resume it alone'
            )
    for m in members:
        if is_chief:
            m.files.write_config(m.config)
            m.files.truncate_metrics(start)
        m.wandb_run = WandbRun(m.config, m.workdir)
    logging.info('%s; W&B %s', trainer.description, members[0].wandb_run.mode)

    progress = Progress(total, start, trainer.examples_per_step, enabled=is_chief)
    pending: list[tuple[int, int, dict]] = []  # (first step, n, stacked metrics)
    live = lambda: [m for m in members if m.outcome is None]  # noqa: E731

    def evaluator_of(m: _Member) -> Callable[[Any, int], dict]:
        return trainer.evaluate if trainer.runs is None else trainer.evaluate[m.index]

    def evaluate_member(m: _Member, step: int) -> dict:
        out = evaluator_of(m)(_take(trainer, state, m.index), step)
        # Arrays are images (a GAN's samples): W&B shows them; files get the numbers.
        images = {k: v for k, v in out.items() if isinstance(v, np.ndarray)}
        row = {k: v for k, v in out.items() if k not in images}
        m.last_eval = {'step': step, **row}
        if is_chief:
            m.files.log_metrics(step, row)
            m.wandb_run.log(row, step)
            if images:
                m.wandb_run.log_images(images, step)
        return row

    def evaluate(step: int) -> None:
        for m in live():
            evaluate_member(m, step)

    def diverge(m: _Member, bad_step: int, reason: str) -> None:
        kept = m.ckpt.latest_step()
        where = (
            f'the last good checkpoint (step {kept}) is kept in {m.ckpt.directory}'
            if kept is not None
            else 'no checkpoint had been written yet'
        )
        message = f'run diverged at step {bad_step}: {reason}; {where}'
        logging.warning('%s: %s', m.workdir, message)
        # With one step per call the state is the last good one: evaluate it.
        results = {}
        own = _take(trainer, state, m.index)
        if _finite_on_host(own):
            out = evaluator_of(m)(own, bad_step - 1)
            results = {k: v for k, v in out.items() if not isinstance(v, np.ndarray)}
        if is_chief:
            m.files.write_summary(
                {
                    'status': 'diverged',
                    'steps': bad_step,
                    'reason': reason,
                    'checkpoint': kept,
                    **results,
                }
            )
        m.ckpt.close()
        m.wandb_run.finish(exit_code=1)
        m.outcome = DivergedError(message, bad_step)

    def flush(step: int) -> None:
        """Logs each live run's mean of the pending steps at `step`; a run whose steps
        went bad is logged up to its first bad step and stopped."""
        if not pending:
            return
        fetched = jax.device_get([metrics for _, _, metrics in pending])
        shown = None
        for m in live():
            rows = []
            for (first, n, _), metrics in zip(pending, fetched, strict=True):
                metrics = _take(trainer, metrics, m.index)
                rows += [(first + i + 1, {k: v[i] for k, v in metrics.items()}) for i in range(n)]
            window, logged_at, bad = _window(trainer, rows)
            m.last_window = window
            if is_chief:
                m.files.log_metrics(logged_at, window)
                m.wandb_run.log(window, logged_at)
            shown = shown or (logged_at, window.get(trainer.progress_metric, math.nan))
            if bad is not None:
                diverge(m, *bad)
        pending.clear()
        if shown is not None:
            progress.update(*shown)

    step, compile_s = start, math.nan
    try:
        if start == 0 and 0 in config.eval_steps:
            evaluate(0)
        while step < total and live():
            n = min(trainer.steps_per_call, _next_boundary(step, config, total) - step)
            state, metrics = trainer.train(state, n)
            pending.append((step, n, metrics))
            if step == start:  # the first call compiled
                jax.block_until_ready(state)
                compile_s = time.perf_counter() - t_start
                progress.started(step + n)
            step += n
            if _is_event(step, config.log_every_steps) or step == total:
                flush(step)
            if _is_event(step, config.checkpoint_every_steps) and step < total:
                flush(step)
                for m in live():
                    m.ckpt.save(step, _take(trainer, state, m.index))
            if _is_event(step, config.eval_every_steps) or step in config.eval_steps:
                flush(step)
                evaluate(step)
        flush(step)
    except KeyboardInterrupt:
        progress.close()
        resumes = []
        for m in live():
            m.ckpt.close()
            kept = m.ckpt.latest_step()
            m.wandb_run.finish(exit_code=130)
            resumes.append(f'the checkpoint at step {kept}' if kept is not None else 'the start')
        raise Interrupted(
            f'interrupted during step {step + 1} of {total}; run the same command again to '
            f'resume from {", ".join(sorted(set(resumes)))}'
        ) from None
    progress.close()
    trainer.state = state
    train_end = time.perf_counter()
    for m in live():
        own = _take(trainer, state, m.index)
        if step > start or m.ckpt.latest_step() != total:
            m.ckpt.save(total, own)
        m.ckpt.close()
        results = m.last_eval if m.last_eval.get('step') == total else {}
        results = {k: v for k, v in results.items() if k != 'step'} or evaluate_member(m, total)
        last_train = m.last_window or _last_logged_train(m.files)
        m.outcome = {
            'status': 'finished',
            'steps': total,
            **last_train,
            **results,
            **(trainer.summary(own) if trainer.summary else {}),
            'wall_s': time.perf_counter() - t_start,
            'compile_s': compile_s,
            'examples_per_s': progress.examples_per_s(step) if step > start else math.nan,
            'train_s': train_end - t_start,
        }
        if is_chief:
            m.files.write_summary(m.outcome)
            m.wandb_run.summary(m.outcome)
        m.wandb_run.finish()
        logging.info('%s done: %d steps in %.1f s', m.workdir, total, m.outcome['wall_s'])
    return [m.outcome for m in members]


def _finite_on_host(tree) -> bool:
    # On the host: eager jnp ops would compile one small program per leaf shape.
    leaves = jax.device_get(jax.tree.leaves(tree))
    return all(np.isfinite(x).all() for x in leaves if np.issubdtype(x.dtype, np.inexact))


def _last_logged_train(files: RunFiles) -> dict:
    """Resumed at the final checkpoint: the last logged training window."""
    rows = [r for r in files.read_metrics() if any(k.startswith('train/') for k in r)]
    return {k: v for k, v in rows[-1].items() if k != 'step'} if rows else {}
