"""Datasets that live on the devices: read from TFDS once, batched inside the step.

A small run is dispatch-bound when every step is a Python iteration fed by
`tf.data`. A split that fits the devices' memory is therefore read once, kept
as raw pixels (uint8 as TFDS stores them) sharded row-wise over the data axis,
and every step builds its own batch inside the compiled program:

- **which examples**: global example ``i`` of the training stream (step
  ``i // B``, row ``i % B``) is position ``i % N`` of epoch ``i // N``'s
  permutation, a function of ``(seed, epoch)``. Batches straddle epoch boundaries
  as in `normlab.data.pipeline`, so the guarantees are the same: the same seed
  gives the same batches, a run resumed at step ``k`` sees what an
  uninterrupted one sees (nothing is replayed: a batch is a function of its
  step), and device ``d`` of ``D`` gets rows ``[d*b, (d+1)*b)`` whatever the
  number of processes. The permutations differ from the streaming pipeline's
  (a hash here, TensorFlow's shuffle there), so the two paths see the same
  examples every epoch, in different orders.
- **gathering across devices**: each device fills the rows of the global batch
  it owns (zeros elsewhere), and one ``psum`` gives every device the batch, of
  which it keeps its slice: exact (one non-zero term per value) and one collective
  per batch.
- **augmentation**: per example, from ``(seed, i)`` (the CIFAR crop with
  4-pixel zero padding and flip; none for digits); normalization as
  `normlab.data.preprocess.normalize`.

Evaluation batches are consecutive rows; the last one wraps around to the
first examples with ``mask == 0``, so padding rows are copies of real ones
(batch statistics stay clean) and never count.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from normlab.data import builders
from normlab.data.preprocess import CIFAR_PADDING
from normlab.data.specs import DatasetSpec, get_spec

DATA_AXIS = 'data'  # normlab.parallel.DATA_AXIS (data must not import parallel)
# Transforms the device can apply; encoded (JPEG) datasets always stream.
DEVICE_TRANSFORMS = ('plain', 'cifar', 'signal')
# fold_in tags that keep the shuffle and augmentation streams apart.
_SHUFFLE, _AUGMENT = 0, 1


@dataclasses.dataclass(frozen=True)
class Split:
    """One split on the devices. ``images``/``labels`` are sharded row-wise over
    the data axis and padded to a multiple of the device count; ``num_examples``
    counts the real rows."""

    images: jax.Array
    labels: jax.Array | None
    num_examples: int
    spec: DatasetSpec

    @property
    def arrays(self) -> dict:
        """The device arrays, to pass into a jitted function (the rest is static)."""
        out = {'image': self.images}
        if self.labels is not None:
            out['label'] = self.labels
        return out


def split_bytes(name: str, split: str, *, data_dir: str | None = None) -> int:
    """Bytes the split takes on the devices, summed over them."""
    spec = get_spec(name)
    builder = builders.prepared_builder(name, data_dir=data_dir)
    itemsize = 4 if spec.transform == 'signal' else 1  # float32 signals, uint8 pixels
    return builder.info.splits[split].num_examples * math.prod(spec.image_shape) * itemsize


PLACEMENTS = ('auto', 'device', 'stream')


def on_device(
    name: str, placement: str, *, budget_mb: float, num_devices: int, data_dir: str | None = None
) -> bool:
    """Whether a run keeps `name` on the devices: ``placement`` 'device', 'stream', or
    'auto' (on the devices when both splits fit `budget_mb` per device, sharded, and
    their transform runs there)."""
    if placement not in PLACEMENTS:
        raise ValueError(f'data placement {placement!r} is not one of {PLACEMENTS}')
    spec = get_spec(name)
    if placement == 'stream':
        return False
    if placement == 'device':
        return True
    if spec.transform not in DEVICE_TRANSFORMS:
        return False
    total = sum(
        split_bytes(name, s, data_dir=data_dir) for s in (spec.train_split, spec.eval_split)
    )
    return total / num_devices <= budget_mb * 2**20


def load(name: str, split: str, mesh: Mesh, *, data_dir: str | None = None) -> Split:
    """Reads a split from TFDS in file order and shards it over `mesh`'s data axis.

    Every process reads the split and keeps the rows of its own devices.
    """
    import tensorflow_datasets as tfds  # noqa: PLC0415 - TF only where data is read

    spec = get_spec(name)
    if spec.transform not in DEVICE_TRANSFORMS:
        raise ValueError(
            f'{name} cannot live on the devices (transform {spec.transform!r}; valid: '
            f'{", ".join(DEVICE_TRANSFORMS)}): stream it'
        )
    builder = builders.prepared_builder(name, data_dir=data_dir)
    ds = builder.as_dataset(split=split, shuffle_files=False, batch_size=-1)
    columns = tfds.as_numpy(ds)
    images = np.asarray(columns['image'])
    labels = np.asarray(columns['label'], np.int32) if spec.num_classes else None
    n = len(images)
    devices = mesh.devices.size
    padded = math.ceil(n / devices) * devices
    sharding = NamedSharding(mesh, P(DATA_AXIS))

    def place(array):
        array = np.concatenate([array, np.zeros((padded - n, *array.shape[1:]), array.dtype)])
        return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

    return Split(
        images=place(images),
        labels=None if labels is None else place(labels),
        num_examples=n,
        spec=spec,
    )


def _gather(arrays: dict, rows: jax.Array) -> dict:
    """This device's slice of the global batch whose rows are example ids `rows`.

    Call inside `shard_map` over the data axis, with this device's shard of `arrays`.
    """
    shard = arrays['image'].shape[0]
    first = lax.axis_index(DATA_AXIS) * shard
    local = rows - first
    mine = (local >= 0) & (local < shard)
    local = jnp.clip(local, 0, shard - 1)
    out = {}
    for key, values in arrays.items():
        picked = values[local]
        keep = mine.reshape(mine.shape + (1,) * (picked.ndim - 1))
        wide = jnp.float32 if key == 'image' else jnp.int32
        picked = jnp.where(keep, picked.astype(wide), jnp.zeros((), wide))
        # An all-reduce, then this device's rows: XLA:CPU's reduce-scatter aborted
        # intermittently on simulated devices (seen in tests/test_train.py).
        whole = lax.psum(picked, DATA_AXIS)
        size = whole.shape[0] // lax.axis_size(DATA_AXIS)
        out[key] = lax.dynamic_slice_in_dim(whole, lax.axis_index(DATA_AXIS) * size, size)
    return out


def _mix32(x: jax.Array) -> jax.Array:
    """A 32-bit integer hash with full avalanche (the murmur3 finalizer)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _epoch_permutation(seed, epoch, n: int) -> jax.Array:
    """Epoch `epoch`'s order of the `n` examples: a sort by hashed ``(seed, epoch, i)``.

    Integer hashing instead of `jax.random.permutation`: XLA:CPU compiles threefry
    slowly, and this runs inside every step. Ties (rare) keep index order, so the
    order is a pure function of its arguments on every backend and under `vmap`.
    """
    salt = _mix32(jnp.asarray(seed, jnp.uint32) ^ jnp.uint32(0x9E3779B9))
    salt = _mix32(salt ^ _mix32(jnp.asarray(epoch, jnp.uint32) + jnp.uint32(_SHUFFLE)))
    keys = _mix32(jnp.arange(n, dtype=jnp.uint32) ^ salt)
    return jnp.argsort(keys, stable=True).astype(jnp.int32)


