"""Errors of the persistence layer; the service turns each into one HTTP status and message."""

from __future__ import annotations

from pe_core.errors import PrivevoError


class NotFound(PrivevoError, LookupError):
    """No such resource for this tenant (another tenant's resource is reported the same way)."""


class BudgetExceeded(PrivevoError):
    """A job does not fit in what is left of its dataset's privacy budget.

    Attributes:
        dataset_id: the dataset the job was for.
        epsilon, delta: what the job asked for.
        epsilon_remaining, delta_remaining: what is left of the budget.
        epsilon_cap, delta_cap: the budget's caps.
    """

    def __init__(
        self,
        *,
        dataset_id: str,
        epsilon: float,
        delta: float,
        epsilon_remaining: float,
        delta_remaining: float,
        epsilon_cap: float,
        delta_cap: float,
    ) -> None:
        self.dataset_id = dataset_id
        self.epsilon = epsilon
        self.delta = delta
        self.epsilon_remaining = epsilon_remaining
        self.delta_remaining = delta_remaining
        self.epsilon_cap = epsilon_cap
        self.delta_cap = delta_cap
        super().__init__(
            f"job needs epsilon {epsilon:.6g}, delta {delta:.6g} but dataset {dataset_id} has "
            f"epsilon {epsilon_remaining:.6g}, delta {delta_remaining:.6g} left of cap "
            f"epsilon {epsilon_cap:.6g}, delta {delta_cap:.6g}"
        )


class BudgetCapConflict(PrivevoError):
    """Data already uploaded under another cap: a re-upload must not reset or change its budget."""


class IdempotencyConflict(PrivevoError):
    """An idempotency key was reused for a different request."""


class JobFinished(PrivevoError):
    """The job already reached a final state; nothing more may be recorded for it."""


class ReservationExceeded(PrivevoError):
    """A release would take a job's spent epsilon above what the job reserved."""


class ReleaseConflict(PrivevoError):
    """A release key is recorded with a different epsilon: the two writers disagree on its cost."""


class InvalidCursor(PrivevoError, ValueError):
    """A pagination cursor this server did not issue."""


class WrongRole(PrivevoError):
    """A dataset is used for what its role forbids: held-out data as a job's private input, or
    private data as a job's evaluation data (answered 422, before anything is reserved)."""


class QuotaExceeded(PrivevoError):
    """A tenant is at one of its quotas (queued jobs, stored upload bytes): answered 429 with
    Retry-After, since the quota frees up as jobs start and data is deleted.

    Attributes:
        limit: the quota's name, as the operator sets it (``max_queued_jobs``...).
    """

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit
