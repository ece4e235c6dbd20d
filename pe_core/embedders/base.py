"""The embedder protocol, its registry and a cache keyed by sample id."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from pe_core.registry import Registry
from pe_core.samples import Modality, Samples


@runtime_checkable
class Embedder(Protocol):
    """Maps samples to float32 vectors of shape (n, dim).

    Requirement: **a record's vector is a function of that record alone, bit for bit.**
    ``embed(D)[i]`` must equal ``embed([D[i]])[0]``, whatever else ``D`` holds and wherever
    record i stands in it. The vote-sensitivity proof (one record moves the vote vector by at
    most its k votes) assumes each private record's votes depend on that record only; if
    adding or removing one record could flip the last bit of another record's vector, then
    near a distance tie one record could move another's vote too. So a private record's tensor
    shapes, thread counts and code path must not depend on the other records, and the other
    rows of its batch must not reach its bits: run fixed-shape batches filled with public
    filler, or one record per call, pin thread counts, and take the same path for 1 and n
    records (see :mod:`pe_core.embedders.batching`). Synthetic samples are public, so they are
    exempt, but every shipped embedder meets the requirement for them as well. A contract test
    checks every registered embedder (``tests/pe_core/embedders/contracts.py``).
    """

    modality: ClassVar[Modality]

    def embed(self, samples: Samples) -> NDArray[np.float32]: ...


EMBEDDER_REGISTRY: Registry[Embedder] = Registry("embedder")


def register_embedder(name: str, factory: Callable[..., Embedder]) -> None:
    EMBEDDER_REGISTRY.register(name, factory)


def create_embedder(name: str, **config: Any) -> Embedder:
    return EMBEDDER_REGISTRY.create(name, **config)


class CachedEmbedder:
    """Wraps an embedder with an in-memory cache keyed by sample id.

    Sample ids are unique per sample content (APIs give every new sample a new id), so a cached
    vector is never stale; and since the inner embedder's vectors do not depend on the other
    samples of a call, a cached vector is the one a fresh call would give, bit for bit.
    """

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.modality = inner.modality
        self._cache: dict[str, NDArray[np.float32]] = {}

    def embed(self, samples: Samples) -> NDArray[np.float32]:
        missing = [i for i, sid in enumerate(samples.ids.tolist()) if sid not in self._cache]
        if missing:
            fresh = self.inner.embed(samples.take(missing))
            for i, vector in zip(missing, fresh, strict=True):
                self._cache[str(samples.ids[i])] = vector
        return np.stack([self._cache[sid] for sid in samples.ids.tolist()]).astype(np.float32)

    def forget(self, keep_ids: set[str]) -> None:
        """Drops every cached vector whose id is not in ``keep_ids`` (bounds memory)."""
        self._cache = {k: v for k, v in self._cache.items() if k in keep_ids}
