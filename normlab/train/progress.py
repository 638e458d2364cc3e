"""Training progress: a live bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import sys
import time

from absl import logging


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f'{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class Progress:
    def __init__(self, total_steps: int, start_step: int, batch_size: int, *, enabled=True):
        self.total = total_steps
        self.start = start_step
        self.batch_size = batch_size
        self.enabled = enabled
        self.interactive = enabled and sys.stderr.isatty()
        self.t0 = None  # set after the first (compiling) step
        self.s0 = start_step

    def started(self, step: int) -> None:
        self.t0, self.s0 = time.perf_counter(), step

    def examples_per_s(self, step: int) -> float:
        if self.t0 is None or step <= self.s0:
            return float('nan')
        return (step - self.s0) * self.batch_size / (time.perf_counter() - self.t0)

    def update(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        rate = self.examples_per_s(step)
        done = step - self.s0
        eta = (self.total - step) * (time.perf_counter() - self.t0) / done if done > 0 else 0
        text = f'step {step}/{self.total}  loss {loss:.4f}  {rate:,.0f} ex/s  ETA {_clock(eta)}'
        if self.interactive:
            width = 24
            filled = int(width * step / max(self.total, 1))
            sys.stderr.write(f'\r[{"#" * filled}{"." * (width - filled)}] {text}  ')
            sys.stderr.flush()
        else:
            logging.info('%s', text)

    def close(self) -> None:
        if self.interactive:
            sys.stderr.write('\n')
            sys.stderr.flush()
