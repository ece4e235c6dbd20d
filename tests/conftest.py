"""Shared fixtures: small real private datasets that need no download."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from pe_core.samples import Samples

pytest_plugins = ["tests.servers"]  # the `server` fixture: a real `privevo serve` process


def digits_28(n_per_label: int | None = None, *, offset: int = 0) -> Samples:
    """scikit-learn's 8x8 handwritten digits upscaled to 28x28 uint8, white on black."""
    digits = load_digits()
    images, labels = digits.images, digits.target
    if n_per_label is not None:
        keep = np.concatenate(
            [np.flatnonzero(labels == c)[offset : offset + n_per_label] for c in range(10)]
        )
        images, labels = images[keep], labels[keep]
    big = np.stack(
        [
            np.asarray(
                Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((20, 20), Image.BILINEAR)
            )
            for img in images
        ]
    )
    canvas = np.zeros((len(big), 28, 28, 1), dtype=np.uint8)
    canvas[:, 4:24, 4:24, 0] = big
    return Samples(
        ids=np.array([f"digit-{offset}-{i}" for i in range(len(big))]),
        labels=labels,
        label_names=tuple(str(c) for c in range(10)),
        images=canvas,
    )


@pytest.fixture(scope="session")
def private_digits() -> Samples:
    return digits_28(60)


@pytest.fixture(scope="session")
def heldout_digits() -> Samples:
    return digits_28(60, offset=100)
