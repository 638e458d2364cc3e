"""tf.data input pipelines: deterministic, resumable, sharded across processes.

Both iterators yield dicts of numpy arrays for one process:

    {'image': float32 [b, H, W, C] normalized,   # NHWC, see DatasetSpec.mean/std
     'label': int32 [b],                           # absent when num_classes == 0
     'mask':  float32 [b]}                         # 1 real example, 0 padding

with `b = global_batch_size // process_count`.

**The global stream.** Training reads one infinite stream of examples: epoch
0's permutation of the train split, then epoch 1's, and so on, cut into global
batches of `global_batch_size` (batches straddle epoch boundaries, so every
batch is full and no example is dropped). Example `i` of that stream (global
batch `i // B`, row `i % B`) is fully determined by `(seed, i)`:

- which training example it is: epoch `i // N`'s permutation, seeded by
  `(seed, epoch)`, at position `i % N`;
- its augmentation: stateless random ops seeded by `(seed, i)`.

Hence the three guarantees the tests check:

- *determinism*: the same seed gives the same batches, run after run;
- *resumption*: `start_step=k` yields exactly the batches an uninterrupted
  iterator yields from step k on, without replaying the first k steps;
- *process-count independence*: process p of P gets rows `[p*b, (p+1)*b)` of
  every global batch, so the union over processes is the single-process batch
  and a run's data does not depend on how many hosts feed it.

**Two ways to read.** A dataset small enough for memory (`spec.shuffle_buffer is
None`: digits, mnist, fashion_mnist, cifar) is loaded once and permuted exactly
with `tf.random.experimental.index_shuffle`, a stateless bijection from
position to example: resuming at any step costs nothing. A dataset streamed
from disk (imagenet2012, celeb_a) is shuffled per epoch through a buffer whose
seed is derived from `(seed, epoch)`; resuming skips the already consumed part
of the current epoch (reading, not decoding, those records), and each process
drops the rows of other processes before decoding.

**Evaluation** passes once over the eval split in file order. The last global
batch is padded with zero images and `mask == 0`, so every example is seen
exactly once and metrics are `sum(metric * mask) / sum(mask)`.

A missing dataset raises `DatasetNotPreparedError` (see
`normlab.data.builders`); `digits` is prepared offline on first use.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from normlab.data.builders import prepared_builder
from normlab.data.preprocess import get_transform
from normlab.data.specs import DatasetSpec, get_spec

Batch = dict[str, np.ndarray]

# "Forever": tf.data.Dataset.counter would do, but it calls a function per element.
_INT64_MAX = np.iinfo(np.int64).max


def train_iterator(
    name: str,
    *,
    global_batch_size: int,
    seed: int,
    data_dir: str | None = None,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    augment: bool = True,
    download: bool = False,
) -> Iterator[Batch]:
    """Infinite iterator over this process's share of the training batches.

    Args:
      name: a dataset of `normlab.data.specs.SPECS`.
      global_batch_size: examples per step over all processes; must be divisible by
        `process_count`.
      seed: run seed; fixes the order of every epoch and every augmentation.
      data_dir: TFDS data directory; None means `$NORMLAB_DATA_DIR` or
        `~/tensorflow_datasets`.
      start_step: first step to yield. A run resumed from a checkpoint at step k
        passes k and gets the batches it would have got without the interruption.
      process_index: this process's index, 0 <= process_index < process_count
        (`jax.process_index()` in a multi-host run).
      process_count: number of processes feeding the global batch.
      augment: apply the dataset's train augmentation (random crops, flips); False
        uses the eval transform on the same shuffled stream.
      download: let TFDS download a missing dataset (never done implicitly).

    Returns:
      An iterator of `{'image', 'label', 'mask'}` numpy dicts with
      `global_batch_size // process_count` rows (no `'label'` for an unlabelled
      dataset); `mask` is all ones, for code shared with evaluation.
    """
    spec = get_spec(name)
    local_batch_size = _local_batch_size(global_batch_size, process_index, process_count)
    if start_step < 0:
        raise ValueError(f'start_step must be >= 0, got {start_step}')
    builder = prepared_builder(name, data_dir=data_dir, download=download)
    transform = get_transform(spec)
    split = spec.train_split
    examples = _read_split(builder, spec, split, encoded=transform.encoded)
    num_examples = _num_examples(examples, builder, split)
    if num_examples == 0:
        raise ValueError(f'{name}: the {split!r} split is empty')
    layout = _Layout(global_batch_size, local_batch_size, process_index)
    if spec.shuffle_buffer is None:
        ds = _in_memory_stream(examples, num_examples, seed, start_step, layout)
    else:
        ds = _streamed(examples, num_examples, seed, start_step, layout, spec.shuffle_buffer)

    def preprocess(index, example):
        if augment:
            # Hashing (seed, index) keeps these keys apart from the (seed, epoch)
            # keys of the shuffle.
            key = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), index)
            image = transform.train(example['image'], key, spec)
        else:
            image = transform.eval(example['image'], spec)
        return _batch_element(image, example, spec, mask=1.0)

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local_batch_size, drop_remainder=True)
    return _as_numpy(ds)


def eval_iterator(
    name: str,
    *,
    global_batch_size: int,
    data_dir: str | None = None,
    process_index: int = 0,
    process_count: int = 1,
    download: bool = False,
    split: str | None = None,
) -> Iterator[Batch]:
    """One pass over the eval split, padded so every example is seen exactly once.

    There are `ceil(num_eval_examples / global_batch_size)` batches on every
    process (so collectives stay in step); padding rows have zero images, label 0
    and `mask == 0`. `split` (None: `spec.eval_split`) passes over another split
    with the eval transform, e.g. the train split for the train error. Other
    arguments are as for `train_iterator`.
    """
    spec = get_spec(name)
    local_batch_size = _local_batch_size(global_batch_size, process_index, process_count)
    builder = prepared_builder(name, data_dir=data_dir, download=download)
    transform = get_transform(spec)
    split = split or spec.eval_split
    examples = _read_split(builder, spec, split, encoded=transform.encoded)
    num_examples = _num_examples(examples, builder, split)
    layout = _Layout(global_batch_size, local_batch_size, process_index)

    ds = examples.enumerate().filter(layout.is_mine)
    ds = ds.map(
        lambda index, example: _batch_element(
            transform.eval(example['image'], spec), example, spec, mask=1.0
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    padding = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
    num_padding = layout.num_padding(num_examples)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
    # Real plus padding rows are a whole number of local batches: nothing is dropped.
    ds = ds.batch(local_batch_size, drop_remainder=True)
    return _as_numpy(ds)


class _Layout:
    """Where global example `i` goes: global batch `i // B`, row `i % B`, and the
    process whose rows `[p*b, (p+1)*b)` contain that row."""

    def __init__(self, global_batch_size: int, local_batch_size: int, process_index: int):
        self.global_batch_size = global_batch_size
        self.local_batch_size = local_batch_size
        self.process_index = process_index

    def my_indices(self, step: tf.Tensor) -> tf.Tensor:
        """Global stream indices of this process's rows of global batch `step`."""
        first = step * self.global_batch_size + self.process_index * self.local_batch_size
        return first + tf.range(self.local_batch_size, dtype=tf.int64)

    def is_mine(self, index: tf.Tensor, example) -> tf.Tensor:
        del example
        row = index % self.global_batch_size
        return tf.equal(row // self.local_batch_size, self.process_index)

    def num_padding(self, num_examples: int) -> int:
        """Padding rows this process appends so all processes run ceil(M/B) batches."""
        num_batches = math.ceil(num_examples / self.global_batch_size)
        full_batches, rows_in_last = divmod(num_examples, self.global_batch_size)
        first_row = self.process_index * self.local_batch_size
        mine_in_last = min(max(rows_in_last - first_row, 0), self.local_batch_size)
        real = full_batches * self.local_batch_size + mine_in_last
        return num_batches * self.local_batch_size - real


def _in_memory_stream(
    examples: tf.data.Dataset, num_examples: int, seed: int, start_step: int, layout: _Layout
) -> tf.data.Dataset:
    """(global index, example) pairs for this process, from the split held in memory."""
    # One tensor per feature, N rows; captured by the lookup below.
    table = examples.batch(num_examples).get_single_element()

    def lookup(step):
        index = layout.my_indices(step)
        epoch, position = index // num_examples, index % num_examples
        # A stateless bijection of [0, N) keyed by (seed, epoch): a fresh full
        # permutation every epoch, evaluated only at the positions we need. The raw
        # op, because tf.random.experimental.index_shuffle mis-pads [n, 2] seeds.
        seed_column = tf.fill(tf.shape(epoch), tf.constant(seed, tf.int64))
        keys = tf.stack([tf.zeros_like(epoch), seed_column, epoch], axis=1)  # [b, 3]
        row = tf.raw_ops.RandomIndexShuffle(
            index=position,
            seed=keys,
            max_index=tf.fill(tf.shape(position), tf.constant(num_examples - 1, tf.int64)),
            rounds=4,  # As tf.random.experimental.index_shuffle.
        )
        return index, tf.nest.map_structure(lambda column: tf.gather(column, row), table)

    # Looked up a local batch at a time (one function call per batch, not per
    # example), then unbatched for the per-example transforms.
    steps = tf.data.Dataset.range(start_step, _INT64_MAX)
    return steps.map(lookup, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def _streamed(
    examples: tf.data.Dataset,
    num_examples: int,
    seed: int,
    start_step: int,
    layout: _Layout,
    shuffle_buffer: int,
) -> tf.data.Dataset:
    """(global index, example) pairs for this process, streamed from disk."""

    def one_epoch(epoch):
        # tf.data accepts a tensor seed; drawing it from (seed, epoch) makes every
        # epoch's order different and reproducible.
        epoch_seed = tf.random.stateless_uniform(
            [],
            seed=tf.stack([tf.constant(seed, tf.int64), epoch]),
            minval=None,
            maxval=None,
            dtype=tf.int64,
        )
        return examples.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)

    first = start_step * layout.global_batch_size
    first_epoch, offset = divmod(first, num_examples)
    ds = tf.data.Dataset.range(first_epoch, _INT64_MAX).flat_map(one_epoch).skip(offset)
    # Other processes' rows are dropped here, before the costly decode and augment.
    return ds.enumerate(start=first).filter(layout.is_mine)


def _read_split(
    builder: tfds.core.DatasetBuilder, spec: DatasetSpec, split: str, *, encoded: bool
) -> tf.data.Dataset:
    """The split in file order, reduced to the features the batches carry."""
    decoders = {'image': tfds.decode.SkipDecoding()} if encoded else None
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
    keys = ('image', 'label') if spec.num_classes else ('image',)
    return ds.map(lambda example: {key: example[key] for key in keys})


def _num_examples(ds: tf.data.Dataset, builder: tfds.core.DatasetBuilder, split: str) -> int:
    # TFDS asserts the cardinality of what it reads (also under tfds.testing.mock_data,
    # where it differs from builder.info), so prefer it over the metadata.
    cardinality = int(ds.cardinality())
    if cardinality >= 0:
        return cardinality
    return builder.info.splits[split].num_examples


def _batch_element(image, example, spec: DatasetSpec, *, mask: float) -> dict[str, tf.Tensor]:
    element = {'image': image, 'mask': tf.constant(mask, tf.float32)}
    if spec.num_classes > 0:  # 0: an unlabelled dataset (celeb_a)
        element['label'] = tf.cast(example['label'], tf.int32)
    return element


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
    if global_batch_size <= 0:
        raise ValueError(f'global_batch_size must be positive, got {global_batch_size}')
    if not 0 <= process_index < process_count:
        raise ValueError(f'process_index {process_index} not in [0, {process_count})')
    if global_batch_size % process_count:
        raise ValueError(
            f'global_batch_size {global_batch_size} is not divisible by '
            f'process_count {process_count}'
        )
    return global_batch_size // process_count


def _as_numpy(ds: tf.data.Dataset) -> Iterator[Batch]:
    options = tf.data.Options()
    options.deterministic = True  # Parallel maps keep input order: reproducibility.
    ds = ds.with_options(options).prefetch(tf.data.AUTOTUNE)
    return ds.as_numpy_iterator()
