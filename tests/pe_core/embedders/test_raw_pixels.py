"""Raw-pixel embeddings: layout, area/bilinear resizing and grayscale conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pe_core.embedders.raw_pixels import RawPixelsEmbedder, resize_matrix
from pe_core.samples import Samples


def image_samples(images: np.ndarray) -> Samples:
    n = len(images)
    return Samples(
        ids=[str(i) for i in range(n)], labels=[0] * n, label_names=("x",), images=images
    )


@pytest.fixture
def rgb() -> Samples:
    rng = np.random.default_rng(0)
    return image_samples(rng.integers(0, 256, size=(5, 12, 9, 3), dtype=np.uint8))


def test_default_is_scaled_pixels_in_hwc_order(rgb: Samples) -> None:
    vectors = RawPixelsEmbedder().embed(rgb)
    assert vectors.dtype == np.float32
    assert vectors.shape == (5, 12 * 9 * 3)
    assert rgb.images is not None
    np.testing.assert_allclose(vectors, rgb.images.reshape(5, -1) / 255.0, rtol=1e-6)


def test_integer_downsampling_is_the_block_mean(rgb: Samples) -> None:
    vectors = RawPixelsEmbedder(size=(4, 3)).embed(rgb)
    assert vectors.shape == (5, 4 * 3 * 3)
    assert rgb.images is not None
    blocks = rgb.images.reshape(5, 4, 3, 3, 3, 3).astype(np.float64).mean(axis=(2, 4)) / 255.0
    np.testing.assert_allclose(vectors, blocks.reshape(5, -1), atol=1e-6)


@pytest.mark.parametrize(
    ("size", "mode"), [((5, 4), "area"), ((7, 7), "area"), ((17, 20), "bilinear")]
)
def test_resizing_matches_torch(rgb: Samples, size: tuple[int, int], mode: str) -> None:
    assert rgb.images is not None
    x = torch.from_numpy(rgb.images.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    # torch's "area" is adaptive average pooling: equal to true area weights only where each
    # output pixel covers whole input pixels, so compare area on divisible sizes only.
    if mode == "area":
        x = x[:, :, : size[0] * (12 // size[0]), : size[1] * (9 // size[1])]
        cropped = image_samples(np.ascontiguousarray(rgb.images[:, : x.shape[2], : x.shape[3]]))
    else:
        cropped = rgb
    expected = torch.nn.functional.interpolate(
        x, size=size, mode=mode, **({} if mode == "area" else {"align_corners": False})
    )
    vectors = RawPixelsEmbedder(size=size).embed(cropped)
    np.testing.assert_allclose(
        vectors, expected.permute(0, 2, 3, 1).reshape(5, -1).numpy(), atol=2e-6
    )


def test_resize_matrix_rows_are_weights() -> None:
    for size_in, size_out in [(28, 14), (28, 10), (7, 28), (5, 5), (1, 3)]:
        matrix = resize_matrix(size_in, size_out)
        assert matrix.shape == (size_out, size_in)
        assert (matrix >= 0).all()
        np.testing.assert_allclose(matrix.sum(axis=1), 1.0, rtol=1e-6)


def test_grayscale_matches_pil_luma(rgb: Samples) -> None:
    vectors = RawPixelsEmbedder(grayscale=True).embed(rgb)
    assert vectors.shape == (5, 12 * 9)
    assert rgb.images is not None
    pil = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in rgb.images])
    # PIL rounds to integers; the embedder keeps the exact weighted sum.
    np.testing.assert_allclose(vectors * 255.0, pil.reshape(5, -1), atol=0.51)
    gray = image_samples(pil[..., None])
    np.testing.assert_array_equal(
        RawPixelsEmbedder(grayscale=True).embed(gray), RawPixelsEmbedder().embed(gray)
    )


def test_batches_give_the_same_result(rgb: Samples) -> None:
    whole = RawPixelsEmbedder(size=5).embed(rgb)
    np.testing.assert_array_equal(RawPixelsEmbedder(size=5, batch_size=2).embed(rgb), whole)


def test_bad_inputs() -> None:
    texts = Samples(ids=["a"], labels=[0], label_names=("x",), texts=("hi",))
    with pytest.raises(ValueError, match="embeds images"):
        RawPixelsEmbedder().embed(texts)
    with pytest.raises(ValueError, match="size must be"):
        RawPixelsEmbedder(size=(0, 3))
    with pytest.raises(ValueError, match="batch_size"):
        RawPixelsEmbedder(batch_size=0)
