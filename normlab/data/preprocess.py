"""Per-example image transforms (TensorFlow ops) used by the tf.data pipelines.

A `Transform` pairs a train transform, which may augment, with an eval transform,
which must not. Both end with `(pixel / 255 - spec.mean) / spec.std` (for a float
signal such as MNIST-1D's, `(x - spec.mean) / spec.std`) and return a float32
image of shape `spec.image_shape`.

Augmentation is stateless: a train transform receives `seed`, an int64 tensor of
shape [2], and draws every random choice from it with `tf.random.stateless_*` /
`tf.image.stateless_*` ops. The pipeline derives that seed from (run seed, index
of the example in the global stream), so an example's crop and flip depend only
on where it sits in the run, not on threads, prefetching, process count or on
whether the run was resumed.

Transforms whose `encoded` flag is set take JPEG bytes (a scalar tf.string)
rather than a decoded uint8 image: ImageNet decodes only the crop window
(`tf.io.decode_and_crop_jpeg`), and a streamed dataset's shuffle buffer holds
~10x less memory while examples stay encoded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import tensorflow as tf

from normlab.data.specs import DatasetSpec

TrainFn = Callable[[tf.Tensor, tf.Tensor, DatasetSpec], tf.Tensor]
EvalFn = Callable[[tf.Tensor, DatasetSpec], tf.Tensor]

CIFAR_PADDING = 4  # He et al. 2016: zero-pad 4 pixels, random 32x32 crop, flip.
IMAGENET_CROP_PADDING = 32  # Eval: central 224/(224+32) of the short side (resize 256, crop 224).
CELEB_A_CROP = 140  # Central 140x140 of the 218x178 aligned faces, then resize to 64x64.


@dataclasses.dataclass(frozen=True)
class Transform:
    """A dataset family's train and eval transforms.

    Attributes:
      train: `(image, seed, spec) -> image`, with augmentation drawn from `seed`.
      eval: `(image, spec) -> image`, deterministic.
      encoded: the input image is JPEG bytes, read with `tfds.decode.SkipDecoding()`.
    """

    train: TrainFn
    eval: EvalFn
    encoded: bool = False


def normalize(image: tf.Tensor, spec: DatasetSpec) -> tf.Tensor:
    """Maps pixels in 0..255 (any dtype) to `(pixel / 255 - mean) / std`, float32."""
    image = tf.cast(image, tf.float32) / 255.0
    mean = tf.constant(spec.mean, tf.float32)
    std = tf.constant(spec.std, tf.float32)
    return tf.ensure_shape((image - mean) / std, spec.image_shape)


def standardize(signal: tf.Tensor, spec: DatasetSpec) -> tf.Tensor:
    """Maps a float signal (not pixels: no /255) to `(x - mean) / std`, float32."""
    mean = tf.constant(spec.mean, tf.float32)
    std = tf.constant(spec.std, tf.float32)
    return tf.ensure_shape((tf.cast(signal, tf.float32) - mean) / std, spec.image_shape)


def _cifar_train(image, seed, spec):
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    pad = CIFAR_PADDING
    # Zero (black) padding in pixel space, like torchvision's RandomCrop(32, padding=4).
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(image, size=spec.image_shape, seed=crop_seed)
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return normalize(image, spec)


def _resize(image, spec):
    # Bicubic can overshoot 0..255 slightly; like the reference pipelines we keep it.
    return tf.image.resize(image, spec.image_shape[:2], method='bicubic')


def _imagenet_train(image_bytes, seed, spec):
    """Inception-style crop: random 8%-100% of the area, aspect 3/4..4/3, then flip."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    shape = tf.io.extract_jpeg_shape(image_bytes)
    whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4])
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=whole_image,
        seed=crop_seed,
        min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    # When all 10 attempts fail the op returns the whole image; the reference
    # (TPU ResNet, flax ImageNet example) then falls back to the eval center crop.
    sampling_failed = tf.reduce_all(tf.equal(size, shape))
    offset_y, offset_x, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(size)

    def random_crop():
        window = tf.stack([offset_y, offset_x, height, width])
        return _resize(tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3), spec)

    image = tf.cond(sampling_failed, lambda: _imagenet_center_crop(image_bytes, spec), random_crop)
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return normalize(image, spec)


def _imagenet_center_crop(image_bytes, spec):
    shape = tf.io.extract_jpeg_shape(image_bytes)
    height, width = shape[0], shape[1]
    size = spec.image_shape[0]
    short_side = tf.cast(tf.minimum(height, width), tf.float32)
    crop = tf.maximum(tf.cast(size / (size + IMAGENET_CROP_PADDING) * short_side, tf.int32), 1)
    window = tf.stack([(height - crop + 1) // 2, (width - crop + 1) // 2, crop, crop])
    return _resize(tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3), spec)


def _imagenet_eval(image_bytes, spec):
    return normalize(_imagenet_center_crop(image_bytes, spec), spec)


def _celeb_a(image_bytes, spec):
    shape = tf.io.extract_jpeg_shape(image_bytes)
    height, width = shape[0], shape[1]
    crop = tf.minimum(CELEB_A_CROP, tf.minimum(height, width))
    window = tf.stack([(height - crop) // 2, (width - crop) // 2, crop, crop])
    image = tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)
    # Antialiasing matters when shrinking 140 -> 64; plain bilinear would alias.
    image = tf.image.resize(image, spec.image_shape[:2], method='bilinear', antialias=True)
    return normalize(image, spec)


def _no_augmentation(eval_fn: EvalFn) -> TrainFn:
    return lambda image, seed, spec: eval_fn(image, spec)


TRANSFORMS: dict[str, Transform] = {
    # Digits (8x8, 28x28) are trained as they are: no augmentation.
    'plain': Transform(train=_no_augmentation(normalize), eval=normalize),
    # Float signals (MNIST-1D): the generator's noise and shifts are its augmentation.
    'signal': Transform(train=_no_augmentation(standardize), eval=standardize),
    'cifar': Transform(train=_cifar_train, eval=normalize),
    'imagenet': Transform(train=_imagenet_train, eval=_imagenet_eval, encoded=True),
    # GAN data: the same center crop for training and evaluation, no flip.
    'celeb_a': Transform(train=_no_augmentation(_celeb_a), eval=_celeb_a, encoded=True),
}


def get_transform(spec: DatasetSpec) -> Transform:
    """Returns the `Transform` named by `spec.transform`."""
    try:
        return TRANSFORMS[spec.transform]
    except KeyError:
        raise ValueError(
            f'{spec.name}: unknown transform {spec.transform!r}; '
            f'valid: {", ".join(sorted(TRANSFORMS))}'
        ) from None
