"""Raw-pixel embeddings: scaled pixel values, optionally downsampled and converted to gray.

PE's votes are L2 nearest neighbours in embedding space; on small, aligned images (digits) raw
pixels are a cheap and surprisingly good space, and unlike a network they run at memory speed.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from pe_core.samples import Modality, Samples

# ITU-R BT.601 luma weights, the ones PIL's "L" conversion uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def resize_matrix(size_in: int, size_out: int) -> NDArray[np.float32]:
    """Row-stochastic (size_out, size_in) matrix that resamples one image axis.

    Shrinking uses area averaging: output pixel i covers input interval [i*s, (i+1)*s) with
    s = size_in / size_out, weighted by overlap (OpenCV's INTER_AREA), so it never aliases.
    Growing uses bilinear interpolation between pixel centres (half-pixel convention, edges
    clamped), matching ``torch.nn.functional.interpolate(..., align_corners=False)``.
    """
    if size_in < 1 or size_out < 1:
        raise ValueError(f"sizes must be positive, got {size_in} -> {size_out}")
    matrix = np.zeros((size_out, size_in), dtype=np.float64)
    scale = size_in / size_out
    if size_out <= size_in:
        for i in range(size_out):
            start, stop = i * scale, (i + 1) * scale
            for j in range(int(np.floor(start)), min(int(np.ceil(stop)), size_in)):
                matrix[i, j] = min(stop, j + 1) - max(start, j)
            matrix[i] /= scale
    else:
        centres = np.clip((np.arange(size_out) + 0.5) * scale - 0.5, 0, size_in - 1)
        low = np.floor(centres).astype(np.int64)
        high = np.minimum(low + 1, size_in - 1)
        frac = centres - low
        rows = np.arange(size_out)
        np.add.at(matrix, (rows, low), 1 - frac)
        np.add.at(matrix, (rows, high), frac)
    return matrix.astype(np.float32)


class RawPixelsEmbedder:
    """Embeds images as their pixel values / 255, flattened in (H, W, C) order.

    Args:
        size: output (height, width), or one int for a square; None keeps the input size.
        grayscale: convert RGB to one luma channel first (grayscale input stays as it is).
        batch_size: images converted at a time; bounds the float32 working memory.

    Output dimension: size_h * size_w * C, C = 1 for grayscale output, else the input's C.
    """

    modality: ClassVar[Modality] = "image"

    def __init__(
        self,
        size: int | tuple[int, int] | None = None,
        grayscale: bool = False,
        batch_size: int = 4096,
    ) -> None:
        if isinstance(size, int):
            size = (size, size)
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"size must be a positive int or (height, width), got {size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.grayscale = grayscale
        self.batch_size = batch_size

    def embed(self, samples: Samples) -> NDArray[np.float32]:
        """Returns float32 (n, d) vectors with values in [0, 1]."""
        if samples.images is None:
            raise ValueError("raw-pixels embeds images, but got text samples")
        images = samples.images
        _, height, width, channels = images.shape
        if self.grayscale and channels not in (1, 3):
            raise ValueError(f"grayscale conversion needs 1 or 3 channels, got {channels}")
        out_h, out_w = self.size or (height, width)
        out_c = 1 if self.grayscale else channels
        rows = resize_matrix(height, out_h) if out_h != height else None
        cols = resize_matrix(width, out_w) if out_w != width else None
        result = np.empty((len(images), out_h * out_w * out_c), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size].astype(np.float32) / 255.0
            if self.grayscale and channels == 3:
                batch = (batch @ _LUMA)[..., None]
            n, h, w, c = batch.shape
            if rows is not None:
                batch = (rows @ batch.reshape(n, h, w * c)).reshape(n, out_h, w, c)
            if cols is not None:
                batch = (cols @ batch.reshape(n * out_h, w, c)).reshape(n, out_h, out_w, c)
            result[start : start + len(batch)] = batch.reshape(len(batch), -1)
        return result
