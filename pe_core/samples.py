"""Typed, immutable sample containers passed between PE stages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import numpy as np
from numpy.typing import NDArray

Modality = Literal["image", "text"]


def _frozen(array: NDArray) -> NDArray:
    array = np.ascontiguousarray(array)
    array.flags.writeable = False
    return array


def new_ids(rng: np.random.Generator, n: int) -> NDArray[np.str_]:
    """Returns n random 64-bit hex ids drawn from rng (unique with overwhelming probability)."""
    raw = rng.integers(0, 2**63, size=n, dtype=np.int64)
    return np.array([f"{value:016x}" for value in raw.tolist()], dtype=np.str_)


@dataclass(frozen=True, eq=False)
class Samples:
    """A batch of labelled samples, images or texts, with optional generator parameters.

    Attributes:
        ids: (n,) unique string ids; embedding caches are keyed by them.
        labels: (n,) int64 label indices into ``label_names``.
        label_names: the public label set, in index order.
        images: (n, H, W, C) uint8 images, or None for texts.
        texts: n strings, or None for images.
        params: per-sample generator parameters, columnar: each value has length n. APIs whose
            variation acts on parameters (simulators) keep them here.
        users: (n,) the user each record belongs to, for private data whose unit of privacy is
            one user (PRIVATE, like the records); None otherwise and for synthetic samples.
    """

    ids: NDArray[np.str_]
    labels: NDArray[np.int64]
    label_names: tuple[str, ...]
    images: NDArray[np.uint8] | None = None
    texts: tuple[str, ...] | None = None
    params: Mapping[str, NDArray] = field(default_factory=dict)
    users: NDArray[np.str_] | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        object.__setattr__(self, "ids", _frozen(np.asarray(self.ids, dtype=np.str_)))
        object.__setattr__(self, "labels", _frozen(np.asarray(self.labels, dtype=np.int64)))
        object.__setattr__(self, "label_names", tuple(self.label_names))
        if (self.images is None) == (self.texts is None):
            raise ValueError("Samples holds exactly one of images or texts")
        if self.images is not None:
            images = np.asarray(self.images)
            if images.dtype != np.uint8 or images.ndim != 4 or len(images) != n:
                raise ValueError(
                    f"images must be uint8 (n, H, W, C) with n={n}, "
                    f"got {images.dtype} {images.shape}"
                )
            object.__setattr__(self, "images", _frozen(images))
        if self.texts is not None:
            object.__setattr__(self, "texts", tuple(str(t) for t in self.texts))
            if len(self.texts) != n:
                raise ValueError(f"got {len(self.texts)} texts for {n} ids")
        if self.labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {self.labels.shape}")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.label_names)):
            raise ValueError(f"labels must lie in [0, {len(self.label_names)})")
        params = {}
        for key, value in self.params.items():
            value = np.asarray(value)
            if len(value) != n:
                raise ValueError(f"param {key!r} has length {len(value)}, expected {n}")
            params[key] = _frozen(value)
        object.__setattr__(self, "params", MappingProxyType(params))
        if self.users is not None:
            users = np.asarray(self.users, dtype=np.str_)
            if users.shape != (n,):
                raise ValueError(f"users must have shape ({n},), got {users.shape}")
            object.__setattr__(self, "users", _frozen(users))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def modality(self) -> Modality:
        return "image" if self.images is not None else "text"

    def take(self, indices: Sequence[int] | NDArray[np.integer]) -> Samples:
        """Returns the samples at ``indices`` (repeats allowed), ids unchanged."""
        idx = np.asarray(indices, dtype=np.int64)
        return Samples(
            ids=self.ids[idx],
            labels=self.labels[idx],
            label_names=self.label_names,
            images=None if self.images is None else self.images[idx],
            texts=None if self.texts is None else tuple(self.texts[i] for i in idx.tolist()),
            params={key: value[idx] for key, value in self.params.items()},
            users=None if self.users is None else self.users[idx],
        )

    def with_label(self, label: int) -> Samples:
        return self.take(np.flatnonzero(self.labels == label))

    def with_ids(self, ids: NDArray[np.str_]) -> Samples:
        return Samples(
            ids=ids,
            labels=self.labels,
            label_names=self.label_names,
            images=self.images,
            texts=self.texts,
            params=dict(self.params),
            users=self.users,
        )

    def with_users(self, users: Sequence[str] | NDArray[np.str_]) -> Samples:
        """The same records, each belonging to the user at its position in ``users``."""
        return Samples(
            ids=self.ids,
            labels=self.labels,
            label_names=self.label_names,
            images=self.images,
            texts=self.texts,
            params=dict(self.params),
            users=np.asarray(users, dtype=np.str_),
        )

    @staticmethod
    def concat(parts: Sequence[Samples]) -> Samples:
        """Concatenates batches that share modality, label set and parameter columns."""
        if not parts:
            raise ValueError("concat needs at least one batch")
        first = parts[0]
        for part in parts[1:]:
            if part.label_names != first.label_names or part.modality != first.modality:
                raise ValueError("cannot concat samples with different label sets or modalities")
            if set(part.params) != set(first.params):
                raise ValueError("cannot concat samples with different parameter columns")
            if (part.users is None) != (first.users is None):
                raise ValueError("cannot concat samples with and without users")
        return Samples(
            ids=np.concatenate([p.ids for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            label_names=first.label_names,
            images=None
            if first.images is None
            else np.concatenate([p.images for p in parts if p.images is not None]),
            texts=None if first.texts is None else tuple(t for p in parts for t in p.texts or ()),
            params={k: np.concatenate([p.params[k] for p in parts]) for k in first.params},
            users=None
            if first.users is None
            else np.concatenate([p.users for p in parts if p.users is not None]),
        )


@dataclass(frozen=True)
class DataShape:
    """The public schema of a dataset.

    Attributes:
        modality: "image" or "text".
        labels: the public label set the job runs on (declared, or the dataset's label values).
        image_shape: (height, width, channels) of every image; None for texts.
        has_users: whether the records name their users (a user column), so that the unit of
            privacy can be one user.
    """

    modality: Modality
    labels: tuple[str, ...]
    image_shape: tuple[int, int, int] | None = None
    has_users: bool = False

    @classmethod
    def of(cls, samples: Samples) -> DataShape:
        """The schema of loaded records (their shape and label set, no statistic of them)."""
        shape = None if samples.images is None else tuple(int(n) for n in samples.images.shape[1:])
        return cls(samples.modality, samples.label_names, shape, samples.users is not None)  # type: ignore[arg-type]
