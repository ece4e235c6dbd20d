"""One job's generation made over many workers: each call of the engine's generator split into
chunks of samples (:class:`pe_core.generation.Chunked`), one Celery task per chunk.

A job whose largest population has more samples than ``PRIVEVO_GENERATION_CHUNK_SAMPLES``
(:func:`chunked`) asks its generator through :class:`ShardedGeneration`, the job's own worker
being the coordinator. Each call of the engine (the first samples of a label, the lookahead
embeddings of the population, the variations of a label's selected samples):

1. is numbered in its iteration (steps 1, 2, ...; the vote is step 0, :mod:`workers.fanout`):
   the engine makes its calls in a fixed order, so a resumed run numbers them alike;
2. stores its chunks' descriptions and input samples (public: synthetic samples made from
   earlier DP releases) under ``datasets/<dataset>/jobs/<job>/generate/<t>/<step>/<digest>/``;
3. opens one ``shards`` row per chunk and sends one ``privevo.generate_chunk`` task per chunk on
   the job's queue (ids only), then waits; a chunk no worker took within
   ``PRIVEVO_VOTE_CLAIM_AFTER_S``, or whose worker died, is made by the coordinator itself;
4. reads the chunks' outputs in chunk order and deletes the call's files.

A chunk draws from ``default_rng([call seed, chunk index])``, so what a job makes depends on
its seed and the chunk size, never on how many workers made it: the result equals the one
worker's that makes every chunk in order, for a generator that is deterministic given its
seed (drawtext and grammar; a GPU's kernels may differ in the last bits between devices). The
chunk size is recorded in the job's report.

Only a job's generation is public; nothing here touches a private record. Audits and APIs
with per-job state (the ``llm`` API's request caps, which one process must count) keep their
generation in the job's own worker.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Final

import numpy as np
from numpy.typing import NDArray

from pe_core.apis.base import PerJobState, VariationApi
from pe_core.checkpoint import samples_from_npz, samples_to_npz
from pe_core.config import PeJob
from pe_core.generation import Chunk, Chunked, chunk_inputs, run_chunk
from pe_core.samples import Samples
from service.db import (
    Job,
    Shard,
    finish_shard,
)
from service.keys import job_prefix
from service.storage import Storage
from workers.fanout import (
    Fanout,
    await_shards,
    claim_in_task,
    dispatch,
    holding,
    read_npz,
    write_npz,
)
from workers.jobs import JobContext, cached_api, cached_embedder, job_spec

GENERATE_CHUNK_TASK: Final = "privevo.generate_chunk"


def chunked(spec: PeJob, api: VariationApi, chunk_samples: int) -> bool:
    """The size rule: whether a job's generation is split into chunks over workers: when
    ``chunk_samples`` is set (not 0) and the job's largest population is bigger, for an API
    without per-job state."""
    largest = max(spec.num_samples, spec.voted_samples)
    return chunk_samples > 0 and largest > chunk_samples and not isinstance(api, PerJobState)


def generate_prefix(job: Job) -> str:
    """Where a job's fanned-out generation keeps each call's inputs and outputs while made."""
    return f"{job_prefix(job.dataset_id, job.id)}/generate"


class ShardedGeneration:
    """The coordinator's :class:`~pe_core.generation.ChunkRunner` of a fanned-out job, and a
    run callback that follows the iteration the engine is in (to number its calls)."""

    def __init__(
        self,
        context: JobContext,
        fanout: Fanout,
        job: Job,
        spec: PeJob,
        api: VariationApi,
        check: Callable[[], None],
    ) -> None:
        self.context = context
        self.fanout = fanout
        self.job = job
        self.api = api
        self.embed = cached_embedder(spec.embedding, spec.embedding_config).embed
        self.check = check
        self.iteration = 0
        self.step = 0

    def generation(self) -> Chunked:
        """The engine's generation, made by this runner."""
        return Chunked(self, self.fanout.chunk_samples)

    def on_phase(self, iteration: int, phase: str) -> None:
        if iteration != self.iteration:
            self.iteration, self.step = iteration, 0

    def on_iteration(self, report: object) -> None:
        pass

    def run(
        self, chunks: Sequence[Chunk], inputs: Samples | None
    ) -> list[Samples | NDArray[np.float32]]:
        self.step += 1
        t, step, storage = self.iteration, self.step, self.context.storage
        described = [asdict(chunk) for chunk in chunks]
        digest = _call_digest(described, inputs)
        prefix = _call_prefix(self.job, t, step, digest)
        if not storage.exists(f"{prefix}/call.npz"):
            _write_call(storage, prefix, chunks, self.api.label_names, inputs)
        rows = dispatch(
            self.context,
            self.fanout,
            self.job,
            (t, step, len(chunks), digest),
            GENERATE_CHUNK_TASK,
            lambda shard: (self.job.id, t, step, shard),
        )

        def make_here(row: Shard) -> None:
            chunk = chunks[row.shard]
            made = run_chunk(chunk, self.api, self.embed, chunk_inputs(chunk, inputs))
            _finish(self.context, self.job, row, made)

        # The coordinator makes chunks too, from the start: the workers only speed it up.
        rows = await_shards(
            self.context, self.fanout, self.job, rows, self.check, make_here, claim_after_s=0.0
        )
        made = [_read_output(storage, self.job, row) for row in rows]
        storage.delete_prefix(f"{generate_prefix(self.job)}/{t}/{step}")
        return made


