"""`mnist1d`: MNIST-1D (Greydanus & Kobak, ICML 2024), generated offline from its package.

MNIST-1D turns ten hand-made 1D templates of the digits into length-40 signals by
random padding, translation, scaling, shear and correlated plus i.i.d. noise; the
generator is procedural, so any number of examples can be made. This builder calls
the `mnist1d` package's own generator, ``mnist1d.data.make_dataset(args)`` with
``args = mnist1d.data.get_dataset_args()`` (templates, transforms, seed 42), and
never its download URL. Two configs:

- ``mnist1d`` (= ``mnist1d/5k``): the paper's dataset, 5,000 examples split 4,000
  train / 1,000 test;
- ``mnist1d/50k``: the same generator with ``num_samples=50000``: 40,000 / 10,000.

The split is the package's own (its generator shuffles the examples and keeps the
first ``train_split = 0.8``), so ``mnist1d`` is the paper's train/test data; it is
random, not stratified: the 1,000 test examples hold 89 to 106 of each class. Keys
are the example's index in the generated (shuffled) order. The generator reseeds
numpy's and Python's global random state; the builder restores both afterwards.

**Shape.** A signal is stored as float32 of shape ``(1, 40, 1)``: an image one row
high, 40 positions wide, one channel, so normlab's NHWC pipeline and models take
it unchanged: the MLP flattens it to the paper's 40 inputs; convolutions along the
width are 1D convolutions (a 3x3 kernel over one row sees zero padding above and
below, i.e. a 3-tap 1D kernel); a patch of ``(1, p)`` is a transformer token. The
CNN's pooling halves both sides, so it needs ``pool='none'`` on one row. The
generator already standardizes the signals over all 5,000; the spec's mean/std
(transform ``'signal'``: ``(x - mean) / std``, no /255) make the train split
exactly zero-mean, unit-variance.

**Published baselines** (test accuracy on ``mnist1d``, from the paper and the
package's README): logistic regression 32%, MLP 68%, CNN 94%, GRU 91%, human
expert 96%. Their training code's defaults (``get_model_args``): hidden size 256,
Adam at 1e-2, batch 100, 8,000 steps. normlab's counterpart, an MLP with two
hidden ReLU layers of 256 at those settings, is ``configs/mnist1d_mlp.py``, whose
docstring gives what it measures (71.6% for seed 0).
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import tensorflow_datasets as tfds

SIGNAL_SHAPE = (1, 40, 1)  # (height, width, channels)

_CITATION = """\
@inproceedings{greydanus2024mnist1d,
  author = {Greydanus, Sam and Kobak, Dmitry},
  title = {Scaling Down Deep Learning with {MNIST-1D}},
  booktitle = {Proceedings of the 41st International Conference on Machine Learning},
  year = {2024},
}
"""


@dataclasses.dataclass
class Mnist1dConfig(tfds.core.BuilderConfig):
    """A size of MNIST-1D: `num_samples` generated, the first 80% for training."""

    num_samples: int = 5000


def generate(num_samples: int) -> dict[str, np.ndarray]:
    """The package's dataset of `num_samples` signals: {'x', 'y', 'x_test', 'y_test'}.

    Global random state (numpy, Python) is left as it was.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    # The package draws from the legacy global generators; we save and restore them.
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        out = make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    return {k: out[k] for k in ('x', 'y', 'x_test', 'y_test')}


class Mnist1d(tfds.core.GeneratorBasedBuilder):
    """MNIST-1D signals from the mnist1d package's generator: 5k (paper) or 50k examples."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release: mnist1d.data.make_dataset, seed 42.'}
    BUILDER_CONFIGS = [
        Mnist1dConfig(name='5k', description="The paper's 4,000 train / 1,000 test."),
        Mnist1dConfig(name='50k', num_samples=50_000, description='40,000 train / 10,000 test.'),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                'MNIST-1D: length-40 1D signals of the ten digits made by the mnist1d '
                'package (templates, padding, translation, shear, noise), stored as '
                'float32 (1, 40, 1). Train/test split as the package makes it (80/20).'
            ),
            features=tfds.features.FeaturesDict(
                {
                    'image': tfds.features.Tensor(shape=SIGNAL_SHAPE, dtype=np.float32),
                    'label': tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=('image', 'label'),
            homepage='https://github.com/greydanus/mnist1d',
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Generated locally; nothing to download.
        made = generate(self.builder_config.num_samples)
        return {
            'train': self._generate_examples(made['x'], made['y'], first_key=0),
            'test': self._generate_examples(
                made['x_test'], made['y_test'], first_key=len(made['y'])
            ),
        }

    def _generate_examples(self, signals, labels, *, first_key):
        signals = signals.astype(np.float32).reshape(-1, *SIGNAL_SHAPE)
        for i, (signal, label) in enumerate(zip(signals, labels, strict=True)):
            yield first_key + i, {'image': signal, 'label': int(label)}
