"""Privacy budgets: which datasets share one, atomic reservations, exactly-once releases, and
what a job is charged when it ends.

Which datasets share a budget
-----------------------------
A budget belongs to records, not to files. Every upload is decoded as the engine reads it and
each record kept as a keyed digest (:mod:`service.digests`); a new dataset joins the budget of
every dataset of its tenant and of its unit of privacy (below) with which it shares a record
digest, or the same file bytes (sha256; datasets uploaded before record digests have only
that), and if those are several budgets they merge into one (:func:`place_in_budget`). So
re-encoding, reordering, splitting or overlapping uploads never yields a second cap for a
record within a unit.

Why merging is sound: the datasets of one unit holding a record r all share r's digest, so
they all draw on one budget B. Everything ever released about r at that unit came from jobs on
those datasets, so by basic composition r's loss is at most the sum of B's jobs' (epsilon,
delta), which the reservations keep within B's caps. A merged budget's caps are the smallest
of its members' (an upload may not raise them: :class:`~service.db.errors.BudgetCapConflict`)
and its spending is the sum over all its members' jobs, so every record stays within the cap
of every dataset of its unit that holds it. Merging can only over-count (records of one member
are charged for jobs on another): it errs on the safe side. Digests, datasets and jobs are
kept when a dataset is deleted, so a later upload of the same records still finds the budget
that paid for them.

Digests are compared within one tenant only, under one tenant's key: another tenant's copy of
the same records has a budget of its own, and nothing in its answers depends on the first.

Held-out datasets (role "heldout") have no budget and are never spent on: no job takes them as
its private input (:func:`reserve` refuses), nothing DP is released about them, and what is
computed from them (NOT DP evaluation metrics) goes to their owner only. So they never join or
merge budgets: a private upload sharing records with held-out data only is placed as if that
data did not exist. Their digests are kept all the same, to refuse an evaluation on data that
overlaps the job's private dataset (:func:`shared_records`).

Units of privacy
----------------
A dataset is record-level, or user-level when its upload named a user column; the unit is
fixed at upload and every budget has one unit (a composite foreign key holds each dataset to a
budget of its own unit). Groups form within a unit: a user-level upload joins and merges only
user-level budgets of the tenant, a record-level one only record-level budgets, by the same
content-only digests and file bytes. A record-level and a user-level charge are never summed
against one cap: their (epsilon, delta) protect different neighbouring relations (add/remove
one record; add/remove all of one user's records), and a sum of the two bounds neither. What
this leaves open: a record held by datasets of both units loses, by basic composition, up to
the user-level budget's spending plus the record-level budget's (a user-level guarantee
covers each of its user's records too), so each cap bounds the jobs of its own unit only.
And users are matched by their records' content, not by their ids: a user whose records in
two user-level uploads share no content is in two budgets.

How spending is counted
-----------------------
Jobs on a budget compose by basic composition: their epsilons add and their deltas add. A job
holds, against its budget:

* while queued or running: what it reserved, ``(epsilon_reserved, delta_reserved)``;
* once final: what it is charged, ``(epsilon_charged, delta_charged)`` (see :func:`finalize`).

A new job fits when the holds of all jobs on the budget plus its own request stay within both
caps. The check and the insert happen under the tenant's budget lock
(:func:`~service.db.queries.lock_budgets`), so concurrent requests are decided one after the
other and together never exceed the cap.

Within a job, its releases are metered with the engine's own (tighter) accountant, for progress
and as a guard. Each noisy release is a :class:`~service.db.models.Release` row whose
``epsilon`` is what that release ADDED to the job's composed epsilon at the job's reserved
delta: the worker computes the accountant's epsilon over all of the job's releases so far,
subtracts the job's ``epsilon_spent`` before this release, and records the (non-negative)
difference. The sum of a job's release epsilons is therefore the accountant's epsilon for
everything the job released, and :func:`record_release` refuses a release that would take it
past the reservation.

What a job is charged: all of its reservation once it has released anything, nothing otherwise
(see :func:`finalize` for the argument).

Sums of doubles are compared with a relative slack of ``RTOL`` (1e-9): three releases of 0.4
sum to 1.2000000000000002 and must still fit a cap of 1.2. The slack lets through at most a
billionth of the cap, far below any difference between meaningful budgets.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, overload

from sqlalchemy import case, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from service.db.engine import read_transaction, write_transaction
from service.db.errors import (
    BudgetCapConflict,
    BudgetExceeded,
    IdempotencyConflict,
    JobFinished,
    NotFound,
    QuotaExceeded,
    ReleaseConflict,
    ReservationExceeded,
    WrongRole,
)
from service.db.models import (
    FINAL_STATUSES,
    Budget,
    Dataset,
    Job,
    RecordDigest,
    Release,
    Tenant,
    utcnow,
)
from service.db.outbox import add_message
from service.db.queries import (
    add_event,
    dataset_of_tenant,
    job_of_tenant,
    lock_budgets,
    lock_job,
    tenant_of_job,
)

if TYPE_CHECKING:
    # For the annotation only: pe_core.privacy imports dp_accounting and scipy (about 2.6 s),
    # which the gateway never needs.
    from pe_core.privacy import DpEvent
    from service.digests import RecordDigests

RTOL: Final = 1e-9
# Digest rows per INSERT statement: bounded statements whatever the upload's size.
_DIGEST_BATCH: Final = 5000
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class BudgetStatus:
    """Where a dataset's privacy budget stands (shared by every dataset that shares a record).

    ``spent`` is what can never come back: the charges of final jobs plus what running jobs
    have already released. ``reserved`` is held by queued and running jobs but not yet spent.
    ``remaining = max(cap - spent - reserved, 0)`` is what a new job may ask for.

    Attributes:
        epsilon_cap, delta_cap: the caps.
        epsilon_spent, delta_spent: spent so far.
        epsilon_reserved, delta_reserved: held by unfinished jobs beyond what they spent.
        epsilon_remaining, delta_remaining: left for new jobs.
        active_jobs: number of queued or running jobs on the budget.
    """

    epsilon_cap: float
    delta_cap: float
    epsilon_spent: float
    delta_spent: float
    epsilon_reserved: float
    delta_reserved: float
    epsilon_remaining: float
    delta_remaining: float
    active_jobs: int


def _check_queued_jobs(session: Session, tenant_id: str, default: int | None) -> None:
    """Raises QuotaExceeded when the tenant has its quota of queued jobs (under its lock)."""
    own = session.scalar(select(Tenant.max_queued_jobs).where(Tenant.id == tenant_id))
    limit = default if own is None else own
    if limit is None:
        return
    statement = select(func.count()).where(Job.tenant_id == tenant_id, Job.status == "queued")
    queued = session.scalar(statement) or 0
    if queued >= limit:
        raise QuotaExceeded(
            "max_queued_jobs",
            f"you have {queued} queued jobs, the most allowed (max_queued_jobs = {limit}); "
            "retry once some have started, cancel some, or ask the operator for more",
        )


def reserve(
    session: Session,
    tenant_id: str,
    dataset_id: str,
    epsilon: float,
    delta: float,
    idempotency_key: str | None,
    spec: dict[str, Any],
    *,
    iterations: int,
    queue: str = "cpu",
    eval_dataset_id: str | None = None,
    max_queued_jobs: int | None = None,
) -> Job:
    """Creates a queued job holding ``(epsilon, delta)`` of its dataset's budget, atomically,
    with its broker message pending in the outbox (:mod:`service.db.outbox`).

    With an ``idempotency_key`` already used by this tenant, the job created then is returned
    and nothing new is reserved, even if the dataset has since been deleted.

    Args:
        session: a session not in a transaction (this function runs its own).
        tenant_id: the caller's tenant.
        dataset_id: one of the tenant's datasets.
        epsilon: the job's epsilon, > 0.
        delta: the job's delta, in (0, 1).
        idempotency_key: the client's key for this create, unique per tenant, or None.
        spec: the job's specification, stored as JSON.
        iterations: number of PE iterations T, >= 1.
        queue: the broker queue the job's task goes to (see ``service.broker.queue_for``).
        eval_dataset_id: a held-out dataset of the tenant to evaluate the job on, or None.
            The gateway checks it first (``service.evaluation.check_eval_dataset``); here a
            foreign key holds it to the tenant.
        max_queued_jobs: the most queued jobs the tenant may have, counted under its lock, so
            concurrent creates cannot pass it together; the tenant's own quota takes its
            place where the operator set one. None: no limit.

    Returns:
        The new (or idempotently repeated) job.

    Raises:
        NotFound: no such dataset for this tenant.
        WrongRole: the dataset is held-out: it is never a job's private input.
        BudgetExceeded: the job does not fit; the message names what is left.
        IdempotencyConflict: the key was used for a different request.
        QuotaExceeded: the tenant has its quota of queued jobs (a retry of a created job
            still gets that job).
    """
    _check_epsilon(epsilon)
    _check_delta(delta)
    if not _is_int(iterations) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    spec = json.loads(json.dumps(spec, allow_nan=False))
    request = (dataset_id, float(epsilon), float(delta), spec, iterations, eval_dataset_id)
    try:
        with write_transaction(session):
            lock_budgets(session, tenant_id)
            dataset = dataset_of_tenant(session, tenant_id, dataset_id, include_deleted=True)
            if idempotency_key is not None:
                existing = _job_by_key(session, tenant_id, idempotency_key)
                if existing is not None:
                    return _same_request(existing, idempotency_key, request)
            if dataset.deleted_at is not None:
                raise NotFound(f"dataset {dataset_id} not found")
            if dataset.budget_id is None:
                raise WrongRole(held_out_input(dataset_id))
            _check_queued_jobs(session, tenant_id, max_queued_jobs)
            status = _status(session, Budget.id == dataset.budget_id)
            fits = _within(epsilon, status.epsilon_remaining, status.epsilon_cap) and _within(
                delta, status.delta_remaining, status.delta_cap
            )
            if not fits:
                raise BudgetExceeded(
                    dataset_id=dataset_id,
                    epsilon=epsilon,
                    delta=delta,
                    epsilon_remaining=status.epsilon_remaining,
                    delta_remaining=status.delta_remaining,
                    epsilon_cap=status.epsilon_cap,
                    delta_cap=status.delta_cap,
                )
            job = Job(
                tenant_id=tenant_id,
                dataset_id=dataset_id,
                spec=spec,
                iterations=iterations,
                queue=queue,
                epsilon_reserved=float(epsilon),
                delta_reserved=float(delta),
                idempotency_key=idempotency_key,
                eval_dataset_id=eval_dataset_id,
            )
            session.add(job)
            session.flush()
            add_event(
                session,
                job,
                "created",
                {"epsilon": job.epsilon_reserved, "delta": job.delta_reserved},
            )
            # Its broker message is committed with the reservation, so a committed job is
            # always enqueued (service.db.outbox), whatever happens to the caller next.
            add_message(session, job)
            return job
    except IntegrityError:
        # A backstop: creates of one tenant are serialised by its budget lock, so the lookup
        # above sees an earlier create with the key; the unique key would refuse a second.
        if idempotency_key is None:
            raise
        with read_transaction(session):
            existing = _job_by_key(session, tenant_id, idempotency_key)
        if existing is None:
            raise
        return _same_request(existing, idempotency_key, request)


def remaining(session: Session, tenant_id: str, dataset_id: str) -> BudgetStatus:
    """Where the budget of one of the tenant's datasets stands (see :class:`BudgetStatus`).

    One statement reads the dataset's budget and sums its jobs, so on PostgreSQL it sees one
    snapshot even while an upload merges budgets.

    Raises:
        NotFound: no such dataset for this tenant.
    """
    budget_id = (
        select(Dataset.budget_id)
        .where(
            Dataset.id == dataset_id,
            Dataset.tenant_id == tenant_id,
            Dataset.deleted_at.is_(None),
        )
        .scalar_subquery()
    )
    with read_transaction(session):
        status = _status(session, Budget.id == budget_id, missing_ok=True)
        if status is None:
            dataset = dataset_of_tenant(session, tenant_id, dataset_id)  # NotFound if none
            raise NotFound(
                f"dataset {dataset.id} is held-out evaluation data: it has no privacy budget, "
                "since no job ever runs on it"
            )
    return status


def place_in_budget(
    session: Session,
    dataset: Dataset,
    digests: RecordDigests | None,
    *,
    epsilon_cap: float,
    delta_cap: float,
) -> Budget:
    """Stores a new dataset's record digests and puts it in the budget its records call for.

    The dataset joins (and merges into one) every budget of its tenant that holds a dataset
    of its unit of privacy sharing a record digest or the same file bytes with it; with none,
    it gets a budget of its own with the caps asked for. A merged budget keeps the oldest
    budget's id and takes the smallest caps of all (module docstring). Datasets of the other
    unit are never joined, whatever they share (module docstring, "Units of privacy").

    Runs inside the caller's write transaction, under the tenant's budget lock, which the
    caller holds: two uploads sharing records are placed one after the other, and the second
    sees the first's digests (on PostgreSQL each statement of a READ COMMITTED transaction
    sees what committed before it, and the first commits before the second gets the lock).

    Args:
        session: in a write transaction holding :func:`~service.db.queries.lock_budgets`.
        dataset: the new dataset, flushed, whose ``budget_id`` is a budget of its own, of its
            unit (which this deletes again when the dataset joins others).
        digests: the upload's record digests, or None where there are none (then only the file
            bytes are matched).
        epsilon_cap, delta_cap: the caps the upload asked for.

    Returns:
        The budget the dataset draws on now.

    Raises:
        BudgetCapConflict: the dataset shares records with data under a smaller cap than it
            asks for; an upload cannot raise the cap of records already spent on.
    """
    tenant_id, own, unit = dataset.tenant_id, dataset.budget_id, dataset.privacy_unit
    if own is None:
        raise ValueError(f"dataset {dataset.id} is held-out: it has no budget to place")
    store_digests(session, dataset, digests)
    new, old = aliased(RecordDigest), aliased(RecordDigest)
    sharing_records = (
        select(Dataset.budget_id)
        .select_from(new)
        .join(
            old,
            (old.tenant_id == new.tenant_id)
            & (old.digest == new.digest)
            & (old.dataset_id != new.dataset_id),
        )
        .join(Dataset, (Dataset.tenant_id == old.tenant_id) & (Dataset.id == old.dataset_id))
        .where(
            new.tenant_id == tenant_id,
            new.dataset_id == dataset.id,
            Dataset.privacy_unit == unit,
            Dataset.role == "private",  # held-out data has no budget (module docstring)
        )
    )
    sharing_bytes = select(Dataset.budget_id).where(
        Dataset.tenant_id == tenant_id,
        Dataset.sha256 == dataset.sha256,
        Dataset.id != dataset.id,
        Dataset.privacy_unit == unit,
        Dataset.role == "private",
    )
    joined = set(session.scalars(sharing_records.union(sharing_bytes)))
    budget = session.get_one(Budget, own)
    if not joined:
        return budget
    others = list(
        session.scalars(
            select(Budget)
            .where(
                Budget.tenant_id == tenant_id,
                Budget.id.in_(joined),
                Budget.privacy_unit == unit,
            )
            .order_by(Budget.created_at, Budget.id)
        )
    )
    epsilon_limit = min(other.epsilon_cap for other in others)
    delta_limit = min(other.delta_cap for other in others)
    if epsilon_cap > epsilon_limit or delta_cap > delta_limit:
        raise BudgetCapConflict(
            f"this data shares records with {unit}-level data uploaded before under a budget "
            f"cap of epsilon {epsilon_limit:.6g}, delta {delta_limit:.6g}; it joins that "
            f"budget, whose cap an upload cannot raise: upload it with epsilon_cap <= "
            f"{epsilon_limit:.6g} and delta_cap <= {delta_limit:.6g}"
        )
    survivor = others[0]
    survivor.epsilon_cap = min(epsilon_limit, float(epsilon_cap))
    survivor.delta_cap = min(delta_limit, float(delta_cap))
    merged = [other.id for other in others[1:]] + [own]
    session.execute(
        update(Dataset)
        .where(Dataset.tenant_id == tenant_id, Dataset.budget_id.in_(merged))
        .values(budget_id=survivor.id)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    session.execute(
        delete(Budget)
        .where(Budget.tenant_id == tenant_id, Budget.id.in_(merged))
        .execution_options(synchronize_session=False)
    )
    session.expunge(budget)
    dataset.budget_id = survivor.id
    session.flush()
    return survivor


def store_digests(session: Session, dataset: Dataset, digests: RecordDigests | None) -> None:
    """Stores a new dataset's record digests (none where ``digests`` is None), in bounded
    statements, inside the caller's write transaction."""
    if digests is None:
        return
    rows = [
        {"tenant_id": dataset.tenant_id, "dataset_id": dataset.id, "digest": digest}
        for digest in digests
    ]
    for start in range(0, len(rows), _DIGEST_BATCH):
        session.execute(insert(RecordDigest), rows[start : start + _DIGEST_BATCH])


