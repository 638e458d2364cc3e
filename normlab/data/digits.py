"""`digits`: a TFDS dataset over scikit-learn's 8x8 handwritten digits, prepared offline.

scikit-learn ships 1,797 real 8x8 grayscale digits (the test half of the UCI
"Optical Recognition of Handwritten Digits" set, pixel values 0..16) inside its
wheel, so this dataset needs no network: it is normlab's default dataset and the
one every test and smoke run trains on.

Defining the `Digits` class registers it with TFDS under the name `digits`
(`tfds.core.GeneratorBasedBuilder` registers every subclass), so after
`import normlab.data` the usual TFDS calls work:

    builder = tfds.builder('digits', data_dir=data_dir)
    builder.download_and_prepare()  # writes TFRecords; downloads nothing
    ds = builder.as_dataset(split='train')

`normlab.data.pipeline` prepares it automatically on first use.

The split is fixed: a stratified 80/20 split (`sklearn.model_selection.
train_test_split(test_size=0.2, stratify=labels, random_state=0)`), giving
1,437 train and 360 test examples with every class in the same proportion in
both. It is a random split, not a split by writer.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

NUM_TRAIN_EXAMPLES = 1_437
NUM_TEST_EXAMPLES = 360

_CITATION = """\
@misc{alpaydin1998optdigits,
  author = {Alpaydin, E. and Kaynak, C.},
  title = {Optical Recognition of Handwritten Digits},
  year = {1998},
  howpublished = {UCI Machine Learning Repository},
}
"""


def _load_split(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (keys, images, labels) of one split, images uint8 (N, 8, 8, 1) in 0..255.

    Keys are the example's row in `load_digits()`: stable and unique, as TFDS needs.
    """
    # Imported here: scikit-learn is only needed while preparing the dataset.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    keys = np.arange(len(digits.target))
    train_keys, test_keys = train_test_split(
        keys, test_size=0.2, stratify=digits.target, random_state=0
    )
    keys = np.sort({'train': train_keys, 'test': test_keys}[split])
    # Raw values are 0..16 (counts of set pixels in 4x4 blocks of a 32x32 bitmap).
    images = np.round(digits.images[keys] * (255 / 16)).astype(np.uint8)[..., None]
    return keys, images, digits.target[keys]


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 1,797 8x8 handwritten digits, split 1,437 train / 360 test."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release: stratified 80/20 split, random_state=0.'}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                '1,797 8x8 grayscale handwritten digits shipped with scikit-learn '
                '(sklearn.datasets.load_digits), rescaled from 0..16 to 0..255. '
                'Fixed stratified split: 1,437 train, 360 test.'
            ),
            features=tfds.features.FeaturesDict(
                {
                    'image': tfds.features.Image(shape=(8, 8, 1)),
                    'label': tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=('image', 'label'),
            homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset',
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # The data ships with scikit-learn.
        return {split: self._generate_examples(split) for split in ('train', 'test')}

    def _generate_examples(self, split: str):
        keys, images, labels = _load_split(split)
        for key, image, label in zip(keys, images, labels, strict=True):
            yield int(key), {'image': image, 'label': int(label)}
