"""Running one PE job for the service: load it, run the engine, publish the result, finalize.

This is the body of the Celery task in :mod:`workers.tasks`, kept free of Celery so that it
reads like a web view: decode the job id, call ``pe_core``, persist what comes out.

Where a job's files live, as storage keys:

* ``datasets/<dataset>/jobs/<job>/state/``: PRIVATE working state: checkpoints, the noisy
  release vectors and the run record (seed). Under the dataset's prefix, so deleting the
  dataset deletes it.
* ``datasets/<dataset>/jobs/<job>/out/``: the output layout while it is being made.
* ``datasets/<dataset>/jobs/<job>/out/eval/``: a job with a held-out dataset
  (``eval_dataset_id``): its NOT DP evaluation, which the gateway serves to the owner only;
  never published, and deleted with either dataset.
* ``results/<job>/``: the published result (``synthetic/``, ``privacy_report.json``,
  ``samples/``, and an audit job's ``audit.json``), written when the run has succeeded; never
  ``.state/`` or ``eval/``.

(:mod:`service.keys` names these prefixes for the gateway and the workers alike.)

The engine works on files: ``state/`` and ``out/`` are folders in the local work folder
(:attr:`JobContext.folders`), which is the storage itself when that is local. With a storage
apart from it (S3, or encryption at rest) the storage is where a job's files live between
deliveries (:class:`workers.jobfiles.JobFiles`): a delivery restores them into its own work
folder, saves them at every phase, and deletes its local copy when it ends, so workers share no
file system. The dataset is read from a private scratch copy (:func:`service.storage.local_copy`).

A task may be delivered more than once (a worker died, Redis redelivered, Celery retried). Every
delivery resumes from the latest checkpoint with the seed recorded by the first, and every noisy
release is recorded exactly once in the database (:class:`workers.ledger.DbLedger`), so the
repeated work draws no new noise and costs no extra privacy. The job's lease in the database
(:mod:`workers.lease`) keeps a second delivery from running while the first is alive.

An audit job (the gateway's ``audit`` option, :mod:`pe_core.audit`) runs the same path on the
dataset's records plus the canaries its recorded seed includes, with the canaries pinned in
every vote, and adds ``audit.json`` to the result. Such a run cannot resume: its scores are
the pinned counts of every iteration of one run. So a later delivery of an audit job that
already made a release fails, charged all it reserved like any job that released; one that
made none starts again from nothing with the recorded seeds (nothing was released, so nothing
was spent or shown, and the canaries and coins come out the same).

While a delivery runs, the job's heartbeat is renewed at every phase and, in between, by its
lease's thread (:func:`workers.lease.job_lease`), so the stale-job sweeper
(:mod:`workers.sweeper`) sends a job again only once its worker has stopped. Each delivery
also keeps to the time limit: the job fails at the first phase boundary past it, whatever the
pool (the solo pool enforces no Celery limits).
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import shutil
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast, get_args

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from pe_core.apis import create_api
from pe_core.apis.base import PerJobState, VariationApi
from pe_core.audit import AuditPlan, AuditSetup, conclude_audit, prepare_audit
from pe_core.checkpoint import CheckpointError
from pe_core.config import PeJob
from pe_core.datasets import load_dataset
from pe_core.embedders import CachedEmbedder, create_embedder
from pe_core.embedders.base import Embedder
from pe_core.errors import DataError, PrivevoError
from pe_core.job import JobOutcome, read_run_record, record_run
from pe_core.job import run_job as run_job_parts
from pe_core.outputs import Evaluator, OutputLayout, write_eval_report, write_json
from pe_core.policy import PrivacyPolicy
from pe_core.privacy import LedgerError
from pe_core.runner import CHECKPOINTS, IterationReport, RunCallbacks, noise_factory
from pe_core.samples import Modality, Samples
from service.db import (
    FINAL_STATUSES,
    Dataset,
    Job,
    JobEvent,
    JobFinished,
    NotFound,
    Release,
    ReleaseConflict,
    ReservationExceeded,
    append_event,
    finalize,
    get_dataset,
    read_transaction,
    update_progress,
)
from service.keys import AUDIT_REPORT, JOB_OUTPUT, evaluation_prefix, job_prefix, result_prefix
from service.storage import (
    InvalidKeyError,
    LocalStorage,
    ObjectNotFoundError,
    Storage,
    StorageUnavailableError,
    check_key,
    local_copy,
)
from workers.jobfiles import FANNED_OUT, JobFiles
from workers.lease import Lease, LeaseLost, job_lease
from workers.ledger import DbLedger

if TYPE_CHECKING:
    from workers.fanout import Fanout

logger = logging.getLogger(__name__)

MODALITIES: Final = frozenset(get_args(Modality))
INTERNAL_ERROR: Final = (
    "the job stopped on an internal error; a job that made any release is charged all it "
    "reserved. Contact the operator, quoting the job id"
)

# Errors of the service's own state, not of the tenant's data or request: reported generically.
_INTERNAL_ERRORS: Final = (
    LedgerError,
    CheckpointError,
    ReservationExceeded,
    ReleaseConflict,
    ObjectNotFoundError,
    InvalidKeyError,
    # Its message names the store's endpoint and the operator's settings, not the tenant's.
    StorageUnavailableError,
)

# Loaded generators and embedders kept per worker process, so models stay in memory across
# jobs. They hold public weights and configuration only, no job's data.
MODEL_CACHE_SIZE: Final = 8
# A job whose worker keeps dying (out of memory, a crashing model) would otherwise be handed
# out again forever, since a lost worker's message is requeued.
MAX_STARTS: Final = 10
AUDIT_INTERRUPTED: Final = (
    "the audit's run was interrupted after its first release (its worker stopped), and an "
    "audit cannot resume: its scores need every iteration of one uninterrupted run. Like any "
    "job that made a release, it is charged all it reserved; create the audit again, on a "
    "public stand-in unless spending this dataset's budget is intended"
)


@dataclass(frozen=True)
class JobContext:
    """What a worker process runs jobs with.

    Attributes:
        sessions: sessions on the service database (``service.db.make_session_factory``).
        storage: the service's storage: the datasets are read from it, results and
            evaluations written to it.
        time_limit_s: the most seconds one delivery of a job may run
            (``PRIVEVO_TASK_TIME_LIMIT_S``).
        heartbeat_s: seconds between the heartbeats of a running job.
        stale_after_s: a job whose heartbeat is older than this is taken for dead, and another
            delivery may take it over (``PRIVEVO_STALE_AFTER_S``).
        policy: the operator's privacy policy (``Settings.policy``), which the engine checks
            each job against again before it draws any noise: a job queued under an older
            policy, or written by anything but the gateway, meets this worker's. The default
            allows no seeded test noise.
        work: the local folder in which the engine makes each job's state and outputs
            (``service.settings.Stores.work``); None when ``storage`` is local and is that
            folder itself.
        fanout: how a large job's votes are spread over workers (:mod:`workers.fanout`);
            None: every job counts its votes in its own worker.
    """

    sessions: sessionmaker[Session]
    storage: Storage
    time_limit_s: float
    heartbeat_s: float
    stale_after_s: float = 600.0
    policy: PrivacyPolicy = field(default_factory=PrivacyPolicy)
    work: LocalStorage | None = None
    fanout: Fanout | None = None

    def __post_init__(self) -> None:
        if self.work is None and not isinstance(self.storage, LocalStorage):
            raise ValueError("a remote storage needs a local work folder (work=...)")

    @property
    def folders(self) -> LocalStorage:
        """Where jobs' state and output layouts are made."""
        return self.work if self.work is not None else cast(LocalStorage, self.storage)

    @property
    def staged(self) -> bool:
        """Whether jobs' files must be kept in ``storage``, apart from ``folders``."""
        return self.folders is not self.storage


