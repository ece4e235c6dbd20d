"""Jobs evaluated on held-out data: what the gateway checks before it reserves anything, and the
owner's view of what the worker computed. NOT DP.

A tenant uploads held-out real data like any dataset, with ``role=heldout``: it has no budget
and is never a job's private input. A job naming it as ``eval_dataset_id`` is scored by its
worker after every iteration (downstream accuracy and macro-F1, FID, precision, recall:
``pe_core.metrics``) and once at the end by the memorisation check (each synthetic sample's
distance to its closest private record against the closest held-out one). None of it is DP:
the metrics read held-out records in the clear and the memorisation check reads private ones,
so all of it is kept apart from the shareable result (:mod:`service.keys`) and returned to the
job's owner only.

Why held-out data must not overlap the job's private data: a held-out record that is also a
private record makes the metrics partly a statistic of the private data, and the memorisation
check meaningless (the "held-out" distance would be to the private record itself). Overlap is
decided on the tenant's keyed record digests (:mod:`service.digests`), before anything is
reserved; the worker checks the decoded records again before its first release.
"""

from __future__ import annotations

import json
from typing import Any, Final

from sqlalchemy.orm import Session

from pe_core.checks import JobRefused
from pe_core.errors import PrivevoError
from pe_core.samples import DataShape
from service import db
from service.keys import evaluation_prefix
from service.storage import ObjectNotFoundError, Storage

MIN_EVALUATION_SAMPLES: Final = 4
"""The fewest records on each side of an evaluation: precision and recall (k = 3 nearest
neighbours, ``pe_core.metrics.evaluate``) need more than k samples in each set."""

METRICS: Final = "metrics.json"
MEMORISATION: Final = "memorisation.json"
REPORT: Final = "report-not-dp.html"


class EvaluationRefused(JobRefused):
    """A job's ``eval_dataset_id`` cannot evaluate it (answered 422 like every refused job,
    before anything is reserved); the message lists every problem and its fix."""


class EvaluationUnavailable(PrivevoError):
    """A job's evaluation does not exist yet: the job has not succeeded (answered 409)."""


def check_eval_dataset(
    session: Session,
    tenant_id: str,
    eval_dataset_id: str,
    private: db.Dataset,
    shape: DataShape,
    num_samples: int,
) -> db.Dataset:
    """The held-out dataset a job may be evaluated on, or :class:`EvaluationRefused`.

    Refused: an id that is not one of the tenant's undeleted datasets (another tenant's is
    answered exactly like an unknown one); a private dataset (private data is never scored in
    the clear); another modality or image size than the job's data; a label outside the job's
    label set (a subset is fine: the scores then cover the labels it has); fewer than
    :data:`MIN_EVALUATION_SAMPLES` held-out records or synthetic samples; any record shared
    with the job's private dataset (module docstring).

    Args:
        session: a session not in a transaction.
        tenant_id: the job's tenant.
        eval_dataset_id: the id the job names.
        private: the job's private dataset.
        shape: the job's data as the engine sees it (its label set, declared or the dataset's).
        num_samples: the job's synthetic samples in all.
    """
    field = "eval_dataset_id"
    try:
        heldout = db.get_dataset(session, tenant_id, eval_dataset_id)
    except db.NotFound:
        raise EvaluationRefused(
            [f"{field}: dataset {eval_dataset_id} not found; name one of your held-out datasets"]
        ) from None
    if heldout.role != "heldout":
        raise EvaluationRefused(
            [
                f"{field}: dataset {heldout.id} is private data, which is never scored in the "
                "clear; upload held-out data (disjoint from the private data) with role=heldout "
                "and name that"
            ]
        )
    problems = []
    if heldout.modality != shape.modality:
        problems.append(
            f"{field}: dataset {heldout.id} holds {heldout.modality} data, the job makes "
            f"{shape.modality} data"
        )
    image_shape = None if heldout.image_shape is None else tuple(heldout.image_shape)
    if heldout.modality == shape.modality and image_shape != shape.image_shape:
        problems.append(
            f"{field}: dataset {heldout.id} holds images of shape {image_shape}, the job's "
            f"data {shape.image_shape}; the scores compare the two, so they must match"
        )
    unknown = sorted(set(heldout.labels) - set(shape.labels))
    if unknown:
        problems.append(
            f"{field}: dataset {heldout.id} has labels {unknown} outside the job's label set "
            f"{list(shape.labels)}; its labels must be among the job's"
        )
    if heldout.record_count < MIN_EVALUATION_SAMPLES:
        problems.append(
            f"{field}: dataset {heldout.id} holds {heldout.record_count} record(s); an "
            f"evaluation needs at least {MIN_EVALUATION_SAMPLES}"
        )
    if num_samples < MIN_EVALUATION_SAMPLES:
        problems.append(
            f"num_samples: an evaluated job needs at least {MIN_EVALUATION_SAMPLES} synthetic "
            "samples"
        )
    shared = db.shared_records(session, tenant_id, private.id, heldout.id)
    if shared:
        problems.append(
            f"{field}: {shared} record(s) of dataset {heldout.id} also appear in the job's "
            f"dataset {private.id}; held-out data must be disjoint from the private data"
        )
    if problems:
        raise EvaluationRefused(problems)
    return heldout


