"""Privacy budgets: atomic reservations, exactly-once releases, and refunds when a job ends.

How spending is counted
-----------------------
A budget belongs to (tenant, sha256 of the data) and has caps ``(epsilon_cap, delta_cap)``.
Jobs on the same data compose by basic composition: their epsilons add and their deltas add.
A job holds, against its budget:

* while queued or running: what it reserved, ``(epsilon_reserved, delta_reserved)``;
* once final: what it is charged, ``(epsilon_charged, delta_charged)`` (see :func:`finalize`).

A new job fits when the holds of all jobs on the budget plus its own request stay within both
caps. The check and the insert happen under the budget's lock (PostgreSQL: the budget row,
``SELECT ... FOR UPDATE``; SQLite: ``BEGIN IMMEDIATE``), so concurrent requests are decided one
after the other and together never exceed the cap.

Within a job, spending follows the engine's own (tighter) accountant. Each noisy release is a
:class:`~service.db.models.Release` row whose ``epsilon`` is what that release ADDED to the
job's composed epsilon at the job's reserved delta: the worker computes the accountant's epsilon
over all of the job's releases so far, subtracts the job's ``epsilon_spent`` before this
release, and records the (non-negative) difference. The sum of a job's release epsilons is
therefore the accountant's epsilon for everything the job released, and that sum is what the
job is charged.

Sums of doubles are compared with a relative slack of ``RTOL`` (1e-9): three releases of 0.4
sum to 1.2000000000000002 and must still fit a cap of 1.2. The slack lets through at most a
billionth of the cap, far below any difference between meaningful budgets.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import case, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.engine import read_transaction, write_transaction
from service.db.errors import (
    BudgetExceeded,
    IdempotencyConflict,
    JobFinished,
    NotFound,
    ReleaseConflict,
    ReservationExceeded,
)
from service.db.models import FINAL_STATUSES, Budget, Dataset, Job, Release, utcnow
from service.db.queries import (
    add_event,
    budget_of_job,
    dataset_of_tenant,
    job_of_tenant,
    lock_budget,
    lock_job,
)

if TYPE_CHECKING:
    # For the annotation only: pe_core.privacy imports dp_accounting and scipy (about 2.6 s),
    # which the gateway never needs.
    from pe_core.privacy import DpEvent

RTOL: Final = 1e-9
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class BudgetStatus:
    """Where a dataset's privacy budget stands.

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
) -> Job:
    """Creates a queued job holding ``(epsilon, delta)`` of its dataset's budget, atomically.

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

    Returns:
        The new (or idempotently repeated) job.

    Raises:
        NotFound: no such dataset for this tenant.
        BudgetExceeded: the job does not fit; the message names what is left.
        IdempotencyConflict: the key was used for a different request.
    """
    _check_epsilon(epsilon)
    _check_delta(delta)
    if not _is_int(iterations) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    spec = json.loads(json.dumps(spec, allow_nan=False))
    request = (dataset_id, float(epsilon), float(delta), spec, iterations)
    try:
        with write_transaction(session):
            dataset = dataset_of_tenant(session, tenant_id, dataset_id, include_deleted=True)
            budget = lock_budget(session, tenant_id, dataset.sha256)
            if idempotency_key is not None:
                existing = _job_by_key(session, tenant_id, idempotency_key)
                if existing is not None:
                    return _same_request(existing, idempotency_key, request)
            if dataset.deleted_at is not None:
                raise NotFound(f"dataset {dataset_id} not found")
            status = _status(session, budget)
            fits = _within(epsilon, status.epsilon_remaining, budget.epsilon_cap) and _within(
                delta, status.delta_remaining, budget.delta_cap
            )
            if not fits:
                raise BudgetExceeded(
                    dataset_id=dataset_id,
                    epsilon=epsilon,
                    delta=delta,
                    epsilon_remaining=status.epsilon_remaining,
                    delta_remaining=status.delta_remaining,
                    epsilon_cap=budget.epsilon_cap,
                    delta_cap=budget.delta_cap,
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
            )
            session.add(job)
            session.flush()
            add_event(
                session,
                job,
                "created",
                {"epsilon": job.epsilon_reserved, "delta": job.delta_reserved},
            )
            return job
    except IntegrityError:
        # Two creates with one key on different datasets lock different budgets, so on
        # PostgreSQL both can get past the lookup; the unique key then refuses the second.
        if idempotency_key is None:
            raise
        with read_transaction(session):
            existing = _job_by_key(session, tenant_id, idempotency_key)
        if existing is None:
            raise
        return _same_request(existing, idempotency_key, request)


