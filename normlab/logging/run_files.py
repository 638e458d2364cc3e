"""The files a run writes: config.json, metrics.jsonl and summary.json."""

from __future__ import annotations

import json
import math
import os

import ml_collections


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    if hasattr(value, 'item'):
        return _jsonable(value.item())
    return value


class RunFiles:
    """A run's work-directory files. Writes are atomic (write, then rename)."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.config_path = os.path.join(workdir, 'config.json')
        self.metrics_path = os.path.join(workdir, 'metrics.jsonl')
        self.summary_path = os.path.join(workdir, 'summary.json')

    def _atomic_write(self, path: str, text: str) -> None:
        tmp = path + '.tmp'
        with open(tmp, 'w') as f:
            f.write(text)
        os.replace(tmp, path)

    def write_config(self, config: ml_collections.ConfigDict) -> None:
        self._atomic_write(self.config_path, config.to_json(indent=2, sort_keys=True) + '\n')

    def log_metrics(self, step: int, metrics: dict) -> None:
        row = {'step': int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        with open(self.metrics_path, 'a') as f:
            f.write(json.dumps(row) + '\n')

    def truncate_metrics(self, last_step: int) -> None:
        """Drops rows past `last_step`: a resumed run re-logs them."""
        if not os.path.exists(self.metrics_path):
            return
        with open(self.metrics_path) as f:
            rows = [line for line in f if line.strip()]
        keep = [r for r in rows if json.loads(r)['step'] <= last_step]
        self._atomic_write(self.metrics_path, ''.join(keep))

    def read_metrics(self) -> list[dict]:
        if not os.path.exists(self.metrics_path):
            return []
        with open(self.metrics_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def write_summary(self, summary: dict) -> None:
        text = json.dumps({k: _jsonable(v) for k, v in summary.items()}, indent=2, sort_keys=True)
        self._atomic_write(self.summary_path, text + '\n')

    def read_summary(self) -> dict | None:
        if not os.path.exists(self.summary_path):
            return None
        with open(self.summary_path) as f:
            return json.load(f)
