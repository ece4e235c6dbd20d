"""Request and response bodies of the REST API (v1)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pe_core.audit import DEFAULT_CANARIES, DEFAULT_GUESSES
from pe_core.config import PeJob
from service.db import BudgetStatus, Dataset, Job, JobEvent
from service.db.models import COLUMN_LENGTH


class ErrorBody(BaseModel):
    """An error: ``detail`` says what is wrong and how to fix it."""

    detail: str


class FieldError(BaseModel):
    """One problem of a request, located (FastAPI's validation error)."""

    type: str
    loc: list[str | int] = Field(description="Where: body, query, path or header, then names")
    msg: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ValidationErrorBody(BaseModel):
    """A 422: FastAPI's list of located problems, or one message when each field is valid but
    the request cannot run as a whole (a job its dataset cannot run, a cap above the limit)."""

    detail: list[FieldError] | str


class BudgetPublic(BaseModel):
    """A dataset's privacy budget, shared by every dataset of the tenant and of its unit of
    privacy holding any of the same records (however they were saved). Jobs add up by basic
    composition (sums of eps and delta); a job that made any release is charged all it
    reserved, one that made none nothing."""

    epsilon_cap: float
    delta_cap: float
    epsilon_spent: float
    delta_spent: float
    epsilon_reserved: float
    delta_reserved: float
    epsilon_remaining: float
    delta_remaining: float
    active_jobs: int

    @classmethod
    def of(cls, status: BudgetStatus) -> BudgetPublic:
        return cls.model_validate(status, from_attributes=True)


class DatasetPublic(BaseModel):
    id: str
    name: str
    modality: Literal["image", "text"]
    record_count: int
    labels: list[str]
    sha256: str = Field(description="sha256 of the uploaded file's bytes")
    duplicate_records: int = Field(
        description="Records repeating an earlier record of the upload (content, not label): "
        "each copy votes, so a repeated record counts as that many records"
    )
    privacy_unit: Literal["record", "user"] = Field(
        description="What the budget and every job on this data protect: one record, or all "
        "records naming one user (user_column); fixed at upload"
    )
    user_column: str | None = Field(
        description="The field (tables) or array (npz) naming each record's user; null for "
        "record-level data"
    )
    role: Literal["private", "heldout"] = Field(
        description="private: the input of jobs, with a privacy budget. heldout: real data "
        "that only evaluates jobs (NOT DP scores for the owner, as a job's eval_dataset_id); "
        "never a job's input, no budget; fixed at upload"
    )
    created_at: datetime
    expires_at: datetime | None = Field(
        None,
        description="When the dataset is purged as by a delete (its files and data key; the "
        "budget and its history stay); null: kept until deleted",
    )
    budget: BudgetPublic | None = Field(
        description="The privacy budget its jobs draw on; null for held-out data, which no job "
        "ever spends on"
    )

    @classmethod
    def of(cls, dataset: Dataset, budget: BudgetStatus | None) -> DatasetPublic:
        return cls(
            id=dataset.id,
            name=dataset.name,
            modality=dataset.modality,
            record_count=dataset.record_count,
            labels=list(dataset.labels),
            sha256=dataset.sha256,
            duplicate_records=dataset.duplicate_records,
            privacy_unit=dataset.privacy_unit,
            user_column=dataset.user_column,
            role=dataset.role,
            created_at=dataset.created_at,
            expires_at=dataset.expires_at,
            budget=None if budget is None else BudgetPublic.of(budget),
        )


class DatasetForm(BaseModel):
    """The form fields of a dataset upload, sent as multipart/form-data beside its file part."""

    name: str = Field(min_length=1, max_length=255)
    modality: Literal["image", "text"]
    role: Literal["private", "heldout"] = Field(
        "private",
        description="private (the default): the input of jobs, with a privacy budget "
        "(epsilon_cap required). heldout: real data disjoint from the private data that only "
        "evaluates jobs (NOT DP scores for the owner, named as a job's eval_dataset_id); it "
        "has no budget, is never a job's input, and takes no caps and no user_column",
    )
    epsilon_cap: float | None = Field(
        None, gt=0, le=100, description="Private data only, required there: the budget's cap"
    )
    delta_cap: float | None = Field(
        None, gt=0, lt=1, description="Private data only: the budget's delta cap (default 1e-5)"
    )
    # Column names are capped at what the datasets table stores: a longer name of a column
    # the file really has would pass validation and then fail to be stored.
    text_column: str = Field("text", min_length=1, max_length=COLUMN_LENGTH)
    label_column: str = Field("label", min_length=1, max_length=COLUMN_LENGTH)
    user_column: str | None = Field(
        None,
        min_length=1,
        max_length=COLUMN_LENGTH,
        description="For user-level privacy: the field (jsonl, csv, parquet) or array (npz) "
        "naming each record's user; its jobs then protect all records of one user. Image "
        "folders and zips name no users",
    )

    expires_at: datetime | None = Field(
        None,
        description="Optional: when to purge the dataset as a delete does (ISO 8601 with a "
        "time zone, in the future); the budget and its history stay",
    )

    @field_validator("expires_at")
    @classmethod
    def _aware_future(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2030-01-31T00:00:00Z")
        if value <= datetime.now(UTC):
            raise ValueError("must be in the future")
        return value

    @field_validator("name", "text_column", "label_column", "user_column")
    @classmethod
    def _without_nul(cls, value: str | None) -> str | None:
        # PostgreSQL refuses NUL in text, and no file's column can be named with one.
        if value is not None and "\x00" in value:
            raise ValueError("may not contain a NUL character (\\x00): remove it")
        return value

    def role_problems(self) -> list[dict[str, Any]]:
        """What the fields sent do not allow for the role, as FastAPI reports invalid fields."""
        if self.role == "private" and self.epsilon_cap is None:
            return [
                {
                    "type": "missing",
                    "loc": ("epsilon_cap",),
                    "msg": "Field required: private data needs a budget cap",
                    "input": None,
                }
            ]
        sent = sorted({"epsilon_cap", "delta_cap", "user_column"} & self.model_fields_set)
        if self.role == "heldout" and sent:
            return [
                {
                    "type": "value_error",
                    "loc": (name,),
                    "msg": "held-out data has no privacy budget and names no users: leave "
                    f"out {name}",
                    "input": getattr(self, name),
                }
                for name in sent
            ]
        return []

    @property
    def budget_caps(self) -> tuple[float, float] | tuple[None, None]:
        """(epsilon_cap, delta_cap) of private data (delta 1e-5 unless sent); none for
        held-out data."""
        if self.role == "heldout" or self.epsilon_cap is None:
            return None, None
        return self.epsilon_cap, 1e-5 if self.delta_cap is None else self.delta_cap

    @classmethod
    def request_body(cls) -> dict[str, Any]:
        """The OpenAPI request body of an upload: these fields and the binary ``file`` part.

        The route reads the body as a stream, so FastAPI cannot derive this itself.
        """
        schema = cls.model_json_schema()
        file = {
            "type": "string",
            "contentMediaType": "application/octet-stream",
            "title": "File",
            "description": "zip of class folders, npz, jsonl/csv/parquet",
        }
        schema["properties"] = {"file": file, **schema["properties"]}
        schema["required"] = ["file", *schema["required"]]
        return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


class DatasetList(BaseModel):
    items: list[DatasetPublic]
    next_cursor: str | None


MAX_CANARIES = 100_000
"""The most canaries an audit job may add: each is drawn, pinned in every vote and scored."""


class AuditOption(BaseModel):
    """Makes a job an empirical privacy audit (``privevo audit``'s method, white-box, 95%)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    canaries: int = Field(
        DEFAULT_CANARIES,
        ge=2,
        le=MAX_CANARIES,
        description="m: canary records (drawtext digits, small, bold, turned, in a corner), "
        "each added to the job's data with probability 1/2",
    )
    guesses: int = Field(
        DEFAULT_GUESSES,
        ge=1,
        le=MAX_CANARIES,
        description="r, at most canaries: 'in' for the r/2 highest scores, 'out' for the "
        "lowest; the rest abstain. Fixed before the run",
    )
    seed: int | None = Field(
        None,
        ge=0,
        lt=2**63,
        description="Seed of the canaries and their coins; null: drawn when the job first "
        "starts. Reported in audit.json",
    )


class JobCreate(PeJob):
    """The engine's job model plus the dataset it runs on: the same fields as the CLI."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset_id: str
    eval_dataset_id: str | None = Field(
        None,
        description="NOT DP evaluation: a held-out dataset of yours (role heldout, disjoint "
        "from the private data, labels among the job's) to score the synthetic data against "
        "after every iteration, with a memorisation check at the end; the owner reads it at "
        "GET /v1/jobs/{id}/evaluation. It spends no budget and is never in the result",
    )
    audit: AuditOption | None = Field(
        None,
        description="Run the job as an empirical privacy audit: canaries join the data, and "
        "the result adds audit.json (GET /v1/jobs/{id}/audit), a lower bound on the epsilon "
        "the run leaks next to its claimed epsilon. drawtext jobs on record-level data only. "
        "It is a run on the dataset: it spends the dataset's budget like any job, so audit "
        "the installation on a public stand-in (e.g. the MNIST test split uploaded as a "
        "dataset of its own)",
    )


class JobPublic(BaseModel):
    id: str
    dataset_id: str
    eval_dataset_id: str | None = Field(
        description="The held-out dataset the job is evaluated on (NOT DP), or null"
    )
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
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

    @classmethod
    def of(cls, job: Job) -> JobPublic:
        return cls.model_validate(job, from_attributes=True)


class JobList(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None


class EventPublic(BaseModel):
    id: int = Field(description="The event's number in its job: 1, 2, 3... (the cursor)")
    kind: str
    payload: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, event: JobEvent) -> EventPublic:
        return cls(
            id=event.seq, kind=event.kind, payload=event.payload, created_at=event.created_at
        )


class EventList(BaseModel):
    items: list[EventPublic]
    next_cursor: int | None


NOT_DP = (
    "NOT DP: computed in the clear from held-out records and, for the memorisation check, from "
    "the private records; for the data owner only, never to be published with the synthetic "
    "data."
)


class EvaluationIteration(BaseModel):
    """NOT DP: the scores of one iteration's synthetic data against the held-out data, in the
    job's embedding space."""

    iteration: int = Field(description="0 is the initial population, T the final one")
    accuracy: float = Field(
        description="Downstream accuracy on the held-out records of a linear classifier "
        "trained on the synthetic data, in [0, 1]"
    )
    macro_f1: float | None = Field(
        None,
        description="Macro-F1 of the same classifier on the held-out records (the mean of each "
        "class's F1; low when some classes are never predicted), in [0, 1]; null for "
        "evaluations made before it was computed",
    )
    fid: float = Field(
        description="Frechet distance between Gaussians fitted to the held-out and the "
        "synthetic embeddings (FID with the inception embedding); lower is closer"
    )
    precision: float = Field(
        description="Improved precision: share of synthetic samples inside the held-out "
        "data's manifold, in [0, 1]"
    )
    recall: float = Field(
        description="Improved recall: share of held-out records inside the synthetic data's "
        "manifold, in [0, 1]"
    )


class MemorisationPublic(BaseModel):
    """NOT DP, reads private records: how close the final synthetic data comes to them."""

    closer_to_private: float = Field(
        description="Share of final synthetic samples strictly closer to a private record than "
        "to any held-out one"
    )
    baseline: float = Field(
        description="That share for samples that saw neither set, n / (n + h) for n private "
        "and h held-out records; a share well above it means private records are reproduced"
    )


class EvaluationPublic(BaseModel):
    """NOT DP: computed in the clear from held-out records and, for the memorisation check,
    from the private records; for the data owner only, never to be published with the
    synthetic data. A succeeded job's scores against its held-out dataset per iteration, and
    the memorisation check of its final synthetic data."""

    dp: Literal[False] = Field(False, description="Always false: " + NOT_DP)
    job_id: str
    eval_dataset_id: str
    per_iteration: list[EvaluationIteration]
    memorisation: MemorisationPublic


class AuditPublic(BaseModel):
    """An audit job's report (``audit.json``, also in its result): the lower bound on the
    epsilon its run leaked, next to the epsilon it claims, and how it was reached (one run,
    Steinke, Nasr & Jagielski 2023). Post-processing of the run's DP releases."""

    job_id: str
    dataset_id: str
    claimed_epsilon: float | None = Field(
        description="The epsilon the run's releases account for at delta"
    )
    epsilon_target: float | None
    delta: float
    epsilon_lower_bound: float = Field(
        description="With probability at least confidence, the run is not (eps, delta)-DP for "
        "any eps below this. Above claimed_epsilon: the run leaks more than it claims"
    )
    confidence: float
    exceeds_claim: bool
    verdict: str
    p_value_at_claim: float | None = Field(
        description="The chance of this many correct guesses if the claim held"
    )
    method: str
    mode: Literal["white-box", "black-box"]
    score: str
    m: int = Field(description="Canaries")
    r: int = Field(description="Guesses made (the rest abstained)")
    guesses: dict[str, int] = Field(
        description="in, out, abstained, correct, correct_in, correct_out"
    )
    canaries: dict[str, Any] = Field(description="The seed, how many were included, the design")
    run: dict[str, Any] = Field(description="The audited run: T, samples, k, lookahead, sigma")
    seed: int = Field(description="The run's seed of generation and selection")
    warnings: list[str]
    budget: str = Field(description="What the audit spent")