def remaining(session: Session, tenant_id: str, dataset_id: str) -> BudgetStatus:
    """Where the budget of one of the tenant's datasets stands (see :class:`BudgetStatus`).

    Raises:
        NotFound: no such dataset for this tenant.
    """
    with read_transaction(session):
        dataset = dataset_of_tenant(session, tenant_id, dataset_id)
        budget = session.get_one(Budget, (tenant_id, dataset.sha256))
        return _status(session, budget)


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
    """Moves a job to its final state and refunds what it reserved but did not spend.

    The job is then charged, from its release rows:

    * epsilon: ``min(epsilon_reserved, sum of its releases' epsilons)``; the sum never exceeds
      the reservation by more than the rounding slack, since :func:`record_release` refuses
      releases that would;
    * delta: ``delta_reserved`` if it released anything, else 0. The accountant's epsilon is
      valid only at the delta it was computed for, and (epsilon, delta) is spent as one pair:
      a smaller delta would need a larger epsilon, so nothing of a used delta can be given back.
      A job that released nothing has disclosed nothing and is charged (0, 0).

    Idempotent: a job already final is returned unchanged (the first final state wins). Runs
    under the budget's lock, then the job's, so it serialises with reservations on the same
    budget and with the job's own releases. Called by workers, so not scoped to a tenant; the
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
    or progress update) and refunds what it did not spend; a final job is returned unchanged.

    Raises:
        NotFound: no such job for this tenant.
    """
    with write_transaction(session):
        job_of_tenant(session, tenant_id, job_id)
        return _finalize_locked(session, job_id, "canceled", None)


def _finalize_locked(session: Session, job_id: str, status: str, error: str | None) -> Job:
    tenant_id, sha256 = budget_of_job(session, job_id)
    lock_budget(session, tenant_id, sha256)
    job = lock_job(session, job_id)
    if job.status in FINAL_STATUSES:
        return job
    epsilon_sum, releases = session.execute(
        select(func.coalesce(func.sum(Release.epsilon), 0.0), func.count(Release.id)).where(
            Release.job_id == job_id
        )
    ).one()
    delta_spent = job.delta_reserved if releases else 0.0
    now = utcnow()
    job.status, job.error, job.finished_at, job.updated_at = status, error, now, now
    job.epsilon_spent, job.delta_spent = float(epsilon_sum), delta_spent
    job.epsilon_charged = min(job.epsilon_reserved, float(epsilon_sum))
    job.delta_charged = delta_spent
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


def _status(session: Session, budget: Budget) -> BudgetStatus:
    final = Job.status.in_(FINAL_STATUSES)

    def total(final_value: Any, active_value: Any) -> Any:
        return func.coalesce(func.sum(case((final, final_value), else_=active_value)), 0.0)

    statement = (
        select(
            total(Job.epsilon_charged, Job.epsilon_spent),
            total(Job.delta_charged, Job.delta_spent),
            total(0.0, Job.epsilon_reserved - Job.epsilon_spent),
            total(0.0, Job.delta_reserved - Job.delta_spent),
            func.count(case((final, None), else_=Job.id)),
        )
        .join(Dataset, (Dataset.tenant_id == Job.tenant_id) & (Dataset.id == Job.dataset_id))
        .where(Dataset.tenant_id == budget.tenant_id, Dataset.sha256 == budget.dataset_sha256)
    )
    eps_spent, delta_spent, eps_reserved, delta_reserved, active = session.execute(statement).one()
    return BudgetStatus(
        epsilon_cap=budget.epsilon_cap,
        delta_cap=budget.delta_cap,
        epsilon_spent=float(eps_spent),
        delta_spent=float(delta_spent),
        epsilon_reserved=float(eps_reserved),
        delta_reserved=float(delta_reserved),
        epsilon_remaining=max(budget.epsilon_cap - eps_spent - eps_reserved, 0.0),
        delta_remaining=max(budget.delta_cap - delta_spent - delta_reserved, 0.0),
        active_jobs=int(active),
    )


def _within(amount: float, left: float, cap: float) -> bool:
    return amount <= left + RTOL * cap


def _job_by_key(session: Session, tenant_id: str, key: str) -> Job | None:
    statement = select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)
    return session.scalars(statement).one_or_none()


def _same_request(job: Job, key: str, request: tuple[Any, ...]) -> Job:
    recorded = (job.dataset_id, job.epsilon_reserved, job.delta_reserved, job.spec, job.iterations)
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