class JobTimedOut(PrivevoError):
    """A job ran past its time limit; the message names the limit and the setting that sets it."""

    def __init__(self, limit_s: float) -> None:
        super().__init__(
            f"the job ran past its time limit of {limit_s:g} s and was stopped; a job that made "
            "any release is charged all it reserved. Run it with fewer iterations or samples, "
            "or ask the operator to raise PRIVEVO_TASK_TIME_LIMIT_S"
        )


def run_job(
    context: JobContext, job_id: str, *, timeouts: tuple[type[BaseException], ...] = ()
) -> str:
    """Runs (or resumes) a job to its end and records how it ended.

    Every outcome but a transient database error ends with :func:`service.db.finalize`:
    succeeded; canceled (the job was canceled while it ran: it stops at its next phase);
    failed with :class:`JobTimedOut`'s message when the delivery ran past
    ``context.time_limit_s`` (checked at every phase, or raised by Celery as one of
    ``timeouts``); failed with the error's message when the tenant's data or job is at fault;
    failed with a generic message (the exception type and stack logged here, never its message,
    which may quote private data) for anything else.

    Args:
        context: the database and storage.
        job_id: the job; trusted (it comes from the queue, not from a user).
        timeouts: exception types meaning the task ran out of time (Celery's soft time limit).

    Returns:
        The job's final status, or "running" when another delivery of the job is running it
        (this one then does nothing), or "missing" when there is no such job.

    Raises:
        sqlalchemy.exc.OperationalError: the database is unavailable (connection lost, locked,
            out of resources): worth retrying later; the job stays resumable.
    """
    deadline = time.monotonic() + context.time_limit_s
    stops: tuple[type[BaseException], ...] = (JobTimedOut, *timeouts)
    job = load_job(context.sessions, job_id)
    if job is None:
        logger.warning("job %s does not exist; its message is dropped", job_id)
        return "missing"
    if job.status in FINAL_STATUSES:
        return job.status
    prefix = job_prefix(job.dataset_id, job.id)
    folder = context.folders.make_folder(prefix)
    lease = job_lease(
        context.sessions,
        job_id,
        stale_after_s=context.stale_after_s,
        every_s=context.heartbeat_s,
    )
    with lease as held:
        if held is None:
            logger.info("job %s is being run by another worker; this delivery stops", job_id)
            return "running"
        files = None
        if context.staged:
            files = JobFiles(context.sessions, context.storage, prefix, folder, job.dataset_id)
        status, error = "succeeded", None
        try:
            if files is not None:
                files.restore()
            _run(context, job, prefix, folder, deadline, held, files)
        except LeaseLost:
            logger.warning("job %s was taken over by another delivery; this one stops", job_id)
            return "running"
        except JobFinished:
            status = "canceled"
        except stops:
            status, error = "failed", str(JobTimedOut(context.time_limit_s))
        except OperationalError:
            raise
        except Exception as exc:
            status, error = "failed", _failure(job_id, exc)
        finally:
            if files is not None:
                files.remove()
        with context.sessions() as session:
            final = finalize(session, job_id, status, error).status
        # A fanned-out vote cut short leaves clean partials, and a fanned-out generation its
        # chunks: they go with the run.
        for fanned_out in FANNED_OUT:
            context.storage.delete_prefix(f"{prefix}/{fanned_out}")
        if final != "succeeded":
            # Canceled while its result was being published: the result is withdrawn.
            context.storage.delete_prefix(result_prefix(job_id))
        return final


