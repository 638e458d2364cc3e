"""The feature network of normlab's GAN evaluation: a small CNN trained once per dataset.

FID (Heusel et al. 2017) measures the Frechet distance between real and generated
images in the pool features of an Inception-v3 trained on ImageNet. Those weights
are a download, and on 8x8 digits or 28x28 MNIST Inception features say little. So
normlab trains its own feature network on the GAN's dataset, once, caches it, and
measures the Frechet distance in its penultimate layer (the global-average-pooled
features in front of the linear head of `normlab.models` ``cnn``). It is trained on
the real images exactly as the GAN's discriminator sees them (`ImageSpace.to_gan`:
[-1, 1], resized to the GAN's side), so real and generated images reach it through
the same path and nothing is lost to a resize on the way. Its numbers are
therefore **not Inception FID**: they are comparable between runs that use the same
cached classifier (same dataset, recipe and cache key), and not with published FIDs.

* Labelled datasets (digits, MNIST, CIFAR): the network classifies the dataset's
  labels. Its predicted labels on generated samples also give the mode-coverage
  entropy (`normlab.metrics.coverage`) and, for a conditional GAN, class consistency.
* Unlabelled datasets (CelebA as normlab reads it): the network is trained to predict
  which of 4 rotations (0, 90, 180, 270 degrees) was applied (Gidaris et al. 2018), a
  self-supervised task whose features still separate faces from non-faces; there is
  no label entropy then.

The network's own test accuracy is stored with it (``info.json``) and reported in
every GAN summary: a feature space from a classifier that cannot tell the classes
apart makes a weak distance.

Training reuses `normlab.train.steps` on a one-device mesh of this process, so it
never waits on other processes; the result is deterministic, so every process of a
multi-host run that trains its own copy gets the same one. A file lock makes
concurrent runs (a parallel sweep) train a cache entry once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import serialization
from jax.sharding import Mesh

from normlab import data, models, norms, parallel
from normlab.filelock import file_lock
from normlab.train.gan_images import ImageSpace
from normlab.train.init_compile import run_init
from normlab.train.steps import TrainState, make_eval_step, make_train_step

CACHE_ENV = 'NORMLAB_CACHE_DIR'
# Bump when the training code changes in a way that changes the network.
VERSION = 1


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How the feature network of one dataset is trained (part of the cache key)."""

    widths: tuple[int, ...] = (32, 64, 128)
    convs_per_stage: int = 1
    steps: int = 2000
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0


RECIPES: dict[str, Recipe] = {
    # 99.7-100% on the 360 test digits (16x16) in ~50 s on the 2-core development CPU.
    'digits': Recipe(steps=600, batch_size=64),
    'mnist': Recipe(steps=3000),
    'fashion_mnist': Recipe(steps=4000),
    'cifar10': Recipe(widths=(64, 128, 256), convs_per_stage=2, steps=10_000),
    'cifar100': Recipe(widths=(64, 128, 256), convs_per_stage=2, steps=15_000),
    'celeb_a': Recipe(widths=(32, 64, 128, 256), steps=5000),
}
ROTATIONS = 4


def default_cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser('~'), '.cache', 'normlab')


def task_of(spec: data.DatasetSpec) -> str:
    """``'labels'`` for a labelled dataset, ``'rotation'`` for an unlabelled one."""
    return 'labels' if spec.num_classes else 'rotation'


def _build_model(recipe: Recipe, num_labels: int) -> nn.Module:
    norm = norms.make_norm('batch_norm', axis_name=parallel.DATA_AXIS)
    return models.create(
        'cnn',
        num_classes=num_labels,
        norm=norm,
        widths=recipe.widths,
        convs_per_stage=recipe.convs_per_stage,
    )


@dataclasses.dataclass(frozen=True)
class FeatureClassifier:
    """A trained feature network.

    Attributes:
      dataset: the dataset it was trained on.
      space: the image space of its inputs ([-1, 1] at ``space.size``).
      task: ``'labels'`` or ``'rotation'``.
      num_labels: size of its logits.
      model: the `normlab.models` ``cnn``.
      variables: its variables (host arrays).
      test_accuracy: accuracy on the dataset's eval split (for rotation: over all
        four rotations of every test image).
      path: its cache directory.
    """

    dataset: str
    space: ImageSpace
    task: str
    num_labels: int
    model: nn.Module
    variables: dict
    test_accuracy: float
    path: str

    def features_and_logits(self, variables, images):
        """Penultimate features ``(N, D)`` and logits ``(N, num_labels)`` of images in
        `space`. Pure: call it inside jit / shard_map."""
        captured = {}

        def capture_head_input(next_fun, args, kwargs, context):
            if context.module.name == 'head' and context.method_name == '__call__':
                captured['features'] = args[0]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(capture_head_input):
            logits = self.model.apply(variables, images, train=False)
        return captured['features'], logits


