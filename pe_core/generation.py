"""How the engine asks its generator for samples: directly, or in chunks that any number of
workers can make with the same result.

The runner makes three kinds of call each iteration (Alg. 1 of arXiv:2305.15560): ``random``
samples of a label (iteration 0), ``variation`` of the selected samples, and the ``lookahead``
embeddings the population is voted by (the mean embedding of L variations of each sample, or
its own embedding with L = 0). A :class:`Generation` answers them:

* :class:`Direct` calls the API and the embedder as they are: one process, every sample from
  the caller's generator in turn. It is the default, and what every job that is not split
  runs, so small jobs' seeded results do not depend on this module.
* :class:`Chunked` draws one seed per call from the caller's generator and splits the call
  into :class:`Chunk` s of at most ``chunk_samples`` samples, chunk ``i`` drawing from
  ``default_rng([seed, i])``. A :class:`ChunkRunner` makes the chunks (:class:`InOrder` here,
  or a fleet of workers: ``workers.fanout``) and the results are joined in chunk order. So the
  output depends on the seed and the chunk size, never on which process made which chunk or in
  which order: a job split over 64 workers gives what one worker running its chunks in order
  gives, bit for bit.

Everything here is public: the generator's samples are post-processing of DP releases and the
public generator; no private record enters a chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from pe_core.apis.base import VariationApi
from pe_core.histogram import lookahead_embeddings
from pe_core.samples import Samples

Embed = Callable[[Samples], NDArray[np.float32]]
ChunkKind = Literal["random", "variation", "lookahead"]
SEED_BITS = 63


class Generation(Protocol):
    """Makes the samples and lookahead embeddings an iteration needs (see the module)."""

    def random(self, label: int, n: int, rng: np.random.Generator) -> Samples:
        """``n`` fresh samples of ``label``."""
        ...

    def variation(self, samples: Samples, degree: float, rng: np.random.Generator) -> Samples:
        """One variation of each sample, in order."""
        ...

    def lookahead(
        self,
        samples: Samples,
        *,
        count: int,
        degree: float,
        rng: np.random.Generator,
        embed: Embed,
    ) -> NDArray[np.float32]:
        """The embeddings the samples are voted by: the mean over ``count`` variations at
        ``degree`` (``pe_core.histogram.lookahead_embeddings``); with ``count`` 0 their own,
        by ``embed``."""
        ...


@dataclass(frozen=True)
class Direct:
    """The generator and embedder called as they are (the default)."""

    api: VariationApi

    def random(self, label: int, n: int, rng: np.random.Generator) -> Samples:
        return self.api.random(label, n, rng)

    def variation(self, samples: Samples, degree: float, rng: np.random.Generator) -> Samples:
        return self.api.variation(samples, degree, rng)

    def lookahead(
        self,
        samples: Samples,
        *,
        count: int,
        degree: float,
        rng: np.random.Generator,
        embed: Embed,
    ) -> NDArray[np.float32]:
        return lookahead_embeddings(
            self.api, embed, samples, lookahead=count, degree=degree, rng=rng
        )


@dataclass(frozen=True)
class Chunk:
    """One chunk of a call: what it makes and the generator it draws from.

    Attributes:
        kind: the call it is part of.
        seed: the call's seed (drawn once from the caller's generator).
        index: the chunk's place in the call; it draws from ``default_rng([seed, index])``.
        start: the first of the call's samples it covers (its input slice starts there).
        size: how many samples it makes (``random``) or covers.
        label: the label a ``random`` chunk makes; 0 otherwise.
        degree: the variation degree (``variation``, ``lookahead``).
        count: the variations per sample of a ``lookahead`` chunk (0: embeddings only).
    """

    kind: ChunkKind
    seed: int
    index: int
    start: int
    size: int
    label: int = 0
    degree: float = 0.0
    count: int = 0


def run_chunk(
    chunk: Chunk, api: VariationApi, embed: Embed, inputs: Samples | None
) -> Samples | NDArray[np.float32]:
    """Makes one chunk: samples (``random``, ``variation``) or embeddings (``lookahead``).

    ``inputs`` are the chunk's own samples (the call's, sliced), None for ``random``; ``embed``
    is the embedder without any cache (a worker's chunk shares nothing with the job's).
    """
    rng = np.random.default_rng([chunk.seed, chunk.index])
    if chunk.kind == "random":
        return api.random(chunk.label, chunk.size, rng)
    if inputs is None or len(inputs) != chunk.size:
        raise ValueError(f"a {chunk.kind} chunk needs its {chunk.size} input samples")
    if chunk.kind == "variation":
        return api.variation(inputs, chunk.degree, rng)
    return lookahead_embeddings(
        api, embed, inputs, lookahead=chunk.count, degree=chunk.degree, rng=rng
    )


class ChunkRunner(Protocol):
    """Makes the chunks of one call and returns their results in chunk order."""

    def run(
        self, chunks: Sequence[Chunk], inputs: Samples | None
    ) -> list[Samples | NDArray[np.float32]]:
        """``inputs``: the call's samples (each chunk covers ``[start, start + size)``), or
        None for ``random``."""
        ...


@dataclass(frozen=True)
class InOrder:
    """Makes every chunk here, one after another."""

    api: VariationApi
    embed: Embed

    def run(
        self, chunks: Sequence[Chunk], inputs: Samples | None
    ) -> list[Samples | NDArray[np.float32]]:
        return [
            run_chunk(chunk, self.api, self.embed, chunk_inputs(chunk, inputs)) for chunk in chunks
        ]


def chunk_inputs(chunk: Chunk, inputs: Samples | None) -> Samples | None:
    """The slice of the call's samples that ``chunk`` covers (None for ``random``)."""
    if inputs is None:
        return None
    return inputs.take(np.arange(chunk.start, chunk.start + chunk.size))