def make_chunk(
    context: JobContext, fanout: Fanout, job_id: str, iteration: int, step: int, shard: int
) -> str:
    """The body of the chunk task: makes the chunk unless it is done, claimed by a live worker
    or its job has ended. Returns a status word."""
    claimed = claim_in_task(context, fanout, job_id, iteration, step, shard)
    if isinstance(claimed, str):
        return claimed
    job, row = claimed
    with holding(context, fanout, row):
        prefix = _call_prefix(job, iteration, step, row.synthetic_sha256)
        chunk, label_names, inputs = _read_chunk(context.storage, prefix, shard)
        spec = job_spec(job)
        api = cached_api(spec.api, label_names, spec.api_config)
        embed = cached_embedder(spec.embedding, spec.embedding_config).embed
        made = run_chunk(chunk, api, embed, inputs)
    return "made" if _finish(context, job, row, made) else "superseded"


def _finish(context: JobContext, job: Job, row: Shard, made: Samples | NDArray[np.float32]) -> bool:
    """Stores a chunk's output under a token of its own and marks its row done; whether it
    was the first to (a later one deletes its output)."""
    token = secrets.token_hex(8)
    key = _output_key(job, row, token)
    if isinstance(made, Samples):
        with context.storage.open_write(key) as handle:
            handle.write(samples_to_npz(made))
    else:
        write_npz(context.storage, key, {"embeddings": made})
    with context.sessions() as session:
        done = finish_shard(
            session,
            job.id,
            row.iteration,
            row.shard,
            row.synthetic_sha256,
            partial=token,
            backend=None,
            step=row.step,
        )
    if not done:
        context.storage.delete_prefix(key)
    return done


def _read_output(storage: Storage, job: Job, row: Shard) -> Samples | NDArray[np.float32]:
    assert row.partial is not None
    with storage.open_read(_output_key(job, row, row.partial)) as handle:
        data = handle.read()
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        if npz.files == ["embeddings"]:
            return np.asarray(npz["embeddings"], dtype=np.float32)
    return samples_from_npz(data)


def _call_prefix(job: Job, iteration: int, step: int, digest: str) -> str:
    return f"{generate_prefix(job)}/{iteration}/{step}/{digest[:32]}"


def _output_key(job: Job, row: Shard, token: str) -> str:
    prefix = _call_prefix(job, row.iteration, row.step, row.synthetic_sha256)
    return f"{prefix}/{row.shard}-{token}.npz"


def _call_digest(described: list[dict[str, object]], inputs: Samples | None) -> str:
    """sha256 of a call: its chunks (seed, sizes, parameters) and its inputs' ids and labels,
    which name the samples (every sample of a job has an id of its own)."""
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    if inputs is not None:
        digest.update("\n".join(inputs.ids.tolist()).encode())
        digest.update(np.ascontiguousarray(inputs.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def _write_call(
    storage: Storage,
    prefix: str,
    chunks: Sequence[Chunk],
    label_names: Sequence[str],
    inputs: Samples | None,
) -> None:
    """Stores each chunk's input samples (a task reads its own only), then the call's record,
    whose presence says the call is whole."""
    if inputs is not None:
        for chunk in chunks:
            piece = chunk_inputs(chunk, inputs)
            assert piece is not None
            with storage.open_write(f"{prefix}/inputs-{chunk.index}.npz") as handle:
                handle.write(samples_to_npz(piece))
    record = {"chunks": [asdict(chunk) for chunk in chunks], "label_names": list(label_names)}
    write_npz(storage, f"{prefix}/call.npz", {"call": np.array(json.dumps(record))})


def _read_chunk(
    storage: Storage, prefix: str, index: int
) -> tuple[Chunk, tuple[str, ...], Samples | None]:
    """Chunk ``index`` of a stored call, the call's label names and the chunk's inputs."""
    record = json.loads(str(read_npz(storage, f"{prefix}/call.npz")["call"]))
    chunk = Chunk(**record["chunks"][index])
    inputs = None
    if chunk.kind != "random":
        with storage.open_read(f"{prefix}/inputs-{index}.npz") as handle:
            inputs = samples_from_npz(handle.read())
    return chunk, tuple(record["label_names"]), inputs
