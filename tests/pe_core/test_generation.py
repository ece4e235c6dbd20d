"""Generation in chunks: the same samples and embeddings whichever process makes which chunk,
in whatever order, and a whole run that does not depend on who made its chunks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from numpy.typing import NDArray

from pe_core.apis import create_api
from pe_core.config import PeJob
from pe_core.embedders import create_embedder
from pe_core.generation import Chunk, Chunked, Direct, InOrder, chunk_inputs, run_chunk
from pe_core.privacy import InsecureSeededSampler
from pe_core.runner import PrivateEvolution
from pe_core.samples import Samples

LABELS = tuple(str(digit) for digit in range(10))


def api():
    return create_api("drawtext", label_names=LABELS)


def embed(samples: Samples) -> NDArray[np.float32]:
    return create_embedder("raw-pixels", size=14).embed(samples)


class Shuffled:
    """Makes the chunks in a shuffled order, each with an API and embedder of its own (as
    workers would), and returns them in chunk order."""

    def __init__(self, seed: int) -> None:
        self.order = np.random.default_rng(seed)
        self.chunks_made = 0

    def run(
        self, chunks: Sequence[Chunk], inputs: Samples | None
    ) -> list[Samples | NDArray[np.float32]]:
        made: dict[int, Samples | NDArray[np.float32]] = {}
        for i in self.order.permutation(len(chunks)):
            made[int(i)] = run_chunk(chunks[i], api(), embed, chunk_inputs(chunks[i], inputs))
            self.chunks_made += 1
        return [made[i] for i in range(len(chunks))]


def same(a: Samples, b: Samples) -> None:
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.ids, b.ids)


def test_chunks_cover_each_call_once_and_draw_one_seed_from_the_caller() -> None:
    chunked = Chunked(InOrder(api(), embed), chunk_samples=4)
    rng = np.random.default_rng(1)
    chunks = chunked._chunks("variation", 10, rng, degree=0.5)
    assert [(c.index, c.start, c.size) for c in chunks] == [(0, 0, 4), (1, 4, 4), (2, 8, 2)]
    assert len({c.seed for c in chunks}) == 1
    expected = np.random.default_rng(1)
    expected.integers(2**63)
    assert rng.integers(2**63) == expected.integers(2**63)  # exactly one draw was taken
    assert [c.size for c in chunked._chunks("random", 0, rng)] == [0]
    with pytest.raises(ValueError, match="at least 1"):
        Chunked(InOrder(api(), embed), chunk_samples=0)


def test_chunks_made_anywhere_in_any_order_give_the_same_samples() -> None:
    in_order = Chunked(InOrder(api(), embed), chunk_samples=7)
    shuffled = Chunked(Shuffled(seed=3), chunk_samples=7)
    fresh = in_order.random(2, 30, np.random.default_rng(5))
    assert len(fresh) == 30 and set(fresh.labels.tolist()) == {2}
    assert len(set(fresh.ids.tolist())) == 30  # chunks never repeat an id
    same(fresh, shuffled.random(2, 30, np.random.default_rng(5)))
    varied = in_order.variation(fresh, 0.5, np.random.default_rng(6))
    same(varied, shuffled.variation(fresh, 0.5, np.random.default_rng(6)))
    assert not np.array_equal(varied.images, fresh.images)
    for count in (0, 3):
        np.testing.assert_array_equal(
            in_order.lookahead(
                fresh, count=count, degree=0.5, rng=np.random.default_rng(7), embed=embed
            ),
            shuffled.lookahead(
                fresh, count=count, degree=0.5, rng=np.random.default_rng(7), embed=embed
            ),
        )
    np.testing.assert_array_equal(
        in_order.lookahead(fresh, count=0, degree=0.5, rng=np.random.default_rng(7), embed=embed),
        embed(fresh),
    )


def test_direct_is_the_api_itself() -> None:
    direct = Direct(api())
    same(
        direct.random(1, 5, np.random.default_rng(2)), api().random(1, 5, np.random.default_rng(2))
    )


def test_a_run_does_not_depend_on_who_made_its_chunks(tmp_path, private_digits) -> None:
    job = PeJob(
        epsilon=5.0,
        iterations=2,
        num_samples=60,
        lookahead=2,
        insecure_test_noise=True,
        label_fractions="uniform",
        nn_backend="numpy-blocked",
        embedding_config={"size": 14},
    )

    def run(folder: str, runner) -> Samples:
        engine = PrivateEvolution(
            job,
            api=api(),
            embedder=create_embedder("raw-pixels", size=14),
            noise=lambda key: InsecureSeededSampler(abs(hash(key)) % 2**31),
            state_dir=tmp_path / folder,
            seed=7,
            generation=Chunked(runner, chunk_samples=8),
        )
        return engine.run(private_digits).population

    spread = Shuffled(seed=11)
    same(run("in-order", InOrder(api(), embed)), run("spread", spread))
    assert spread.chunks_made > 20