def local_folder(storage: LocalStorage, prefix: str) -> Path:
    """The local folder holding the objects under ``prefix`` (which need not exist yet)."""
    return storage.root.joinpath(*check_key(prefix).split("/"))


def cached_api(name: str, label_names: Sequence[str], config: dict[str, Any]) -> VariationApi:
    """The variation API for this configuration; the most recently used ones stay loaded."""
    return _api(json.dumps([name, list(label_names), config], sort_keys=True))


def cached_embedder(name: str, config: dict[str, Any]) -> Embedder:
    """The embedder for this configuration; the most recently used ones stay loaded."""
    return _embedder(json.dumps([name, config], sort_keys=True))


@functools.lru_cache(maxsize=MODEL_CACHE_SIZE)
def _api(key: str) -> VariationApi:
    name, label_names, config = json.loads(key)
    return create_api(name, label_names=tuple(label_names), **config)


@functools.lru_cache(maxsize=MODEL_CACHE_SIZE)
def _embedder(key: str) -> Embedder:
    name, config = json.loads(key)
    return create_embedder(name, **config)


class JobProgress:
    """Run callbacks that record progress and stop the run once the job is final (canceled),
    past its time limit, or taken over by another delivery.

    ``update_progress`` raises :class:`~service.db.JobFinished` for a final job, the time
    check :class:`JobTimedOut`, and the lease's :class:`~workers.lease.LeaseLost`; raised from a
    callback, each stops the engine between phases with its state resumable.

    Args:
        sessions: sessions on the service database.
        job_id: the job.
        iterations: the job's iterations T.
        deadline: the ``time.monotonic()`` value past which the run stops.
        time_limit_s: the limit that ``deadline`` enforces, for the message.
        lease: the delivery's lease on the job.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: str,
        iterations: int,
        *,
        deadline: float,
        time_limit_s: float,
        lease: Lease,
    ) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.iterations = iterations
        self.deadline = deadline
        self.time_limit_s = time_limit_s
        self.lease = lease
        self.last: tuple[int, str] | None = None

    def check_time(self) -> None:
        """Raises :class:`JobTimedOut` once the deadline has passed, and
        :class:`~workers.lease.LeaseLost` once another delivery has taken the job over."""
        if time.monotonic() >= self.deadline:
            raise JobTimedOut(self.time_limit_s)
        self.lease.check()

    def check_running(self) -> None:
        """Raises :class:`JobTimedOut` past the deadline, and
        :class:`~service.db.JobFinished` once the job is final (canceled): for waits inside a
        phase, such as a fanned-out vote's."""
        self.check_time()
        job = load_job(self.sessions, self.job_id)
        if job is None or job.status in FINAL_STATUSES:
            raise JobFinished(f"job {self.job_id} has ended")

    def on_phase(self, iteration: int, phase: str) -> None:
        self.check_time()
        # A run resumed after its last checkpoint reports the iteration after the last one.
        current = (min(iteration, self.iterations), phase)
        if current == self.last:
            return
        with self.sessions() as session:
            update_progress(session, self.job_id, iteration=current[0], phase=phase)
        self.last = current

    def on_iteration(self, report: IterationReport) -> None:
        payload = {
            "iteration": report.iteration,
            "epsilon_spent": report.epsilon_spent,
            "diagnostics": dict(report.diagnostics),
        }
        with self.sessions() as session:
            append_event(session, self.job_id, "iteration", payload)
        self.check_time()  # after the event: the iteration is done and checkpointed


