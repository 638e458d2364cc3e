"""GAN evaluation: Frechet distance and label entropy in a normlab-trained feature space.

At every evaluation the generator (its EMA weights when configured) draws
``eval.num_samples`` examples from fixed noise, so two evaluations of the same weights
give the same numbers. Real and generated images take the same path to the feature
classifier (`normlab.train.gan.feature_classifier`), which was trained on real images in
the GAN's space ([-1, 1] at the GAN's side). Metrics:

* ``eval/frechet_distance``: the Frechet distance (`normlab.metrics.frechet`) between
  Gaussian fits of the classifier's penultimate features on ``eval.num_real`` real
  training examples (the same ones for every run of a dataset) and on the samples.
  It is the FID formula (Heusel et al. 2017) in another network's features: **not
  Inception FID**, not comparable with published numbers, and biased upwards by
  finite samples. ``eval/frechet_floor`` is the same distance between the real
  reference and the real *test* split: what a perfect generator would roughly score.
* ``eval/label_entropy``: entropy (nats) of the classifier's predicted labels over the
  samples, a mode-coverage signal (``log K`` when every class is produced equally
  often); ``eval/label_entropy_real`` is the same on the real reference.
* ``eval/class_consistency`` (conditional generators): how often the classifier
  predicts the label the sample was conditioned on.

Sampling and feature sums run under `jax.shard_map` like training: a generator with
batch norm normalizes each sample batch of ``batch_size`` with its own statistics
(``generator.eval_norm_stats='batch'``, as it did in training) or uses its running
averages (``'running'``); feature moments and label counts are `psum`-ed inside the step.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from normlab import data, parallel
from normlab.metrics import FeatureMoments, frechet_distance, label_entropy
from normlab.parallel import DATA_AXIS
from normlab.train.gan.feature_classifier import FeatureClassifier
from normlab.train.gan.images import image_grid
from normlab.train.gan.steps import EVAL_NOISE, GANState, noise

# The real reference is read in this order whatever the run's seed, so every run of a
# dataset is compared with the same examples.
REFERENCE_SEED = 0


def make_sample_step(
    generator: nn.Module,
    mesh: Mesh,
    *,
    seed: int,
    batch_size: int,
    num_classes: int,
    batch_statistics: bool,
):
    """``sample(variables, index) -> (images, labels)``: global batch ``index`` of the
    fixed evaluation noise; labels cycle through the classes (conditional)."""
    conditional = num_classes > 0

    def generate(variables, z, labels):
        labels = labels if conditional else None
        if batch_statistics:
            mutable = [c for c in variables if c != 'params']
            images, _ = generator.apply(variables, z, labels=labels, train=True, mutable=mutable)
        else:
            images = generator.apply(variables, z, labels=labels, train=False)
        return images

    sharded = jax.shard_map(
        generate, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS)), out_specs=P(DATA_AXIS)
    )
    batch_sharding = NamedSharding(mesh, P(DATA_AXIS))

    def sample(variables, index):
        z, _ = noise(seed, EVAL_NOISE, index, batch_size, (generator.latent_dim,), num_classes)
        labels = (index * batch_size + jnp.arange(batch_size)) % max(num_classes, 1)
        z = lax.with_sharding_constraint(z, batch_sharding)
        labels = lax.with_sharding_constraint(labels.astype(jnp.int32), batch_sharding)
        return sharded(variables, z, labels), labels

    return jax.jit(sample)


def make_feature_step(classifier: FeatureClassifier, mesh: Mesh):
    """``sums(classifier_variables, gan_images, mask, labels)``: feature moments, predicted
    label counts and agreements with `labels` over the real (mask 1) rows, all devices."""

    def sums(variables, images, mask, labels):
        features, logits = classifier.features_and_logits(variables, images)
        features = features.astype(jnp.float32) * mask[:, None]
        predicted = jnp.argmax(logits, axis=-1)
        counts = jnp.sum(jax.nn.one_hot(predicted, classifier.num_labels) * mask[:, None], axis=0)
        agree = jnp.sum((predicted == labels).astype(jnp.float32) * mask)
        out = {
            'total': jnp.sum(features, axis=0),
            'outer': features.T @ features,
            'count': jnp.sum(mask),
            'label_counts': counts,
            'agree': agree,
        }
        return lax.psum(out, DATA_AXIS)

    sharded = jax.shard_map(
        sums, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS)), out_specs=P()
    )
    return jax.jit(sharded)


class _Accumulator:
    def __init__(self, num_labels: int):
        self.moments = FeatureMoments()
        self.label_counts = np.zeros(num_labels)
        self.agree = 0.0

    def add(self, sums: dict) -> None:
        sums = jax.device_get(sums)
        self.moments.add(sums['total'], sums['outer'], sums['count'])
        self.label_counts += sums['label_counts']
        self.agree += float(sums['agree'])


class GANEvaluator:
    """Evaluates a `GANState`: ``metrics, grid = evaluator(state)``."""

    def __init__(
        self,
        config,
        generator: nn.Module,
        mesh: Mesh,
        classifier: FeatureClassifier,
        data_kwargs: dict,
    ):
        self.config, self.mesh = config, mesh
        self.classifier = classifier
        self.data_kwargs = data_kwargs
        spec = data.get_spec(config.dataset)
        self.num_classes = spec.num_classes if config.conditional else 0
        self.batch_size = config.batch_size
        self.sample = make_sample_step(
            generator,
            mesh,
            seed=config.seed,
            batch_size=config.batch_size,
            num_classes=self.num_classes,
            batch_statistics=config.generator.eval_norm_stats == 'batch',
        )
        self.features = make_feature_step(classifier, mesh)
        self.classifier_variables = parallel.replicate(mesh, classifier.variables)
        self._reference: tuple[_Accumulator, _Accumulator] | None = None
        self.with_labels = classifier.task == 'labels'
        self.to_gan = jax.jit(classifier.space.to_gan)

    def _local_mask(self, first_row: int, limit: int) -> np.ndarray:
        """This process's rows of a global batch starting at stream row `first_row`:
        1 for rows before `limit`."""
        local = self.batch_size // jax.process_count()
        rows = first_row + jax.process_index() * local + np.arange(local)
        return (rows < limit).astype(np.float32)

    def _real_pass(self, batches, limit: int | None) -> _Accumulator:
        acc = _Accumulator(self.classifier.num_labels)
        for index, local in enumerate(batches):
            first_row = index * self.batch_size
            if limit is not None and first_row >= limit:
                break
            mask = local['mask']
            if limit is not None:
                # Rows past `limit` (the train stream wraps into the next epoch) are masked.
                mask = mask * self._local_mask(first_row, limit)
            labels = local.get('label', np.zeros(len(mask), np.int32))
            batch = parallel.global_batch(
                self.mesh, {'image': local['image'], 'mask': mask, 'label': labels}
            )
            images = self.to_gan(batch['image'])
            acc.add(self.features(self.classifier_variables, images, batch['mask'], batch['label']))
        return acc

    def reference(self) -> tuple[_Accumulator, _Accumulator]:
        """(train reference, test split) feature statistics; computed once per run."""
        if self._reference is None:
            num_train = data.num_train_examples(
                self.config.dataset, data_dir=self.data_kwargs['data_dir']
            )
            limit = min(self.config.eval.num_real, num_train)
            train = self._real_pass(
                data.train_iterator(
                    self.config.dataset,
                    global_batch_size=self.batch_size,
                    seed=REFERENCE_SEED,
                    augment=False,
                    **self.data_kwargs,
                ),
                limit,
            )
            test = self._real_pass(
                data.eval_iterator(
                    self.config.dataset, global_batch_size=self.batch_size, **self.data_kwargs
                ),
                None,
            )
            self._reference = (train, test)
        return self._reference

    def __call__(self, state: GANState) -> tuple[dict, np.ndarray]:
        train_ref, test_ref = self.reference()
        variables = state.eval_generator_variables()
        num = self.config.eval.num_samples
        grid_n = self.config.eval.grid_rows**2
        acc = _Accumulator(self.classifier.num_labels)
        grid_images = []
        for index in range(math.ceil(num / self.batch_size)):
            images, labels = self.sample(variables, index)
            first_row = index * self.batch_size
            mask = parallel.global_batch(self.mesh, {'m': self._local_mask(first_row, num)})['m']
            acc.add(self.features(self.classifier_variables, images, mask, labels))
            if first_row < grid_n:
                grid_images.append(multihost_utils.process_allgather(images, tiled=True))
        metrics = {
            'eval/num_samples': int(acc.moments.count),
            'eval/num_real': int(train_ref.moments.count),
            'eval/frechet_floor': frechet_distance(train_ref.moments, test_ref.moments),
        }
        if not (np.all(np.isfinite(acc.moments.total)) and np.all(np.isfinite(acc.moments.outer))):
            # A diverged generator: say so in the numbers instead of failing in eigh.
            metrics['eval/frechet_distance'] = float('nan')
        else:
            metrics['eval/frechet_distance'] = frechet_distance(train_ref.moments, acc.moments)
        if self.with_labels:
            metrics['eval/label_entropy'] = label_entropy(acc.label_counts)
            metrics['eval/label_entropy_real'] = label_entropy(train_ref.label_counts)
            metrics['eval/max_label_entropy'] = float(np.log(self.classifier.num_labels))
            if self.num_classes:
                metrics['eval/class_consistency'] = acc.agree / acc.moments.count
        grid = np.concatenate(grid_images)[:grid_n]
        return metrics, image_grid(grid, self.config.eval.grid_rows)
