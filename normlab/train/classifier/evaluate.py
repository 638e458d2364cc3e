"""Evaluation of a classifier in each of ``config.eval_modes``.

- ``running``: the norms' running averages (inference mode);
- ``batch``: each batch of the training size normalizes itself (train-mode norms,
  updates thrown away), as the norms saw data in training;
- ``precise``: population statistics recomputed from ``precise_bn_batches``
  training batches with the final weights (Wu & Johnson 2021), then inference.

The first mode's metrics are ``eval/...``, the others ``eval_<mode>/...``. With
``config.eval_train_split`` the first mode also runs over the whole train split
(``eval_train/...``, no augmentation): the train error of the network being
evaluated, for an honest train/test gap. On
resident data each mode is one pass over the split on the devices; streamed data
goes through `normlab.data.eval_iterator` batch by batch.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import traverse_util

from normlab import data, norms, parallel
from normlab.train.classifier import steps
from normlab.train.config_checks import eval_modes

# The percentiles of sown pre-activations an evaluation logs (Ioffe & Szegedy 2015,
# Fig. 1 plots the 15th, 50th and 85th).
PREACTIVATION_PERCENTILES = (15, 50, 85)
PRECISE_SEED_OFFSET = 1  # precise BN draws its batches from the stream of seed + 1


def _pad_with_real_rows(batch: dict) -> dict:
    """Streamed batches: padding rows become copies of real ones so batch statistics
    stay clean (resident batches wrap around to real rows by construction)."""
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
    """``evaluator(state) -> metrics`` for every mode of ``config.eval_modes``.

    ``evaluator(state, seed=s)`` evaluates a run of seed ``s`` (a bundle's runs share
    one evaluator): precise BN draws its batches from that run's stream.
    """

    def __init__(self, config, model, mesh, *, train_split, eval_split, fused: bool):
        self.config, self.model, self.mesh = config, model, mesh
        self.train_split, self.eval_split = train_split, eval_split
        self.modes = eval_modes(config)
        self.data_kwargs = dict(
            data_dir=config.data_dir,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        if eval_split is not None:
            self._running = steps.make_resident_eval(
                model,
                mesh,
                eval_split,
                config.eval_batch_size,
                batch_statistics=False,
                fused=fused,
            )
            self._batch = steps.make_resident_eval(
                model, mesh, eval_split, config.batch_size, batch_statistics=True, fused=fused
            )
            self._intermediates = steps.make_intermediates_step(
                model, mesh, eval_split, config.eval_batch_size
            )
            if config.eval_train_split:
                self._train_running = steps.make_resident_eval(
                    model,
                    mesh,
                    train_split,
                    config.eval_batch_size,
                    batch_statistics=False,
                    fused=fused,
                )
                self._train_batch = steps.make_resident_eval(
                    model, mesh, train_split, config.batch_size, batch_statistics=True, fused=fused
                )
        else:
            self._running_step = steps.make_eval_step(model, mesh)
            self._batch_step = steps.make_eval_step(model, mesh, batch_statistics=True)
            self._intermediates = steps.make_intermediates_step(model, mesh, None, 0)
        if train_split is not None:
            self._moments = steps.make_resident_moments(
                model,
                mesh,
                train_split,
                config.batch_size,
                config.precise_bn_batches,
                augment=config.augment,
                fused=fused,
            )
        else:
            self._moments_step = steps.make_moments_step(model, mesh)

    def _streamed(self, step_fn, variables, batch_size, *, fill_padding=False, split=None):
        totals = np.zeros(3)
        for local in data.eval_iterator(
            self.config.dataset, global_batch_size=batch_size, split=split, **self.data_kwargs
        ):
            if fill_padding:
                local = _pad_with_real_rows(local)
            batch = parallel.global_batch(self.mesh, local)
            totals += np.asarray(jax.device_get(step_fn(variables, batch)))
        return totals

    def _sums(self, mode: str, variables, *, on_train: bool = False) -> np.ndarray:
        """[loss sum, correct, count] over the eval split (or the train split)."""
        if self.eval_split is not None:
            if on_train:
                fn = self._train_batch if mode == 'batch' else self._train_running
                arrays = self.train_split.arrays
            else:
                fn = self._batch if mode == 'batch' else self._running
                arrays = self.eval_split.arrays
            return np.asarray(jax.device_get(fn(variables, arrays)))
        split = data.get_spec(self.config.dataset).train_split if on_train else None
        if mode == 'batch':
            return self._streamed(
                self._batch_step,
                variables,
                self.config.batch_size,
                fill_padding=True,
                split=split,
            )
        return self._streamed(
            self._running_step, variables, self.config.eval_batch_size, split=split
        )

    def precise_stats(self, variables, run_seed: int) -> dict:
        seed = run_seed + PRECISE_SEED_OFFSET
        if self.train_split is not None:
            moments = self._moments(variables, self.train_split.arrays, np.int32(seed))
            fn, batches = (lambda v, _: moments), [None]
        else:
            fn = self._moments_step
            batches = (
                parallel.global_batch(self.mesh, b)['image']
                for b in data.train_iterator(
                    self.config.dataset,
                    global_batch_size=self.config.batch_size,
                    seed=seed,
                    augment=self.config.augment,
                    **self.data_kwargs,
                )
            )
        num = 1 if self.train_split is not None else self.config.precise_bn_batches
        return norms.recompute_batch_stats(
            self.model, variables, batches, num_batches=num, moments_fn=fn
        )

    def preactivation_percentiles(self, variables) -> dict:
        """Percentiles of each sown pre-activation on the first eval batch: pooled over
        all of a layer's units (``preact3/p50``) and of its first unit alone
        (``preact3/unit0/p50``), the one-sigmoid view of Ioffe & Szegedy's Fig. 1."""
        if self.eval_split is not None:
            batch = self.eval_split.arrays
        else:
            local = next(
                data.eval_iterator(
                    self.config.dataset,
                    global_batch_size=self.config.eval_batch_size,
                    **self.data_kwargs,
                )
            )
            batch = parallel.global_batch(self.mesh, local)
        sown, mask = jax.device_get(self._intermediates(variables, batch))
        sown = traverse_util.flatten_dict(sown, sep='/')
        real = np.asarray(mask) > 0
        out = {}
        for name, values in sown.items():
            values = np.asarray(values)[real]
            unit0 = values.reshape(len(values), -1)[:, 0]
            for q in PREACTIVATION_PERCENTILES:
                out[f'{name}/p{q}'] = float(np.percentile(values, q))
                out[f'{name}/unit0/p{q}'] = float(np.percentile(unit0, q))
        return out

    def __call__(self, state, seed: int | None = None) -> dict:
        seed = self.config.seed if seed is None else seed
        variables = state.variables()
        has_stats = 'batch_stats' in variables
        out = {}
        passes = [(f'eval_{m}' if i else 'eval', m, False) for i, m in enumerate(self.modes)]
        if self.config.eval_train_split:  # the train split, as the headline mode sees it
            passes.append(('eval_train', self.modes[0], True))
        precise = None
        for prefix, mode, on_train in passes:
            used = variables
            if mode == 'precise' and has_stats:
                if precise is None:
                    precise = parallel.replicate(self.mesh, self.precise_stats(variables, seed))
                used = {**variables, 'batch_stats': precise}
            loss, correct, count = self._sums(
                mode if has_stats else 'running', used, on_train=on_train
            )
            out[f'{prefix}/loss'] = float(loss / count)
            out[f'{prefix}/error'] = float(1.0 - correct / count)
            out[f'{prefix}/examples'] = int(count)
        if self.config.record_preactivations:
            out.update(self.preactivation_percentiles(variables))
        return out