@dataclass(frozen=True)
class Chunked:
    """Every call split into chunks of at most ``chunk_samples`` samples (see the module).

    Attributes:
        runner: makes the chunks.
        chunk_samples: the most samples one chunk makes or covers; part of the result, so
            fixed per job (a setting, recorded), never derived from the number of workers.
    """

    runner: ChunkRunner
    chunk_samples: int

    def __post_init__(self) -> None:
        if self.chunk_samples < 1:
            raise ValueError(f"chunk_samples must be at least 1, got {self.chunk_samples}")

    def random(self, label: int, n: int, rng: np.random.Generator) -> Samples:
        chunks = self._chunks("random", n, rng, label=label)
        return _joined_samples(self.runner.run(chunks, None), n)

    def variation(self, samples: Samples, degree: float, rng: np.random.Generator) -> Samples:
        chunks = self._chunks("variation", len(samples), rng, degree=degree)
        return _joined_samples(self.runner.run(chunks, samples), len(samples))

    def lookahead(
        self,
        samples: Samples,
        *,
        count: int,
        degree: float,
        rng: np.random.Generator,
        embed: Embed,
    ) -> NDArray[np.float32]:
        # Each chunk embeds with its runner's embedder, the same model as ``embed``.
        chunks = self._chunks("lookahead", len(samples), rng, degree=degree, count=count)
        parts = [part for part in self.runner.run(chunks, samples) if isinstance(part, np.ndarray)]
        if len(parts) != len(chunks):
            raise TypeError("a lookahead chunk returned samples, not embeddings")
        vectors = np.concatenate(parts)
        if len(vectors) != len(samples):
            raise ValueError(f"the chunks embedded {len(vectors)} samples of {len(samples)}")
        return vectors.astype(np.float32, copy=False)

    def _chunks(
        self,
        kind: ChunkKind,
        n: int,
        rng: np.random.Generator,
        *,
        label: int = 0,
        degree: float = 0.0,
        count: int = 0,
    ) -> list[Chunk]:
        """The chunks of a call of ``n`` samples, drawing its seed from ``rng`` (one draw)."""
        seed = int(rng.integers(2**SEED_BITS))
        starts = range(0, n, self.chunk_samples) if n else range(1)
        return [
            Chunk(
                kind, seed, index, start, min(self.chunk_samples, n - start), label, degree, count
            )
            for index, start in enumerate(starts)
        ]


def _joined_samples(parts: Sequence[Samples | NDArray[np.float32]], n: int) -> Samples:
    samples = [part for part in parts if isinstance(part, Samples)]
    if len(samples) != len(parts):
        raise TypeError("a sample chunk returned embeddings, not samples")
    joined = Samples.concat(samples)
    if len(joined) != n:
        raise ValueError(f"the chunks made {len(joined)} samples, not {n}")
    return joined
