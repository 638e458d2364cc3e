"""Images as a GAN sees them: the [-1, 1] space of a tanh generator, and sample grids.

The data pipeline yields images normalized per channel, ``(pixel - mean) / std`` with
pixels in [0, 1] (`normlab.data.DatasetSpec`), at the dataset's own side. A DCGAN
generator ends in ``tanh`` (Radford et al. 2016), so the trainer maps real images to
``2 * pixel - 1`` and, when ``config.image_size`` differs from the dataset's, resizes
them bilinearly. The feature classifier of the evaluation is trained in this space
too, so generated images need no conversion to be evaluated.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from normlab.data import DatasetSpec


@dataclasses.dataclass(frozen=True)
class ImageSpace:
    """Maps the pipeline's normalized images to [-1, 1] images of side `size`."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    native_size: int
    size: int

    @classmethod
    def create(cls, spec: DatasetSpec, image_size: int | None = None) -> ImageSpace:
        native = spec.image_shape[0]
        return cls(spec.mean, spec.std, native, image_size or native)

    @property
    def channels(self) -> int:
        return len(self.mean)

    def _stats(self):
        # (1, 1, 1, C): explicit ranks, no implicit promotion against NHWC images.
        shape = (1, 1, 1, self.channels)
        return jnp.asarray(self.mean).reshape(shape), jnp.asarray(self.std).reshape(shape)

    def _resize(self, images, side: int):
        if images.shape[1] == side:
            return images
        # jax.image.resize antialiases when shrinking (e.g. CelebA to a 32x32 GAN).
        shape = (images.shape[0], side, side, images.shape[3])
        return jax.image.resize(images, shape, method='linear')

    def to_gan(self, images: jax.Array) -> jax.Array:
        """Normalized pipeline images -> [-1, 1] at `size`."""
        mean, std = self._stats()
        return self._resize((images * std + mean) * 2.0 - 1.0, self.size)


def image_grid(images: np.ndarray, rows: int, *, min_cell: int = 32) -> np.ndarray:
    """Tiles ``(N, H, W, C)`` images in [-1, 1] into a uint8 grid with 1-pixel gaps.

    Small images are enlarged by pixel repetition (no smoothing) to at least
    ``min_cell`` pixels a side. Returns ``(height, width)`` for one channel, else
    ``(height, width, 3)``.
    """
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    cols = math.ceil(n / rows)
    scale = max(1, math.ceil(min_cell / h))
    pixels = np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
    pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        grid[1 + r * (h + 1) : (r + 1) * (h + 1), 1 + col * (w + 1) : (col + 1) * (w + 1)] = pixels[
            i
        ]
    return grid[..., 0] if c == 1 else grid


def save_png(path: str, grid: np.ndarray) -> None:
    """Writes a uint8 grid atomically (a crash never leaves half a PNG)."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    tmp = path + '.tmp.png'
    Image.fromarray(grid).save(tmp)
    os.replace(tmp, path)