def _run(
    context: JobContext,
    job: Job,
    prefix: str,
    folder: Path,
    deadline: float,
    lease: Lease,
    files: JobFiles | None,
) -> None:
    sessions = context.sessions
    with sessions() as session:
        update_progress(session, job.id, iteration=job.iteration, phase="starting")
    state = folder / "state"
    option = _audit_option(job)
    source: dict[str, Any] = {"dataset_id": job.dataset_id}
    if option is not None:  # the canaries' seed is drawn once, like the run's
        source["audit"] = {
            "seed": secrets.randbits(32) if option["seed"] is None else option["seed"]
        }
    spec = record_run(state, job_spec(job), fresh_seed=secrets.randbits(62), source=source)
    if files is not None:  # before any release: every delivery must run with this seed
        files.save()
    plan = None if option is None else _audit_plan(state, option)
    with sessions() as session:
        dataset = get_dataset(session, job.tenant_id, job.dataset_id)
        heldout = _heldout_dataset(session, job)
        if _starts(session, job.id) >= MAX_STARTS:
            raise PrivevoError(
                f"the job was started {MAX_STARTS} times without finishing (its worker kept "
                "stopping, e.g. out of memory); try fewer samples or a smaller model"
            )
        if plan is not None and _released(session, job.id):
            raise PrivevoError(AUDIT_INTERRUPTED)
        started: dict[str, Any] = {"seed": spec.seed}
        if plan is not None:
            started["audit"] = _plan_record(plan)
        append_event(session, job.id, "started", started)
    private = load_private(context.storage, dataset, spec)
    api = cached_api(spec.api, private.label_names, spec.api_config)
    if isinstance(api, PerJobState):  # caps and the like are per job, the loaded model is not
        api = api.for_new_job()
    progress = JobProgress(
        sessions,
        job.id,
        job.iterations,
        deadline=deadline,
        time_limit_s=context.time_limit_s,
        lease=lease,
    )
    layout = OutputLayout(folder / JOB_OUTPUT)
    audit: AuditSetup | None = None
    if plan is not None:
        _start_afresh(state, layout)
        if files is not None:
            context.storage.delete_prefix(f"{prefix}/state/{CHECKPOINTS}")
            context.storage.delete_prefix(f"{prefix}/state/releases")
            context.storage.delete_prefix(f"{prefix}/{JOB_OUTPUT}")
        progress.on_phase(0, "canaries")
        audit = prepare_audit(spec, private, api=api, plan=plan)
    embedder = cached_embedder(spec.embedding, spec.embedding_config)
    counter = generation = None
    run_info: dict[str, Any] = {"job_id": job.id}
    if context.fanout is not None and audit is None:  # an audit's records include its canaries
        counter = context.fanout.counter(context, job, spec, private, progress.check_running)
        generation = context.fanout.generation(context, job, spec, api, progress.check_running)
        if generation is not None:  # its chunk size is part of what the seed makes
            run_info["generation_chunk_samples"] = context.fanout.chunk_samples
    # The job's files are saved first, so an iteration's checkpoint is stored before anything
    # else may stop the run, and last, so what the other callbacks wrote is stored too.
    callbacks: list[RunCallbacks] = [progress] if files is None else [files, progress]
    if generation is not None:  # it numbers the engine's calls in each iteration
        callbacks.append(generation)
    evaluation = evaluator = None
    # Its own cache: held-out records are embedded once, not once per iteration.
    features = CachedEmbedder(embedder).embed
    if heldout is not None:
        # The NOT DP metrics load scikit-learn and scipy: only for a job with held-out data.
        from pe_core.metrics import evaluate, refuse_overlap

        evaluation = _load_heldout(context.storage, heldout, private.label_names)
        # The gateway compared record digests; this compares the decoded records, before the
        # first release (a job refused here is refunded).
        refuse_overlap(private, evaluation)
        # NOT DP, owner only: scored in the job's embedding space, as the CLI does.
        evaluator = Evaluator(
            layout, functools.partial(evaluate, evaluation=evaluation, features=features)
        )
        callbacks.append(evaluator)
    if files is not None:
        callbacks.append(files)
    outcome = run_job_parts(
        spec,
        private if audit is None else audit.private,
        api=api,
        embedder=embedder,
        state_dir=state,
        layout=layout,
        label_source=(
            "declared in the job" if spec.labels else "the dataset's labels, as found at upload"
        ),
        policy=context.policy,
        callbacks=callbacks,
        ledger=lambda: DbLedger(
            sessions,
            job.id,
            delta=job.delta_reserved,
            directory=state / "releases",
            key_prefix=f"{prefix}/state/releases",
            storage=None if files is None else context.storage,
        ),
        run_info=run_info if audit is None else {**run_info, "audit": _plan_record(audit.plan)},
        resume=audit is None,
        pinned=None if audit is None else audit.pinned,
        votes=None if counter is None else lambda _: counter,
        generation=None if generation is None else generation.generation(),
    )
    if audit is not None:
        progress.on_phase(job.iterations, "audit")
        _write_audit(sessions, job, spec, audit, outcome, embedder, layout)
    if evaluator is not None and evaluation is not None:
        progress.on_phase(job.iterations, "evaluate")
        write_eval_report(
            layout, evaluator, outcome.result.population, private, evaluation, features
        )
        _drop_orphaned_evaluation(context, job, layout)
    if files is not None:  # the evaluation's stored copy is what the gateway serves
        files.save()
    progress.on_phase(job.iterations, "publish")
    _publish(context.storage, layout, result_prefix(job.id))


