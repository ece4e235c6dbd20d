"""Typed views of the server's JSON bodies (``service/schemas.py`` of the server, API v1).

Unknown fields are ignored, so a newer server that adds fields does not break this client.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
FINAL_STATUSES: Final = frozenset({"succeeded", "failed", "canceled"})


class Budget(BaseModel):
    """A dataset's privacy budget, shared with every dataset of the tenant and of its unit of
    privacy that holds any of the same records; jobs add up by basic composition (sums of eps
    and delta).

    ``*_reserved`` is held by jobs still running; ``*_remaining`` is what new jobs may take. A
    job that made any release is charged all it reserved; one that made none, nothing.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    epsilon_cap: float
    delta_cap: float
    epsilon_spent: float
    delta_spent: float
    epsilon_reserved: float
    delta_reserved: float
    epsilon_remaining: float
    delta_remaining: float
    active_jobs: int


class Dataset(BaseModel):
    """An uploaded dataset (its records never leave the server): private data with a budget,
    or held-out data (``role == "heldout"``) that only evaluates jobs and has no budget."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    name: str
    modality: Literal["image", "text"]
    record_count: int
    labels: list[str]
    sha256: str
    duplicate_records: int = 0  # records repeating an earlier one of the upload (each votes)
    privacy_unit: Literal["record", "user"] = "record"  # what its budget and jobs protect
    user_column: str | None = None  # the column naming each record's user (user-level)
    role: Literal["private", "heldout"] = "private"  # heldout: evaluation data, no budget
    created_at: datetime
    expires_at: datetime | None = None  # when the server purges it as a delete does
    budget: Budget | None  # None for held-out data, which no job spends on


class Event(BaseModel):
    """One entry of a job's event log ("started", "iteration" with epsilon spent, ...)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: int
    kind: str
    payload: dict[str, Any]
    created_at: datetime


class BaseJob(BaseModel):
    """A job's state as the server last reported it.

    ``iteration`` counts completed-or-current PE iterations out of ``iterations``; ``phase`` is
    the engine's current step; ``epsilon_spent`` is what its noisy releases have cost so far.
    """

    model_config = ConfigDict(extra="ignore")

    id: str
    dataset_id: str
    eval_dataset_id: str | None = None  # the held-out dataset it is evaluated on (NOT DP)
    status: JobStatus
    iteration: int
    iterations: int
    phase: str | None
    epsilon_reserved: float
    delta_reserved: float
    epsilon_spent: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    spec: dict[str, Any]

    @property
    def done(self) -> bool:
        """Whether the job reached a final status (succeeded, failed or canceled)."""
        return self.status in FINAL_STATUSES

    def _update(self, fresh: BaseJob) -> None:
        for name in type(self).model_fields:
            setattr(self, name, getattr(fresh, name))


class Audit(BaseModel):
    """An audit job's report (``audit.json``): a lower bound on the epsilon its run leaked, at
    ``confidence``, next to the epsilon it claims (one-run method of Steinke, Nasr & Jagielski
    2023). A bound above ``claimed_epsilon`` means the run leaks more than it claims; one at or
    below it is consistent with the claim, never a proof."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    job_id: str
    dataset_id: str
    claimed_epsilon: float | None  # None: no privacy claimed
    epsilon_target: float | None
    delta: float
    epsilon_lower_bound: float
    confidence: float
    exceeds_claim: bool
    verdict: str
    p_value_at_claim: float | None
    method: str
    mode: Literal["white-box", "black-box"]
    score: str
    m: int  # canaries
    r: int  # guesses made
    guesses: dict[str, int]  # in, out, abstained, correct, correct_in, correct_out
    canaries: dict[str, Any]  # seed, included, design
    run: dict[str, Any]  # iterations, num_samples, k, lookahead, sigma, noise
    seed: int  # the run's seed
    warnings: list[str]
    budget: str  # what the audit spent


class EvaluationIteration(BaseModel):
    """NOT DP: one iteration's synthetic data scored against the held-out data."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    iteration: int
    accuracy: float  # downstream accuracy on the held-out records, in [0, 1]
    macro_f1: float | None = None  # its mean per-class F1; None from older servers
    fid: float  # Frechet distance of the embeddings; lower is closer
    precision: float
    recall: float


class Memorisation(BaseModel):
    """NOT DP, reads private records: the share of final synthetic samples closer to a private
    record than to any held-out one, against what samples that saw neither set would give."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    closer_to_private: float
    baseline: float


class Evaluation(BaseModel):
    """NOT DP, for the data owner only: a succeeded job's scores against its held-out dataset
    per iteration, and the memorisation check of its final synthetic data. Computed in the
    clear from held-out and private records: never publish it with the synthetic data."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    dp: Literal[False] = False
    job_id: str
    eval_dataset_id: str
    per_iteration: list[EvaluationIteration]
    memorisation: Memorisation