def shared_records(session: Session, tenant_id: str, first_id: str, second_id: str) -> int:
    """How many distinct records two of the tenant's datasets share, by their record digests.

    Datasets of the same file bytes share all their records, whatever digests they have
    (datasets uploaded before digests existed have none): then the smaller record count is
    returned. Compared under the tenant's own key, never across tenants.

    Args:
        session: a session not in a transaction (this function runs its own).
    """
    first, second = aliased(Dataset), aliased(Dataset)
    one, other = aliased(RecordDigest), aliased(RecordDigest)
    with read_transaction(session):
        same_bytes = session.execute(
            select(func.min(first.record_count), func.min(second.record_count))
            .select_from(first)
            .join(second, (second.tenant_id == first.tenant_id) & (second.sha256 == first.sha256))
            .where(first.tenant_id == tenant_id, first.id == first_id, second.id == second_id)
        ).one_or_none()
        if same_bytes is not None and same_bytes[0] is not None:
            return int(min(same_bytes))
        statement = (
            select(func.count())
            .select_from(one)
            .join(
                other,
                (other.tenant_id == one.tenant_id)
                & (other.digest == one.digest)
                & (other.dataset_id == second_id),
            )
            .where(one.tenant_id == tenant_id, one.dataset_id == first_id)
        )
        return int(session.scalar(statement) or 0)


def held_out_input(dataset_id: str) -> str:
    """Why a held-out dataset cannot be a job's private input, and what to do instead."""
    return (
        f"dataset {dataset_id} is held-out evaluation data: it is never a job's private input "
        "and has no budget. Run the job on a private dataset and name this one as its "
        "eval_dataset_id"
    )


def record_release(
    session: Session,
    job_id: str,
    iteration: int,
    mechanism: str,
    epsilon: float,
    sha256: str,
    path: str | None,
    *,
    event: DpEvent,
) -> tuple[Release, bool]:
    """Records a noisy release of a job exactly once: the insert-or-get of the release ledger.

    The first call for ``(job_id, iteration, mechanism)`` inserts the row with its DP event,
    adds ``epsilon`` to the job's ``epsilon_spent`` and marks its reserved delta as spent. Any
    later call, such as a redelivered task that drew its own noise, gets the recorded row back
    with ``created=False`` and must use the recorded vector (``sha256``, ``storage_path``)
    instead of its own. Called by workers with ids from the queue, so it is not scoped to a
    tenant.

    Args:
        session: a session not in a transaction (this function runs its own).
        job_id: the job that made the release.
        iteration: the PE iteration, >= 0.
        mechanism: which release of the iteration ("votes"), at most 64 characters.
        epsilon: what the release added to the job's composed epsilon (module docstring), >= 0.
        sha256: sha256 of the noisy vector, 64 lowercase hex digits.
        path: where the noisy vector is stored, or None.
        event: the release's DP event (mechanism, sigma, sensitivity, count), stored in the same
            row, so that the job's ledger and epsilon can be rebuilt from the database alone.

    Returns:
        (the recorded release, whether this call created it).

    Raises:
        NotFound: no such job.
        JobFinished: the job is final (e.g. canceled meanwhile); the release must not be used.
        ReservationExceeded: the job would spend more epsilon than it reserved.
        ReleaseConflict: the key is recorded with a different epsilon or DP event.
    """
    if not _is_int(iteration) or iteration < 0:
        raise ValueError(f"iteration must be an integer >= 0, got {iteration!r}")
    if not isinstance(mechanism, str) or not 0 < len(mechanism) <= 64:
        raise ValueError(f"mechanism must be a string of 1-64 characters, got {mechanism!r}")
    if not _is_real(epsilon) or not 0 <= epsilon < math.inf:
        raise ValueError(f"a release's epsilon must be finite and >= 0, got {epsilon!r}")
    if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    record = asdict(event)
    with write_transaction(session):
        job = lock_job(session, job_id)
        statement = select(Release).where(
            Release.job_id == job_id,
            Release.iteration == iteration,
            Release.mechanism == mechanism,
        )
        recorded = session.scalars(statement).one_or_none()
        if recorded is not None:
            if not math.isclose(recorded.epsilon, epsilon, rel_tol=RTOL, abs_tol=0.0):
                raise ReleaseConflict(
                    f"release ({job_id}, {iteration}, {mechanism!r}) is recorded with epsilon "
                    f"{recorded.epsilon!r}, not {epsilon!r}"
                )
            if recorded.event != record:
                raise ReleaseConflict(
                    f"release ({job_id}, {iteration}, {mechanism!r}) is recorded with DP event "
                    f"{recorded.event!r}, not {record!r}"
                )
            return recorded, False
        if job.status in FINAL_STATUSES:
            raise JobFinished(f"job {job_id} is {job.status}; its releases are closed")
        spent = job.epsilon_spent + epsilon
        if spent > job.epsilon_reserved * (1 + RTOL):
            raise ReservationExceeded(
                f"release ({iteration}, {mechanism!r}) would bring job {job_id} to epsilon "
                f"{spent:.6g}, above the {job.epsilon_reserved:.6g} it reserved"
            )
        release = Release(
            job_id=job_id,
            iteration=iteration,
            mechanism=mechanism,
            epsilon=float(epsilon),
            sha256=sha256,
            storage_path=path,
            event=record,
        )
        session.add(release)
        now = utcnow()
        if job.status == "queued":
            job.status, job.started_at = "running", now
        job.epsilon_spent, job.delta_spent, job.updated_at = spent, job.delta_reserved, now
        job.heartbeat_at = now
        session.flush()
        add_event(
            session,
            job,
            "release",
            {"iteration": iteration, "mechanism": mechanism, "epsilon": release.epsilon},
        )
        return release, True


def finalize(session: Session, job_id: str, status: str, error: str | None = None) -> Job:
    """Moves a job to its final state: charged its whole reservation if it released anything,
    refunded all of it if not.

    Why a job that made any release pays all of it, however it ends (succeeded, canceled,
    failed, past its time limit): the tenant may stop a job at any moment after watching its
    DP diagnostics (events, server-sent events), so the moment it stops, and with it any
    partial charge, would be chosen after seeing the results. A refund of what was "not
    spent" then turns each job's (epsilon, delta) into an odometer read out adaptively, which
    basic composition does not cover. Charging the reservation keeps each job's (epsilon,
    delta) fixed before it runs: stopping early only releases less (post-processing of a
    mechanism that was paid for in full), and basic composition over reservations chosen
    adaptively, job after job, is a valid privacy filter (Rogers, Roth, Ullman and Vadhan
    2016, "Privacy Odometers and Filters: Pay-as-you-Go Composition").
    Partial refunds would need a filter proven for fully adaptive composition, such as a
    Renyi/zCDP filter (Feldman and Zrnic 2021); this service has none.

    A job that released nothing has disclosed nothing, whatever it computed: it is charged
    (0, 0), so failures before the first release stay free.

    Idempotent: a job already final is returned unchanged (the first final state wins). Runs
    under the tenant's budget lock, then the job's, so it serialises with reservations on its
    budget and with the job's own releases (a release recorded before this pays the whole
    reservation; one after it is refused). Called by workers, so not scoped to a tenant; the
    service cancels with :func:`cancel`.

    Args:
        session: a session not in a transaction (this function runs its own).
        job_id: the job.
        status: "succeeded", "failed" or "canceled".
        error: what went wrong, for a failed job.

    Raises:
        NotFound: no such job.
    """
    if status not in FINAL_STATUSES:
        raise ValueError(f"final status must be one of {sorted(FINAL_STATUSES)}, got {status!r}")
    with write_transaction(session):
        return _finalize_locked(session, job_id, status, error)


def cancel(session: Session, tenant_id: str, job_id: str) -> Job:
    """Cancels one of the tenant's jobs (best effort: a running worker stops at its next release
    or progress update); a job that released anything pays its whole reservation (see
    :func:`finalize`), one that did not is refunded. A final job is returned unchanged.

    Raises:
        NotFound: no such job for this tenant.
    """
    with write_transaction(session):
        job_of_tenant(session, tenant_id, job_id)
        return _finalize_locked(session, job_id, "canceled", None)


def _finalize_locked(session: Session, job_id: str, status: str, error: str | None) -> Job:
    lock_budgets(session, tenant_of_job(session, job_id))
    job = lock_job(session, job_id)
    if job.status in FINAL_STATUSES:
        return job
    epsilon_sum, releases = session.execute(
        select(func.coalesce(func.sum(Release.epsilon), 0.0), func.count(Release.id)).where(
            Release.job_id == job_id
        )
    ).one()
    now = utcnow()
    job.status, job.error, job.finished_at, job.updated_at = status, error, now, now
    job.epsilon_spent = float(epsilon_sum)
    job.delta_spent = job.delta_reserved if releases else 0.0
    job.epsilon_charged = job.epsilon_reserved if releases else 0.0
    job.delta_charged = job.delta_reserved if releases else 0.0
    session.flush()
    add_event(
        session,
        job,
        "finished",
        {
            "status": status,
            "error": error,
            "epsilon_charged": job.epsilon_charged,
            "delta_charged": job.delta_charged,
            "epsilon_refunded": job.epsilon_reserved - job.epsilon_charged,
            "delta_refunded": job.delta_reserved - job.delta_charged,
        },
    )
    return job