def job_spec(job: Job) -> PeJob:
    """The job's engine parameters, checked against what the job reserved.

    The stored spec is the gateway's job body: the engine's parameters plus ``dataset_id``
    (and ``eval_dataset_id``, which the job row holds too, and ``audit``, read by
    :func:`_audit_option`).
    """
    fields = dict(job.spec)
    fields.pop("audit", None)
    if fields.pop("dataset_id", job.dataset_id) != job.dataset_id:
        raise RuntimeError(f"job {job.id}: its spec names another dataset")
    if fields.pop("eval_dataset_id", None) != job.eval_dataset_id:
        raise RuntimeError(f"job {job.id}: its spec names another evaluation dataset")
    try:
        spec = PeJob.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'job'}: {error['msg']}"
            for error in exc.errors()
        )
        raise PrivevoError(f"invalid job parameters: {problems}") from None
    if spec.no_privacy:
        raise PrivevoError("the service runs private jobs only; no_privacy is not accepted")

    # A mismatch is the gateway's bug, not the tenant's: it surfaces as an internal error.
    if (spec.iterations, spec.delta) != (job.iterations, job.delta_reserved) or not (
        spec.epsilon <= job.epsilon_reserved
    ):
        raise RuntimeError(
            f"job {job.id}: parameters (epsilon {spec.epsilon}, delta {spec.delta}, iterations "
            f"{spec.iterations}) disagree with its reservation"
        )
    return spec