def evaluation_key(session: Session, tenant_id: str, job: db.Job, name: str) -> str:
    """The storage key of one file of a job's evaluation, once it is there to be read.

    Raises:
        NotFound: the job was made without ``eval_dataset_id``, or its evaluation was deleted
            with its private or held-out dataset.
        EvaluationUnavailable: the job has not succeeded (its evaluation is made at the end).
    """
    if job.eval_dataset_id is None:
        raise db.NotFound(
            f"job {job.id} has no evaluation: name a held-out dataset as eval_dataset_id when "
            "creating a job to have one"
        )
    if job.status != "succeeded":
        raise EvaluationUnavailable(
            f"job {job.id} is {job.status}; its evaluation exists once it has succeeded"
        )
    for dataset_id in (job.eval_dataset_id, job.dataset_id):
        dataset = db.get_dataset(session, tenant_id, dataset_id, include_deleted=True)
        if dataset.deleted_at is not None:
            raise db.NotFound(
                f"the evaluation of job {job.id} was deleted with dataset {dataset_id}"
            )
    return f"{evaluation_prefix(job.dataset_id, job.id)}/{name}"


def read_evaluation(
    session: Session, storage: Storage, tenant_id: str, job: db.Job
) -> dict[str, Any]:
    """A succeeded job's NOT DP evaluation as its worker wrote it: the metrics per iteration
    and the memorisation summary (see :func:`evaluation_key` for what it raises)."""
    found = {}
    for name in (METRICS, MEMORISATION):
        try:
            with storage.open_read(evaluation_key(session, tenant_id, job, name)) as handle:
                found[name] = json.loads(handle.read())
        except ObjectNotFoundError:
            raise db.NotFound(f"job {job.id} has no stored evaluation") from None
    memorisation = found[MEMORISATION]
    return {
        "job_id": job.id,
        "eval_dataset_id": job.eval_dataset_id,
        "per_iteration": found[METRICS]["per_iteration"],
        "memorisation": {
            "closer_to_private": memorisation["closer_to_private"],
            "baseline": memorisation["baseline"],
        },
    }


def read_report(session: Session, storage: Storage, tenant_id: str, job: db.Job) -> bytes:
    """A succeeded job's ``report-not-dp.html`` (see :func:`evaluation_key`)."""
    try:
        with storage.open_read(evaluation_key(session, tenant_id, job, REPORT)) as handle:
            return handle.read()
    except ObjectNotFoundError:
        raise db.NotFound(f"job {job.id} has no stored evaluation report") from None
