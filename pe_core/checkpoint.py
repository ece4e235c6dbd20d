"""Per-iteration checkpoints: the synthetic population as npz plus versioned JSON, atomically.

A checkpoint holds only DP outputs (the population built from noisy releases) and DP
diagnostics; clean counts and private records never reach it. The JSON is written last and
names the npz's sha256, so a checkpoint whose JSON exists is complete.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pe_core.errors import PrivevoError
from pe_core.fileio import atomic_write_bytes
from pe_core.samples import Samples

CHECKPOINT_VERSION = 2
"""2: the meta of the runner's checkpoints lists the releases the population was built from."""
_PARAM_PREFIX = "param__"


class CheckpointError(PrivevoError):
    """A checkpoint is missing, corrupt or belongs to a different job."""


def samples_to_npz(samples: Samples) -> bytes:
    arrays: dict[str, np.ndarray] = {
        "ids": samples.ids,
        "labels": samples.labels,
        "label_names": np.array(samples.label_names, dtype=np.str_),
    }
    if samples.images is not None:
        arrays["images"] = samples.images
    else:
        arrays["texts"] = np.array(samples.texts, dtype=np.str_)
    for key, value in samples.params.items():
        if value.dtype == object:
            raise CheckpointError(f"param {key!r} has dtype object; use strings or numbers")
        arrays[_PARAM_PREFIX + key] = value
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def samples_from_npz(data: bytes) -> Samples:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return Samples(
            ids=npz["ids"],
            labels=npz["labels"],
            label_names=tuple(npz["label_names"].tolist()),
            images=npz["images"] if "images" in npz.files else None,
            texts=tuple(npz["texts"].tolist()) if "texts" in npz.files else None,
            params={
                key[len(_PARAM_PREFIX) :]: npz[key]
                for key in npz.files
                if key.startswith(_PARAM_PREFIX)
            },
        )


@dataclass(frozen=True)
class Checkpoint:
    """The state after iteration ``iteration`` (0 = the initial population)."""

    iteration: int
    population: Samples
    meta: dict[str, Any]


class CheckpointStore:
    """Reads and writes ``iter_XX.npz`` + ``iter_XX.json`` under one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _paths(self, iteration: int) -> tuple[Path, Path]:
        stem = self.directory / f"iter_{iteration:03d}"
        return stem.with_suffix(".npz"), stem.with_suffix(".json")

    def save(self, checkpoint: Checkpoint) -> None:
        npz_path, json_path = self._paths(checkpoint.iteration)
        data = samples_to_npz(checkpoint.population)
        atomic_write_bytes(npz_path, data)
        record = {
            "version": CHECKPOINT_VERSION,
            "iteration": checkpoint.iteration,
            "population_sha256": hashlib.sha256(data).hexdigest(),
            "meta": checkpoint.meta,
        }
        atomic_write_bytes(json_path, json.dumps(record, indent=2, sort_keys=True).encode())

    def latest(self) -> Checkpoint | None:
        """The highest complete checkpoint, or None when there is none."""
        done = sorted(self.directory.glob("iter_*.json"))
        if not done:
            return None
        return self.load(int(done[-1].stem.split("_")[1]))

    def load(self, iteration: int) -> Checkpoint:
        npz_path, json_path = self._paths(iteration)
        try:
            record = json.loads(json_path.read_text())
            data = npz_path.read_bytes()
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read checkpoint {json_path}: {exc}") from exc
        if record.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{json_path} has version {record.get('version')}, expected {CHECKPOINT_VERSION}"
            )
        if hashlib.sha256(data).hexdigest() != record["population_sha256"]:
            raise CheckpointError(f"{npz_path} does not match the sha256 in {json_path}")
        return Checkpoint(record["iteration"], samples_from_npz(data), record["meta"])