def _audit_option(job: Job) -> dict[str, Any] | None:
    """The job's ``audit`` option as the gateway stored it (canaries, guesses, seed), or None."""
    option = job.spec.get("audit")
    if option is None:
        return None
    if not (
        isinstance(option, dict)
        and set(option) == {"canaries", "guesses", "seed"}
        and all(isinstance(option[name], int) for name in ("canaries", "guesses"))
        and (option["seed"] is None or isinstance(option["seed"], int))
    ):
        raise RuntimeError(f"job {job.id}: its audit option is malformed")
    return option


def _audit_plan(state: Path, option: dict[str, Any]) -> AuditPlan:
    """The audit's plan, with the canaries' seed that the job's first start recorded."""
    recorded = read_run_record(state)
    seed = None if recorded is None else recorded.source.get("audit", {}).get("seed")
    if not isinstance(seed, int):
        raise CheckpointError(f"the run record in {state} holds no audit seed")
    return AuditPlan(canaries=option["canaries"], guesses=option["guesses"], seed=seed)


def _plan_record(plan: AuditPlan) -> dict[str, Any]:
    return {"canaries": plan.canaries, "guesses": plan.guesses, "seed": plan.seed}


def _released(session: Session, job_id: str) -> bool:
    """Whether the job has recorded any release (its database ledger is not empty)."""
    statement = select(func.count()).where(Release.job_id == job_id)
    with read_transaction(session):
        return session.scalars(statement).one() > 0


def _start_afresh(state: Path, layout: OutputLayout) -> None:
    """Removes what an earlier delivery of an audit left, its run record aside: an audit runs
    from its start or not at all. Called only when the job has recorded no release, so the
    checkpoints hold populations no release chose, and any vector in ``releases/`` is a draw
    that was never recorded, hence never used: dropping them spends and shows nothing."""
    for leftover in (state / CHECKPOINTS, state / "releases", layout.root):
        shutil.rmtree(leftover, ignore_errors=True)


def _write_audit(
    sessions: sessionmaker[Session],
    job: Job,
    spec: PeJob,
    audit: AuditSetup,
    outcome: JobOutcome,
    embedder: Embedder,
    layout: OutputLayout,
) -> None:
    """Bounds what the audited run leaked and writes ``audit.json`` beside its result.

    The scores are the released (noisy) counts of the pinned canaries and the coins are
    independent of the data, so the report is post-processing of the run's DP releases.
    """
    assert spec.seed is not None  # recorded by record_run
    _, sampler = noise_factory(spec, spec.seed)  # its name and security, for the report
    result = conclude_audit(audit, spec, outcome.result, embedder=embedder, sampler=sampler)
    report = {
        **result.report(spec),
        "job_id": job.id,
        "dataset_id": job.dataset_id,
        "seed": spec.seed,
    }
    write_json(layout.root / AUDIT_REPORT, report)
    summary = {
        name: report[name]
        for name in (
            "epsilon_lower_bound",
            "claimed_epsilon",
            "confidence",
            "exceeds_claim",
            "m",
            "r",
        )
    }
    with sessions() as session:
        append_event(session, job.id, "audit", {**summary, "correct": report["guesses"]["correct"]})


def load_private(storage: Storage, dataset: Dataset, spec: PeJob) -> Samples:
    """The dataset's records as validated at upload: with their users when it is user-level.

    The users come from the dataset, never from the job: the engine's ``check_job`` then
    refuses a spec whose unit differs from the data's before any noise is drawn, whoever
    wrote the spec.
    """
    if dataset.modality not in MODALITIES:
        raise RuntimeError(f"dataset {dataset.id} has unknown modality {dataset.modality!r}")
    labels = spec.labels if spec.labels is not None else list(dataset.labels)
    return _load_stored(storage, dataset, labels, user_column=dataset.user_column)


