"""Request and response bodies of the REST API (v1)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pe_core.config import PeJob
from service.db import BudgetStatus, Dataset, Job, JobEvent
from service.db.models import COLUMN_LENGTH


class ErrorBody(BaseModel):
    detail: str


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
    created_at: datetime
    budget: BudgetPublic

    @classmethod
    def of(cls, dataset: Dataset, budget: BudgetStatus) -> DatasetPublic:
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
            created_at=dataset.created_at,
            budget=BudgetPublic.of(budget),
        )


class DatasetForm(BaseModel):
    """The form fields of a dataset upload, sent as multipart/form-data beside its file part."""

    name: str = Field(min_length=1, max_length=255)
    modality: Literal["image", "text"]
    epsilon_cap: float = Field(gt=0, le=100)
    delta_cap: float = Field(1e-5, gt=0, lt=1)
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


class JobCreate(PeJob):
    """The engine's job model plus the dataset it runs on: the same fields as the CLI."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset_id: str


class JobPublic(BaseModel):
    id: str
    dataset_id: str
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
    id: int
    kind: str
    payload: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, event: JobEvent) -> EventPublic:
        return cls.model_validate(event, from_attributes=True)


class EventList(BaseModel):
    items: list[EventPublic]
    next_cursor: int | None