def cache_key(dataset: str, space: ImageSpace, recipe: Recipe) -> str:
    spec = data.get_spec(dataset)
    blob = json.dumps(
        {
            'version': VERSION,
            'dataset': dataset,
            'task': task_of(spec),
            'recipe': dataclasses.asdict(recipe),
            'image_shape': spec.image_shape,
            'space': dataclasses.asdict(space),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def recipe_for(dataset: str, steps: int | None = None) -> Recipe:
    recipe = RECIPES.get(dataset, Recipe())
    return recipe if steps is None else dataclasses.replace(recipe, steps=steps)


def load_or_train(
    dataset: str,
    *,
    image_size: int | None = None,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    steps: int | None = None,
) -> FeatureClassifier:
    """The cached feature network of `dataset`, trained first if it is not cached.

    Args:
      dataset: a `normlab.data` dataset.
      image_size: the GAN's image side (None: the dataset's); one network per side.
      data_dir: its TFDS data directory.
      cache_dir: None: ``$NORMLAB_CACHE_DIR`` or ``~/.cache/normlab``.
      steps: training steps instead of the dataset recipe's (a different cache entry).
    """
    spec = data.get_spec(dataset)
    space = ImageSpace.create(spec, image_size)
    recipe = recipe_for(dataset, steps)
    task = task_of(spec)
    num_labels = spec.num_classes or ROTATIONS
    model = _build_model(recipe, num_labels)
    path = os.path.join(
        cache_dir or default_cache_dir(),
        'feature_classifiers',
        f'{dataset}-{space.size}px-{task}-{cache_key(dataset, space, recipe)}',
    )
    init = _initializer(model, recipe, (space.size, space.size, space.channels))
    with file_lock(path + '.lock'):
        if not os.path.exists(os.path.join(path, 'info.json')):
            _train_and_save(dataset, space, recipe, model, run_init(init), path, data_dir)
    with open(os.path.join(path, 'variables.msgpack'), 'rb') as f:
        # Only the tree structure is needed to restore: no init to compile.
        variables = serialization.from_bytes(jax.eval_shape(init), f.read())
    with open(os.path.join(path, 'info.json')) as f:
        info = json.load(f)
    return FeatureClassifier(
        dataset=dataset,
        space=space,
        task=task,
        num_labels=num_labels,
        model=model,
        variables=jax.device_get(variables),
        test_accuracy=info['test_accuracy'],
        path=path,
    )


def _initializer(model: nn.Module, recipe: Recipe, image_shape):
    """``init() -> variables``."""
    dummy = jnp.zeros((2, *image_shape), jnp.float32)
    return lambda: model.init(jax.random.key(recipe.seed), dummy, train=False)


def _rotate(images: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Rotates example i of ``(N, H, W, C)`` square images by ``k[i] * 90`` degrees."""
    rotations = np.stack([np.rot90(images, r, axes=(1, 2)) for r in range(ROTATIONS)])
    return rotations[k, np.arange(len(images))]


def _as_task(batch: dict, to_gan, task: str, rng: np.random.Generator | None) -> dict:
    """The batch in GAN space, labelled for the task; ``rng=None`` enumerates all
    rotations."""
    images, mask = np.asarray(to_gan(batch['image'])), batch['mask']
    if task == 'labels':
        return {'image': images, 'label': batch['label'], 'mask': mask}
    if rng is None:
        k = np.repeat(np.arange(ROTATIONS), len(images))
        images, mask = np.tile(images, (ROTATIONS, 1, 1, 1)), np.tile(mask, ROTATIONS)
    else:
        k = rng.integers(0, ROTATIONS, len(images))
    return {'image': _rotate(images, k), 'label': k.astype(np.int32), 'mask': mask}


def _train_and_save(dataset, space, recipe: Recipe, model, template, path, data_dir) -> None:
    t0 = time.perf_counter()
    spec = data.get_spec(dataset)
    task = task_of(spec)
    logging.info(
        'training the %s feature classifier (%s task, %d steps) into %s',
        dataset,
        task,
        recipe.steps,
        path,
    )
    mesh = Mesh(np.array(jax.local_devices()[:1]), (parallel.DATA_AXIS,))
    lr = optax.cosine_decay_schedule(recipe.learning_rate, recipe.steps)
    tx = optax.adam(lr)
    params = template['params']
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        model_state={k: v for k, v in template.items() if k != 'params'},
    )
    state = jax.device_put(state, parallel.replicated(mesh))
    train_step = make_train_step(model, tx, mesh, lr)
    batches = data.train_iterator(
        dataset, global_batch_size=recipe.batch_size, seed=recipe.seed, data_dir=data_dir
    )
    rng = np.random.default_rng(recipe.seed)
    to_gan = jax.jit(space.to_gan)
    for _ in range(recipe.steps):
        batch = parallel.global_batch(mesh, _as_task(next(batches), to_gan, task, rng))
        state, metrics = train_step(state, batch)
    eval_step = make_eval_step(model, mesh)
    totals = np.zeros(3)
    for batch in data.eval_iterator(dataset, global_batch_size=500, data_dir=data_dir):
        batch = parallel.global_batch(mesh, _as_task(batch, to_gan, task, None))
        totals += np.asarray(jax.device_get(eval_step(state.variables(), batch)))
    _, correct, count = totals
    info = {
        'dataset': dataset,
        'image_size': space.size,
        'task': task,
        'recipe': dataclasses.asdict(recipe),
        'test_accuracy': correct / count,
        'test_examples': int(count),
        'final_train_loss': float(metrics['train/loss']),
        'train_s': time.perf_counter() - t0,
        'version': VERSION,
    }
    # Written to a temporary directory and renamed: a killed run leaves no half entry.
    tmp = f'{path}.tmp{os.getpid()}'
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, 'variables.msgpack'), 'wb') as f:
        f.write(serialization.to_bytes(jax.device_get(state.variables())))
    with open(os.path.join(tmp, 'info.json'), 'w') as f:
        json.dump(info, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    logging.info(
        'feature classifier: %.2f%% test accuracy (%s) in %.1f s',
        100 * info['test_accuracy'],
        task,
        info['train_s'],
    )
