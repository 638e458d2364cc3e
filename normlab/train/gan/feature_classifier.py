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

Training runs through the shared loop (`normlab.train.loop`) with the classifier's
step, on a one-device mesh of this process, so it
never waits on other processes; the result is deterministic, so every process of a
multi-host run that trains its own copy gets the same one. A file lock makes
concurrent runs (a parallel sweep) train a cache entry once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import serialization
from jax.sharding import Mesh

from normlab import data, models, norms, parallel
from normlab.filelock import file_lock
from normlab.train import loop
from normlab.train import steps as multi_step
from normlab.train.classifier import steps as classifier_steps
from normlab.train.gan.images import ImageSpace
from normlab.train.state import TrainState, initialize

CACHE_ENV = 'NORMLAB_CACHE_DIR'
# Bump when the training code changes in a way that changes the network.
VERSION = 2
# Eval batch of the test-accuracy pass: any size gives the same numbers.
EVAL_BATCH_SIZE = 500


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
            _train_and_save(dataset, space, recipe, model, init, path, data_dir)
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


def _loop_config(recipe: Recipe) -> ml_collections.ConfigDict:
    """What `normlab.train.loop` reads: one log row and one checkpoint, at the end."""
    return ml_collections.ConfigDict(
        {
            'recipe': dataclasses.asdict(recipe),
            'log_every_steps': recipe.steps,
            'checkpoint_every_steps': recipe.steps,
            'keep_checkpoints': 1,
            'eval_every_steps': None,
            'eval_steps': (),
            'steps_per_call': None,
            'wandb': {'mode': 'disabled'},
        }
    )


def _train_and_save(dataset, space, recipe: Recipe, model, init, path, data_dir) -> None:
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
    state = initialize(lambda: TrainState.create(init(), tx), parallel.replicated(mesh))
    config = _loop_config(recipe)
    k = multi_step.default_steps_per_call(config, convolutional=True)
    call = multi_step.make_train_call(
        classifier_steps.train_step_fn(model, tx, lambda s: lr(s.step)),
        mesh,
        steps_per_call=k,
        batch_fn=None,
    )
    batches = data.train_iterator(
        dataset, global_batch_size=recipe.batch_size, seed=recipe.seed, data_dir=data_dir
    )
    to_gan = jax.jit(space.to_gan)

    def task_batches():
        for step, batch in enumerate(batches):
            # Rotations drawn from (seed, step): the batch of a step is fixed.
            rng = np.random.default_rng((recipe.seed, step))
            yield _as_task(batch, to_gan, task, rng)

    host = multi_step.HostBatches(task_batches(), mesh, k)
    eval_step = classifier_steps.make_eval_step(model, mesh)

    def evaluate(state, step: int) -> dict:
        totals = np.zeros(3)
        for batch in data.eval_iterator(
            dataset, global_batch_size=EVAL_BATCH_SIZE, data_dir=data_dir
        ):
            batch = parallel.global_batch(mesh, _as_task(batch, to_gan, task, None))
            totals += np.asarray(jax.device_get(eval_step(state.variables(), batch)))
        _, correct, count = totals
        return {'eval/accuracy': correct / count, 'eval/examples': int(count)}

    trainer = loop.Trainer(
        state=state,
        total_steps=recipe.steps,
        examples_per_step=recipe.batch_size,
        steps_per_call=k,
        train=lambda state, n: call(state, host.take(n), np.int32(recipe.seed), np.int32(n)),
        evaluate=evaluate,
        description=f'{dataset} feature classifier',
    )
    # Trained in a temporary directory renamed when complete: a killed run leaves no
    # half entry (and a later one starts afresh in its own directory).
    tmp = f'{path}.tmp{os.getpid()}'
    summary = loop.run(config, tmp, trainer)
    shutil.rmtree(os.path.join(tmp, 'checkpoints'), ignore_errors=True)
    info = {
        'dataset': dataset,
        'image_size': space.size,
        'task': task,
        'recipe': dataclasses.asdict(recipe),
        'test_accuracy': summary['eval/accuracy'],
        'test_examples': summary['eval/examples'],
        'final_train_loss': summary['train/loss'],
        'train_s': time.perf_counter() - t0,
        'version': VERSION,
    }
    with open(os.path.join(tmp, 'variables.msgpack'), 'wb') as f:
        f.write(serialization.to_bytes(jax.device_get(trainer.state.variables())))
    with open(os.path.join(tmp, 'info.json'), 'w') as f:
        json.dump(info, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    logging.info(
        'feature classifier: %.2f%% test accuracy (%s) in %.1f s',
        100 * info['test_accuracy'],
        task,
        info['train_s'],
    )
