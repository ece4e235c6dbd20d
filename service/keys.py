"""Where the service keeps each kind of object, as storage keys: shared by the gateway, which
reads results and evaluations, and the workers, which write them.

* ``datasets/<dataset>/jobs/<job>/``: a job's PRIVATE working files (``state/``) and its
  output layout while it is made (``out/``), under the dataset's prefix so that deleting the
  dataset deletes them.
* ``datasets/<dataset>/jobs/<job>/out/eval/``: the job's NOT DP evaluation against held-out
  data (``metrics.json``, ``memorisation.json``, ``report-not-dp.html``), served to the owner
  only. Its page shows private records, so it stays under the private dataset's prefix and
  goes with it; it is never part of the result.
* ``results/<job>/``: the published, shareable result (DP outputs only), with an audit job's
  ``audit.json``.
"""

from __future__ import annotations

from typing import Final

JOB_OUTPUT: Final = "out"
"""The folder of a job's prefix holding its output layout (``pe_core.outputs.OutputLayout``)."""

EVALUATION: Final = "eval"
"""The folder of the output layout holding the NOT DP evaluation (``OutputLayout.eval``)."""

AUDIT_REPORT: Final = "audit.json"
"""An audit job's report, in its output layout and its result (post-processing of DP releases:
``pe_core.audit``)."""


def job_prefix(dataset_id: str, job_id: str) -> str:
    """The storage prefix of a job's private working files (under its dataset's prefix)."""
    return f"datasets/{dataset_id}/jobs/{job_id}"


def evaluation_prefix(dataset_id: str, job_id: str) -> str:
    """The storage prefix of a job's NOT DP evaluation (owner only, never in the result)."""
    return f"{job_prefix(dataset_id, job_id)}/{JOB_OUTPUT}/{EVALUATION}"


def result_prefix(job_id: str) -> str:
    """The storage prefix of a job's published result."""
    return f"results/{job_id}"