@overload
def _status(session: Session, which: Any, *, missing_ok: Literal[False] = ...) -> BudgetStatus: ...
@overload
def _status(session: Session, which: Any, *, missing_ok: bool) -> BudgetStatus | None: ...
def _status(session: Session, which: Any, *, missing_ok: bool = False) -> BudgetStatus | None:
    """The status of the budget ``which`` selects (a condition on :class:`Budget`), summed over
    the jobs of all of its datasets (deleted ones included: their spending stays), in one
    statement."""
    final = Job.status.in_(FINAL_STATUSES)

    def total(final_value: Any, active_value: Any) -> Any:
        return func.coalesce(func.sum(case((final, final_value), else_=active_value)), 0.0)

    statement = (
        select(
            Budget.epsilon_cap,
            Budget.delta_cap,
            total(Job.epsilon_charged, Job.epsilon_spent),
            total(Job.delta_charged, Job.delta_spent),
            total(0.0, Job.epsilon_reserved - Job.epsilon_spent),
            total(0.0, Job.delta_reserved - Job.delta_spent),
            func.count(case((final, None), else_=Job.id)),
        )
        .select_from(Budget)
        .join(Dataset, (Dataset.tenant_id == Budget.tenant_id) & (Dataset.budget_id == Budget.id))
        .outerjoin(Job, (Job.tenant_id == Dataset.tenant_id) & (Job.dataset_id == Dataset.id))
        .where(which)
        .group_by(Budget.id, Budget.epsilon_cap, Budget.delta_cap)
    )
    row = session.execute(statement).one_or_none()
    if row is None:
        if missing_ok:
            return None
        raise RuntimeError("no such budget")  # the caller holds the lock and read its id
    eps_cap, delta_cap, eps_spent, delta_spent, eps_reserved, delta_reserved, active = row
    return BudgetStatus(
        epsilon_cap=eps_cap,
        delta_cap=delta_cap,
        epsilon_spent=float(eps_spent),
        delta_spent=float(delta_spent),
        epsilon_reserved=float(eps_reserved),
        delta_reserved=float(delta_reserved),
        epsilon_remaining=max(eps_cap - eps_spent - eps_reserved, 0.0),
        delta_remaining=max(delta_cap - delta_spent - delta_reserved, 0.0),
        active_jobs=int(active),
    )


def _within(amount: float, left: float, cap: float) -> bool:
    return amount <= left + RTOL * cap


def _job_by_key(session: Session, tenant_id: str, key: str) -> Job | None:
    statement = select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)
    return session.scalars(statement).one_or_none()


def _same_request(job: Job, key: str, request: tuple[Any, ...]) -> Job:
    recorded = (
        job.dataset_id,
        job.epsilon_reserved,
        job.delta_reserved,
        job.spec,
        job.iterations,
        job.eval_dataset_id,
    )
    if recorded != request:
        raise IdempotencyConflict(
            f"idempotency key {key!r} was already used for a different request (job {job.id})"
        )
    return job


def _check_epsilon(epsilon: float) -> None:
    if not _is_real(epsilon) or not 0 < epsilon < math.inf:
        raise ValueError(f"epsilon must be finite and > 0, got {epsilon!r}")


def _check_delta(delta: float) -> None:
    if not _is_real(delta) or not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