def epoch_plan(seed, first_batch, *, num_batches: int, batch_size: int, num_examples: int):
    """The permutations of every epoch that batches ``[first_batch, first_batch +
    num_batches)`` touch, computed once per call (not per step): a dict for
    `train_rows`. ``num_batches`` is static; `first_batch` and `seed` may be traced."""
    first_epoch = jnp.asarray(first_batch, jnp.int32) * batch_size // num_examples
    count = -(-num_batches * batch_size // num_examples) + 1  # epochs a window can span
    epochs = first_epoch + jnp.arange(count, dtype=jnp.int32)
    perms = jax.vmap(lambda e: _epoch_permutation(seed, e, num_examples))(epochs)
    return {'first_epoch': first_epoch, 'perms': perms}


def train_rows(plan: dict, batch_index, *, batch_size: int, num_examples: int) -> jax.Array:
    """Example ids of global training batch `batch_index` (int32 ``[batch_size]``);
    `plan` (`epoch_plan`) must cover it."""
    index = jnp.asarray(batch_index, jnp.int32) * batch_size + jnp.arange(
        batch_size, dtype=jnp.int32
    )
    epoch = index // num_examples - plan['first_epoch']
    return plan['perms'][epoch, index % num_examples]


def _normalize(pixels: jax.Array, spec: DatasetSpec) -> jax.Array:
    shape = (1,) * (pixels.ndim - 1) + (-1,)  # per channel, explicitly broadcast
    mean = jnp.asarray(spec.mean, jnp.float32).reshape(shape)
    std = jnp.asarray(spec.std, jnp.float32).reshape(shape)
    # A float signal (MNIST-1D) is standardized in its own units, like
    # `normlab.data.preprocess.standardize`; pixels are scaled to [0, 1] first.
    scale = 1.0 if spec.transform == 'signal' else 255.0
    return (pixels / scale - mean) / std


def _cifar_augment(pixels: jax.Array, key: jax.Array) -> jax.Array:
    """Zero padding in pixel space, a random crop of the original size, a random flip."""
    h, w, _ = pixels.shape
    pad = CIFAR_PADDING
    padded = jnp.pad(pixels, ((pad, pad), (pad, pad), (0, 0)))
    k_y, k_x, k_flip = jax.random.split(key, 3)
    y = jax.random.randint(k_y, (), 0, 2 * pad + 1)
    x = jax.random.randint(k_x, (), 0, 2 * pad + 1)
    crop = lax.dynamic_slice(padded, (y, x, 0), pixels.shape)
    del h, w
    return jnp.where(jax.random.bernoulli(k_flip), crop[:, ::-1], crop)


def train_batch(
    arrays: dict, plan: dict, seed, batch_index, *, split: Split, batch_size: int, augment: bool
) -> dict:
    """This device's slice of global training batch `batch_index`, preprocessed.

    Call inside `shard_map` over the data axis, with an `epoch_plan` that covers the
    batch. Returns ``{'image', 'label', 'mask'}`` like
    `normlab.data.pipeline.train_iterator`'s batches.
    """
    rows = train_rows(plan, batch_index, batch_size=batch_size, num_examples=split.num_examples)
    batch = _gather(arrays, rows)
    images = batch['image']
    if augment and split.spec.transform == 'cifar':
        local = images.shape[0]
        first = jnp.asarray(batch_index, jnp.int32) * batch_size
        first = first + lax.axis_index(DATA_AXIS) * local
        index = first + jnp.arange(local, dtype=jnp.int32)
        base = jax.random.fold_in(jax.random.key(seed), _AUGMENT)
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(index)
        images = jax.vmap(_cifar_augment)(images, keys)
    batch['image'] = _normalize(images, split.spec)
    batch['mask'] = jnp.ones(images.shape[:1], jnp.float32)
    return batch


def num_eval_batches(split: Split, batch_size: int) -> int:
    return math.ceil(split.num_examples / batch_size)


def eval_batch(arrays: dict, index, *, split: Split, batch_size: int) -> dict:
    """This device's slice of eval batch `index` (consecutive rows; the last batch
    wraps around with ``mask == 0``). Call inside `shard_map` over the data axis."""
    position = index * batch_size + jnp.arange(batch_size, dtype=jnp.int32)
    batch = _gather(arrays, position % split.num_examples)
    batch['image'] = _normalize(batch['image'], split.spec)
    real = (position < split.num_examples).astype(jnp.float32)
    local = batch['image'].shape[0]
    batch['mask'] = lax.dynamic_slice(real, (lax.axis_index(DATA_AXIS) * local,), (local,))
    return batch
