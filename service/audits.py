"""Audit jobs: what the gateway refuses before it reserves anything, and the owner's view of the
report a worker wrote.

A job with the ``audit`` option runs as ``privevo audit`` does (:mod:`pe_core.audit`): canaries
join the dataset's records, each with probability 1/2, pinned in every vote, and the worker adds
``audit.json`` (a lower bound on the epsilon the run leaked) to the job's result. The report is
post-processing of the run's DP releases and public coins, so it is part of the shareable
result. An audit is a run on its dataset: it reserves and is charged like any job, so the
installation is best audited on a public stand-in uploaded as a dataset of its own.
"""

from __future__ import annotations

import json
from typing import Any

from pe_core.audit import AuditPlan, audit_refusals
from pe_core.checks import JobRefused
from pe_core.errors import PrivevoError
from service import db
from service.keys import AUDIT_REPORT, result_prefix
from service.schemas import JobCreate
from service.storage import ObjectNotFoundError, Storage


class AuditUnavailable(PrivevoError):
    """An audit job's report does not exist yet: the job has not succeeded (answered 409)."""


def check_audit(body: JobCreate) -> None:
    """Refuses (:class:`JobRefused`, 422) a job whose ``audit`` option cannot run: an API the
    audit has no canaries for, user-level data, more guesses than canaries. Reads the job
    alone, before anything is reserved."""
    if body.audit is None:
        return
    plan = AuditPlan(
        canaries=body.audit.canaries,
        guesses=body.audit.guesses,
        seed=0 if body.audit.seed is None else body.audit.seed,
    )
    problems = audit_refusals(body, plan)
    if problems:
        raise JobRefused([f"audit: {problem}" for problem in problems])


def read_audit(storage: Storage, job: db.Job) -> dict[str, Any]:
    """A succeeded audit job's ``audit.json``.

    Raises:
        NotFound: the job is not an audit.
        AuditUnavailable: it has not succeeded (its report is made at the end).
    """
    if job.spec.get("audit") is None:
        raise db.NotFound(
            f"job {job.id} is not an audit: create a job with the audit option to have one"
        )
    if job.status != "succeeded":
        raise AuditUnavailable(
            f"job {job.id} is {job.status}; its audit report exists once it has succeeded"
        )
    try:
        with storage.open_read(f"{result_prefix(job.id)}/{AUDIT_REPORT}") as handle:
            report: dict[str, Any] = json.loads(handle.read())
    except ObjectNotFoundError:
        raise db.NotFound(f"job {job.id} has no stored audit report") from None
    return report
