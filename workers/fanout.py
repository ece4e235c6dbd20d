"""One job's vote counted over many workers: shards of the private records, summed exactly.

A job whose dataset has more records than ``PRIVEVO_VOTE_SHARD_RECORDS`` splits them into
``ceil(records / that)`` shards (:func:`pe_core.votes.shard_of`: each record in exactly one
shard, each user's records in one shard). Each iteration, the job's own worker (the
coordinator, :class:`ShardedVotes`):

1. stores the synthetic embeddings the records vote among (public: they are made from earlier
   DP releases and the public generator) under ``votes/<t>/<digest>/``;
2. opens one ``shards`` row per shard in the database (step 0) and sends one
   ``privevo.vote_shard`` task per shard on the job's queue. The message and the task's return
   value carry ids and a status word only, never counts: Celery logs both;
3. waits for every row to be done. A shard no worker took within ``PRIVEVO_VOTE_CLAIM_AFTER_S``,
   or whose worker stopped renewing its claim for ``PRIVEVO_STALE_AFTER_S``, is counted by the
   coordinator itself, so a lost shard is redone and a job never waits on a busy queue forever;
4. reads each shard's partial histogram, checks that the shards hold exactly the dataset's
   records, and returns their exact integer sum to the engine, which alone draws the noise and
   records the release in the ledger before anything uses it;
5. once the release is recorded, deletes the iteration's partials and synthetic set.

A shard's worker (:func:`count_shard`) claims its row, embeds its records once per (dataset,
embedder, shard plan), caching the embeddings under the dataset's prefix, counts their votes and
stores the partial under a token of its own, then marks the row done with that token. A
redelivered or retried task finds the row done and stops; a worker that finishes a shard another
worker finished first deletes its own partial, so nothing is counted twice.

Partial histograms and cached embeddings are clean private data: they live only in the
service's storage under ``datasets/<dataset>/``, which encrypts them with the dataset's data
key when encryption at rest is on and which a purge deletes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from numpy.typing import NDArray

from pe_core.apis.base import VariationApi
from pe_core.config import PeJob
from pe_core.samples import Samples
from pe_core.votes import (
    PrivateVectors,
    backend_for,
    count_votes,
    prepare_private,
    shard_of,
)
from service.db import (
    FINAL_STATUSES,
    Job,
    Shard,
    claim_shard,
    finish_shard,
    get_dataset,
    open_shards,
    release_claim,
    renew_claim,
    shard_rows,
)
from service.db.models import utcnow
from service.db.shards import VOTE
from service.keys import job_prefix
from service.storage import ObjectNotFoundError, Storage
from workers.jobs import JobContext, cached_embedder, job_spec, load_job, load_private
from workers.lease import is_gone, periodically, process_name

if TYPE_CHECKING:
    from workers.chunks import ShardedGeneration

logger = logging.getLogger(__name__)

VOTE_SHARD_TASK: Final = "privevo.vote_shard"
# The coordinator reads the shard rows again after 10 ms, doubling the wait while nothing
# changes up to 0.1 s: a quick vote is not held up by a long poll, and a long vote costs the
# database one small read per job every 0.1 s.
FIRST_POLL_S: Final = 0.01
MAX_POLL_S: Final = 0.1

Send = Callable[[str, tuple[object, ...], str], None]
"""Sends a task by name, with its arguments (ids and numbers only), to a queue."""


def shard_count(records: int, shard_records: int) -> int:
    """The size rule: 1 (the job's worker counts every vote) when ``shard_records`` is 0 or the
    dataset has at most that many records, else ``ceil(records / shard_records)`` shards."""
    if shard_records == 0 or records <= shard_records:
        return 1
    return math.ceil(records / shard_records)


@dataclass(frozen=True)
class Fanout:
    """How a worker fans votes out (``Settings.vote_shard_records`` and the rest).

    Attributes:
        shard_records: the size rule's records per shard (0: never fan out).
        claim_after_s: how long a shard waits for a worker before the coordinator takes it.
        stale_after_s: how old a claim may be before its worker is taken for dead.
        renew_s: how often a worker renews its claim while it works.
        send: sends a shard's task.
        chunk_samples: the generation's size rule (:mod:`workers.chunks`): the most samples
            one chunk makes (0: never fan generation out).
    """

    shard_records: int
    claim_after_s: float
    stale_after_s: float
    renew_s: float
    send: Send
    chunk_samples: int = 0

    def counter(
        self,
        context: JobContext,
        job: Job,
        spec: PeJob,
        private: Samples,
        check: Callable[[], None],
    ) -> ShardedVotes | None:
        """The counter of a job whose records the size rule splits, else None (count locally).

        ``check`` is called while the coordinator waits, and raises to stop it (past the time
        limit, or once the job is canceled)."""
        shards = shard_count(len(private), self.shard_records)
        if shards == 1:
            return None
        return ShardedVotes(context, self, job, spec, private, shards, check)

    def generation(
        self,
        context: JobContext,
        job: Job,
        spec: PeJob,
        api: VariationApi,
        check: Callable[[], None],
    ) -> ShardedGeneration | None:
        """The generation of a job whose populations the size rule splits, else None (the
        engine asks ``api`` directly). ``check`` as for :meth:`counter`."""
        from workers.chunks import ShardedGeneration, chunked  # it builds on this module

        if not chunked(spec, api, self.chunk_samples):
            return None
        return ShardedGeneration(context, self, job, spec, api, check)


def votes_prefix(job: Job) -> str:
    """Where a job's fanned-out votes keep their synthetic sets and partials while counted."""
    return f"{job_prefix(job.dataset_id, job.id)}/votes"


def synthetic_digest(synthetic: NDArray[np.float32], labels: NDArray[np.int64]) -> str:
    """sha256 of the synthetic embeddings and labels that a vote counts against."""
    digest = hashlib.sha256(f"{synthetic.shape}|{labels.shape}|".encode())
    digest.update(np.ascontiguousarray(synthetic, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def _iteration_prefix(job: Job, iteration: int, digest: str) -> str:
    return f"{votes_prefix(job)}/{iteration}/{digest[:32]}"


def _partial_key(job: Job, row: Shard, token: str) -> str:
    return f"{_iteration_prefix(job, row.iteration, row.synthetic_sha256)}/{row.shard}-{token}.npz"


class ShardedVotes:
    """The coordinator's :class:`~pe_core.votes.VoteCounter` of a fanned-out job."""

    def __init__(
        self,
        context: JobContext,
        fanout: Fanout,
        job: Job,
        spec: PeJob,
        private: Samples,
        shards: int,
        check: Callable[[], None],
    ) -> None:
        self.context = context
        self.fanout = fanout
        self.job = job
        self.shards = shards
        self.check = check
        # Counted here from the coordinator's own copy: what each shard must report holding.
        self.sizes = np.bincount(shard_of(private, shards, spec.privacy_unit), minlength=shards)
        self.backends: set[str] = set()
        self.held = Held()

    @property
    def backend_name(self) -> str | None:
        if not self.backends:
            return None
        return f"{', '.join(sorted(self.backends))} over {self.shards} shards"

    def counts(
        self, iteration: int, synthetic: NDArray[np.float32], labels: NDArray[np.int64]
    ) -> NDArray[np.int64]:
        storage = self.context.storage
        digest = synthetic_digest(synthetic, labels)
        key = f"{_iteration_prefix(self.job, iteration, digest)}/synthetic.npz"
        if not storage.exists(key):
            write_npz(storage, key, {"synthetic": synthetic, "labels": labels})
        self.held.synthetic = (digest, synthetic, labels)
        rows = dispatch(
            self.context,
            self.fanout,
            self.job,
            (iteration, VOTE, self.shards, digest),
            VOTE_SHARD_TASK,
            lambda shard: (self.job.id, iteration, shard),
        )
        rows = await_shards(
            self.context,
            self.fanout,
            self.job,
            rows,
            self.check,
            lambda row: count_claimed(self.context, self.fanout, self.job, row, self.held),
            claim_after_s=self.fanout.claim_after_s,
        )
        return self._sum(rows, len(synthetic))

    def _sum(self, rows: list[Shard], m: int) -> NDArray[np.int64]:
        """The exact sum of the shards' partials, after checking they cover the records once.

        Raises:
            AssertionError: a shard is missing, repeated or holds other records than the plan
                gives it (a bug: counting a record twice would double its sensitivity).
        """
        if sorted(row.shard for row in rows) != list(range(self.shards)):
            raise AssertionError("the shards of the vote are not exactly 0 .. shards - 1")
        total = np.zeros(m, dtype=np.int64)
        for row in rows:
            assert row.partial is not None
            arrays = read_npz(self.context.storage, _partial_key(self.job, row, row.partial))
            counts, records = arrays["counts"], int(arrays["records"])
            if counts.shape != (m,) or records != self.sizes[row.shard]:
                raise AssertionError(
                    f"shard {row.shard} counted {records} records into {counts.shape} bins; "
                    f"the plan gives it {self.sizes[row.shard]} records and {m} bins"
                )
            total += counts
            if row.backend is not None:
                self.backends.add(row.backend)
        return total

    def released(self, iteration: int) -> None:
        # The release is in the ledger: the clean partials are no longer needed by anyone.
        self.held.synthetic = None
        self.context.storage.delete_prefix(f"{votes_prefix(self.job)}/{iteration}")


def dispatch(
    context: JobContext,
    fanout: Fanout,
    job: Job,
    shards: tuple[int, int, int, str],
    task: str,
    args: Callable[[int], tuple[object, ...]],
) -> list[Shard]:
    """Opens the shards of one step, ``(iteration, step, count, digest of their input)``, and
    sends ``task`` with ``args(shard)`` for each shard not done yet; returns their rows."""
    iteration, step, count, digest = shards
    with context.sessions() as session:
        open_shards(session, job.id, iteration, count, digest, step=step)
        rows = shard_rows(session, job.id, iteration, step=step)
    for row in rows:
        if row.done_at is None:
            _send_task(fanout, task, args(row.shard), job)
    return rows


def _send_task(fanout: Fanout, task: str, args: tuple[object, ...], job: Job) -> None:
    """Sends a shard's task on the job's queue; a broker that does not take it only slows the
    job, since the job's worker takes the shard itself once it has waited for a worker."""
    try:
        fanout.send(task, args, job.queue)
    except Exception as exc:
        logger.warning(
            "job %s: the %s task %s was not sent (%s); the job's worker takes it after %g s",
            job.id,
            task,
            args[1:],
            type(exc).__name__,
            fanout.claim_after_s,
        )


def await_shards(
    context: JobContext,
    fanout: Fanout,
    job: Job,
    rows: list[Shard],
    check: Callable[[], None],
    work_here: Callable[[Shard], object],
    *,
    claim_after_s: float,
) -> list[Shard]:
    """Waits until every shard of ``rows`` (one step of one iteration) is done and returns
    their rows. A shard no worker took within ``claim_after_s`` of its opening, or whose
    worker stopped renewing its claim for ``fanout.stale_after_s``, is claimed here and done
    by ``work_here``. ``check`` is called between looks and raises to stop waiting."""
    iteration, step = rows[0].iteration, rows[0].step
    wait = FIRST_POLL_S
    while not all(row.done_at is not None for row in rows):
        check()
        taken = [
            row
            for row in rows
            if _may_take(fanout, row, claim_after_s)
            and _take_over(context, fanout, job, row, work_here, claim_after_s)
        ]
        if not taken:
            time.sleep(wait)
        wait = FIRST_POLL_S if taken else min(2 * wait, MAX_POLL_S)
        with context.sessions() as session:
            rows = shard_rows(session, job.id, iteration, step=step)
    return rows


def _may_take(fanout: Fanout, row: Shard, claim_after_s: float) -> bool:
    """Whether ``row`` looks free to take (the claim decides): not done, and left unclaimed,
    or claimed by a process that stopped renewing its claim too long ago or has exited."""
    if row.done_at is not None:
        return False
    now = utcnow()
    if row.claimed_at is None:
        return row.opened_at <= now - timedelta(seconds=claim_after_s)
    assert row.claimed_by is not None
    stale = row.claimed_at < now - timedelta(seconds=fanout.stale_after_s)
    return stale or is_gone(row.claimed_by)


def _take_over(
    context: JobContext,
    fanout: Fanout,
    job: Job,
    row: Shard,
    work_here: Callable[[Shard], object],
    claim_after_s: float,
) -> bool:
    """Does ``row``'s shard here if no worker took it in time or its worker died; returns
    whether it did."""
    now = utcnow()
    with context.sessions() as session:
        claimed = claim_shard(
            session,
            job.id,
            row.iteration,
            row.shard,
            process_name(),
            stale_before=now - timedelta(seconds=fanout.stale_after_s),
            unclaimed_since=now - timedelta(seconds=claim_after_s),
            step=row.step,
            gone=is_gone,
        )
    if claimed is None:
        return False
    work_here(claimed)
    return True


def count_shard(
    context: JobContext, fanout: Fanout, job_id: str, iteration: int, shard: int
) -> str:
    """The body of the shard task: counts the shard unless it is done, claimed by a live worker
    or its job has ended. Returns a status word (never counts: Celery logs return values)."""
    claimed = claim_in_task(context, fanout, job_id, iteration, VOTE, shard)
    if isinstance(claimed, str):
        return claimed
    return count_claimed(context, fanout, *claimed)


def claim_in_task(
    context: JobContext, fanout: Fanout, job_id: str, iteration: int, step: int, shard: int
) -> tuple[Job, Shard] | str:
    """A shard task's claim: the job and its claimed row, or the status word saying why the
    task does nothing: "job-ended", or "not-claimed" (done, or claimed by a live worker)."""
    job = load_job(context.sessions, job_id)
    if job is None or job.status in FINAL_STATUSES:
        return "job-ended"
    with context.sessions() as session:
        row = claim_shard(
            session,
            job_id,
            iteration,
            shard,
            process_name(),
            stale_before=utcnow() - timedelta(seconds=fanout.stale_after_s),
            step=step,
            gone=is_gone,
        )
    return "not-claimed" if row is None else (job, row)


@contextmanager
def holding(context: JobContext, fanout: Fanout, row: Shard) -> Iterator[None]:
    """Renews this process's claim on ``row`` while the block runs, and gives the claim back
    when the block fails, so that the coordinator takes the shard at once rather than when the
    claim goes stale."""
    worker = process_name()
    where = (row.job_id, row.iteration, row.shard, worker)

    def renew() -> None:
        with context.sessions() as session:
            renew_claim(session, *where, step=row.step)

    try:
        with periodically(renew, fanout.renew_s, f"claim-{'-'.join(map(str, where[:3]))}"):
            yield
    except BaseException:
        with context.sessions() as session:
            release_claim(session, *where, step=row.step)
        raise


@dataclass
class Held:
    """What the job's own worker holds in memory for the shards it counts itself, so that it
    reads neither back from storage: the shards' embeddings it has read during the job (it
    holds the whole dataset anyway), by shard, and the current iteration's synthetic set as
    (digest, embeddings, labels). A shard task holds nothing: no job's data stays in a worker
    after its task."""

    shards: dict[int, PrivateVectors] = field(default_factory=dict)
    synthetic: tuple[str, NDArray[np.float32], NDArray[np.int64]] | None = None


def count_claimed(
    context: JobContext, fanout: Fanout, job: Job, row: Shard, held: Held | None = None
) -> str:
    """Counts a shard this process has claimed and stores its partial; returns a status word.

    ``held``: the coordinator's :class:`Held`; None in a shard task."""
    storage = context.storage
    token = secrets.token_hex(8)
    key = _partial_key(job, row, token)
    try:
        with holding(context, fanout, row):
            spec = job_spec(job)
            if held is not None and row.shard in held.shards:
                private = held.shards[row.shard]
            else:
                private = _shard_vectors(context, job, spec, row.shards, row.shard)
                if held is not None:
                    held.shards[row.shard] = private
            if held is not None and held.synthetic and held.synthetic[0] == row.synthetic_sha256:
                _, synthetic, labels = held.synthetic
            else:
                prefix = _iteration_prefix(job, row.iteration, row.synthetic_sha256)
                arrays = read_npz(storage, f"{prefix}/synthetic.npz")
                synthetic, labels = arrays["synthetic"], arrays["labels"]
            backend = backend_for(spec, private, synthetic)
            counts = count_votes(private, synthetic, labels, job=spec, backend=backend)
            write_npz(storage, key, {"counts": counts, "records": np.array(private.records)})
            del counts
    except BaseException:
        storage.delete_prefix(key)
        raise
    with context.sessions() as session:
        done = finish_shard(
            session,
            job.id,
            row.iteration,
            row.shard,
            row.synthetic_sha256,
            partial=token,
            backend=backend.name,
        )
    if not done:  # another worker finished it first, or the coordinator moved on
        storage.delete_prefix(key)
        return "superseded"
    return "counted"


def _shard_vectors(
    context: JobContext, job: Job, spec: PeJob, shards: int, shard: int
) -> PrivateVectors:
    """The prepared embeddings of one shard's records, from the dataset's cache when made.

    Cached per (dataset, embedder and its configuration, metric, label set, unit, shard plan)
    under ``datasets/<dataset>/embeddings/``: private data, encrypted with the dataset's key and
    deleted with the dataset.
    """
    storage = context.storage
    plan = {
        "embedding": spec.embedding,
        "config": spec.embedding_config,
        "metric": spec.metric,
        "labels": spec.labels,
        "unit": spec.privacy_unit,
        "shards": shards,
    }
    fingerprint = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:32]
    key = f"datasets/{job.dataset_id}/embeddings/{fingerprint}/{shard}.npz"
    try:
        arrays = read_npz(storage, key)
    except ObjectNotFoundError:
        pass
    else:
        n_labels = int(arrays["labels"])
        users = [arrays[f"users_{c}"] for c in range(n_labels)] if "users_0" in arrays else None
        return PrivateVectors([arrays[f"vectors_{c}"] for c in range(n_labels)], users)
    with context.sessions() as session:
        dataset = get_dataset(session, job.tenant_id, job.dataset_id)
    records = load_private(storage, dataset, spec)
    mine = records.take(np.flatnonzero(shard_of(records, shards, spec.privacy_unit) == shard))
    embedder = cached_embedder(spec.embedding, spec.embedding_config)
    prepared = prepare_private(
        mine, embedder.embed, metric=spec.metric, privacy_unit=spec.privacy_unit
    )
    cached: dict[str, NDArray[Any]] = {"labels": np.array(len(prepared.by_label))}
    for c, vectors in enumerate(prepared.by_label):
        cached[f"vectors_{c}"] = vectors
    for c, label_users in enumerate(prepared.users_by_label or []):
        cached[f"users_{c}"] = label_users
    write_npz(storage, key, cached)
    return prepared


def write_npz(storage: Storage, key: str, arrays: Mapping[str, NDArray[Any]]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    with storage.open_write(key) as handle:
        handle.write(buffer.getvalue())


def read_npz(storage: Storage, key: str) -> dict[str, NDArray[Any]]:
    with storage.open_read(key) as handle:
        data = handle.read()
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}
