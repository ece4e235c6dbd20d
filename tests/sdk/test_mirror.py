"""The SDK's copies kept honest: the async client mirrors the sync one, and the models carry
every field of the server's schemas in ``openapi.yaml`` (events have no schema there: their
route streams or pages them as it is asked)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml
from privevo_client import (
    AsyncClient,
    AsyncJob,
    Audit,
    Budget,
    Client,
    Dataset,
    Evaluation,
    Job,
)
from privevo_client.aio import AsyncDatasets, AsyncJobs
from privevo_client.client import Datasets, Jobs
from privevo_client.models import BaseJob, EvaluationIteration, Memorisation
from pydantic import BaseModel

OPENAPI = Path(__file__).resolve().parents[2] / "openapi.yaml"


def surface(cls: type) -> dict[str, list[tuple[str, object, object]]]:
    """Public methods by name, each as its parameters' (name, kind, default)."""
    return {
        name: [
            (parameter.name, parameter.kind, parameter.default)
            for parameter in inspect.signature(member).parameters.values()
        ]
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        # Not pydantic's own methods, nor those the two job classes share from BaseJob.
        if not name.startswith("_") and not hasattr(BaseModel, name) and name not in vars(BaseJob)
    }


@pytest.mark.parametrize(
    ("sync", "mirror"),
    [(Client, AsyncClient), (Datasets, AsyncDatasets), (Jobs, AsyncJobs), (Job, AsyncJob)],
    ids=["client", "datasets", "jobs", "job"],
)
def test_the_async_client_mirrors_the_sync_one(sync: type, mirror: type) -> None:
    assert surface(mirror) == surface(sync)
    blocking = [
        name
        for name in surface(mirror)
        if not (
            inspect.iscoroutinefunction(getattr(mirror, name))
            or inspect.isasyncgenfunction(getattr(mirror, name))
        )
    ]
    assert blocking == []


@pytest.mark.parametrize(
    ("model", "schema"),
    [
        (Dataset, "DatasetPublic"),
        (Budget, "BudgetPublic"),
        (BaseJob, "JobPublic"),
        (Evaluation, "EvaluationPublic"),
        (EvaluationIteration, "EvaluationIteration"),
        (Memorisation, "MemorisationPublic"),
        (Audit, "AuditPublic"),
    ],
)
def test_the_models_carry_every_field_of_the_servers_schemas(model: type, schema: str) -> None:
    spec = yaml.safe_load(OPENAPI.read_text())
    assert set(model.model_fields) == set(spec["components"]["schemas"][schema]["properties"])