def _load_stored(
    storage: Storage, dataset: Dataset, labels: Sequence[str], **options: Any
) -> Samples:
    """The dataset's records with ``labels`` (``load_dataset``'s ``options`` added)."""
    # Decoded whole into memory, so a remote object's scratch copy goes as soon as it is read.
    with local_copy(storage, dataset.storage_path) as path:
        try:
            return load_dataset(
                path,
                modality=cast(Modality, dataset.modality),
                text_column=dataset.text_column,
                label_column=dataset.label_column,
                labels=list(labels),
                **options,
            )
        except DataError as exc:
            # The tenant knows the dataset by its name, not by the server's storage path.
            raise DataError(str(exc).replace(str(path), dataset.name)) from None


def _heldout_dataset(session: Session, job: Job) -> Dataset | None:
    """The job's held-out evaluation dataset, or None; checked again here (role, tenant), since
    the worker trusts the job row's ids, not whoever wrote them."""
    if job.eval_dataset_id is None:
        return None
    try:
        heldout = get_dataset(session, job.tenant_id, job.eval_dataset_id)
    except NotFound:
        raise PrivevoError(
            f"the evaluation dataset {job.eval_dataset_id} was deleted before the job ran; "
            "create the job again without it, or with another held-out dataset"
        ) from None
    if heldout.role != "heldout":
        raise RuntimeError(f"job {job.id}: its evaluation dataset is not held-out data")
    return heldout


def _load_heldout(storage: Storage, dataset: Dataset, label_names: Sequence[str]) -> Samples:
    """The held-out records, labelled with the job's label set.

    Their ids get a prefix of their own: the evaluator's embedding cache is keyed by record
    id, and two npz files (or tables) number their records alike, so without it a held-out
    record would be scored with a private record's embedding.
    """
    return _load_stored(storage, dataset, label_names, id_prefix="heldout/")


def _drop_orphaned_evaluation(context: JobContext, job: Job, layout: OutputLayout) -> None:
    """Deletes the evaluation just written (and copied) when its held-out dataset was deleted
    while the job ran: the gateway's delete removed the evaluations that existed then, not
    this one."""
    assert job.eval_dataset_id is not None
    with context.sessions() as session:
        try:
            get_dataset(session, job.tenant_id, job.eval_dataset_id)
        except NotFound:
            shutil.rmtree(layout.eval, ignore_errors=True)
            if context.staged:
                context.storage.delete_prefix(evaluation_prefix(job.dataset_id, job.id))


def _publish(storage: Storage, layout: OutputLayout, prefix: str) -> None:
    """Copies the result layout to ``prefix``, replacing any earlier (partial) copy.

    Only the DP outputs travel: never the private state, never a NOT-DP evaluation.
    """
    _copy_tree(storage, layout.root, prefix, skip=(layout.state.name, layout.eval.name))


def _copy_tree(storage: Storage, folder: Path, prefix: str, *, skip: Sequence[str] = ()) -> None:
    """Copies the files under ``folder`` to ``prefix``, replacing what was there; top-level
    entries named in ``skip`` stay behind, and so do unfinished writes (names starting '.')."""
    storage.delete_prefix(prefix)
    for file in sorted(folder.rglob("*")):
        relative = file.relative_to(folder)
        if not file.is_file() or relative.parts[0] in skip:
            continue
        if any(part.startswith(".") for part in relative.parts):
            continue  # an unfinished write of the layout
        key = f"{prefix}/{relative.as_posix()}"
        with file.open("rb") as source, storage.open_write(key) as target:
            shutil.copyfileobj(source, target)


def _starts(session: Session, job_id: str) -> int:
    statement = select(func.count()).where(JobEvent.job_id == job_id, JobEvent.kind == "started")
    with read_transaction(session):
        return session.scalars(statement).one()


def load_job(sessions: sessionmaker[Session], job_id: str) -> Job | None:
    with sessions() as session, read_transaction(session):
        return session.scalars(select(Job).where(Job.id == job_id)).one_or_none()


def _failure(job_id: str, exc: Exception) -> str:
    """The message a failed job shows its tenant; internal errors are only logged."""
    if isinstance(exc, PrivevoError) and not isinstance(exc, _INTERNAL_ERRORS):
        return str(exc)
    logger.error(
        "job %s failed with %s:\n%s",
        job_id,
        type(exc).__name__,
        "".join(traceback.format_tb(exc.__traceback__)),
    )
    return INTERNAL_ERROR
