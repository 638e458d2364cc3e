"""Per-dataset facts the input pipelines and trainers need, in one table.

A `DatasetSpec` says what a batch looks like after preprocessing (image shape,
number of classes, normalization), which TFDS splits train and evaluate, and how
the pipeline reads the dataset (held in memory or streamed from disk). It holds
no code: the transforms it names live in `normlab.data.preprocess`.

>>> get_spec('cifar10').image_shape
(32, 32, 3)
>>> get_spec('cifar11')
Traceback (most recent call last):
  ...
ValueError: Unknown dataset 'cifar11'; valid names: celeb_a, cifar10, ...
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What normlab knows about one dataset.

    Attributes:
      name: the TFDS name (`tfds.builder(name)`).
      num_classes: number of labels; 0 for an unlabelled dataset (celeb_a, used for
        GANs), whose batches carry no `'label'`.
      image_shape: (height, width, channels) of a preprocessed image.
      train_split: TFDS split the train iterator repeats over.
      eval_split: TFDS split the eval iterator passes over once.
      mean: per-channel mean of the training pixels scaled to [0, 1]; the pipeline
        yields `(pixel / 255 - mean) / std`. For a float signal (transform
        ``'signal'``) the mean in the signal's own units: `(x - mean) / std`.
      std: per-channel standard deviation (population, over all training pixels).
      transform: key of `normlab.data.preprocess.TRANSFORMS`, the train and eval
        per-example transforms (augmentation lives there).
      shuffle_buffer: None for a dataset small enough to hold in memory, which is
        shuffled exactly (a fresh full permutation every epoch). An int for a dataset
        streamed from disk: its examples stay JPEG-encoded until after sharding and
        are shuffled through a buffer of this many examples, reseeded every epoch.
      manual_download: None when TFDS downloads the dataset itself; else the files a
        user must download by hand into `<data_dir>/downloads/manual` before
        `tfds build`.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    train_split: str
    eval_split: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    transform: str
    shuffle_buffer: int | None = None
    manual_download: str | None = None

    def __post_init__(self):
        channels = self.image_shape[-1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f'{self.name}: mean {self.mean} and std {self.std} need one value per '
                f'channel of image_shape {self.image_shape}'
            )


def _register(*specs: DatasetSpec) -> dict[str, DatasetSpec]:
    table = {}
    for spec in specs:
        if spec.name in table:
            raise ValueError(f'Dataset {spec.name!r} is specified twice')
        table[spec.name] = spec
    return table


# Normalization constants are measured on each training split (pixels in [0, 1]).
# CIFAR's std is the per-pixel one (0.247, ...), not the widely copied 0.2023, ...
# which is a mean of per-image stds. celeb_a maps to [-1, 1] to match a tanh
# generator. ImageNet's are the usual torchvision constants. MNIST-1D's are in the
# generator's units (it standardizes all examples together, so a train split is
# only nearly standard).
SPECS: dict[str, DatasetSpec] = _register(
    DatasetSpec(
        name='digits',
        num_classes=10,
        image_shape=(8, 8, 1),
        train_split='train',
        eval_split='test',
        mean=(0.3054,),
        std=(0.3760,),
        transform='plain',
    ),
    DatasetSpec(
        name='mnist5k',
        num_classes=10,
        image_shape=(28, 28, 1),
        train_split='train',
        eval_split='test',
        mean=(0.1311,),
        std=(0.3083,),
        transform='plain',
    ),
    DatasetSpec(
        name='mnist1d',
        num_classes=10,
        image_shape=(1, 40, 1),
        train_split='train',
        eval_split='test',
        mean=(-0.0003,),
        std=(0.9976,),
        transform='signal',
    ),
    DatasetSpec(
        name='mnist1d/50k',
        num_classes=10,
        image_shape=(1, 40, 1),
        train_split='train',
        eval_split='test',
        mean=(0.0007,),
        std=(1.0003,),
        transform='signal',
    ),
    DatasetSpec(
        name='mnist',
        num_classes=10,
        image_shape=(28, 28, 1),
        train_split='train',
        eval_split='test',
        mean=(0.1307,),
        std=(0.3081,),
        transform='plain',
    ),
    DatasetSpec(
        name='fashion_mnist',
        num_classes=10,
        image_shape=(28, 28, 1),
        train_split='train',
        eval_split='test',
        mean=(0.2860,),
        std=(0.3530,),
        transform='plain',
    ),
    DatasetSpec(
        name='cifar10',
        num_classes=10,
        image_shape=(32, 32, 3),
        train_split='train',
        eval_split='test',
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        transform='cifar',
    ),
    DatasetSpec(
        name='cifar100',
        num_classes=100,
        image_shape=(32, 32, 3),
        train_split='train',
        eval_split='test',
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        transform='cifar',
    ),
    DatasetSpec(
        name='imagenet2012',
        num_classes=1000,
        image_shape=(224, 224, 3),
        train_split='train',
        eval_split='validation',
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        transform='imagenet',
        # ~110 KB per encoded image: about 1.8 GB of host memory per process.
        shuffle_buffer=16_384,
        manual_download='ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar',
    ),
    DatasetSpec(
        name='celeb_a',
        num_classes=0,
        image_shape=(64, 64, 3),
        train_split='train',
        eval_split='test',
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        transform='celeb_a',
        shuffle_buffer=16_384,
    ),
)


def get_spec(name: str) -> DatasetSpec:
    """Returns the `DatasetSpec` of `name`; raises ValueError listing valid names."""
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(
            f'Unknown dataset {name!r}; valid names: {", ".join(sorted(SPECS))}'
        ) from None
