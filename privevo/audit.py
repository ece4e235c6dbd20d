"""`privevo audit` on this machine: load the data, check the job, run ``pe_core.audit``, write
the report.

The audit is a run: its state folder (OUT/.state) keeps the run's ledger and releases, which on
private data are spent budget, and is kept like a run's.
"""

from __future__ import annotations

import secrets
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from pe_core.apis import create_api
from pe_core.audit import AuditPlan, canary_design, run_audit, weakened_noise
from pe_core.checks import check_job
from pe_core.datasets import load_dataset
from pe_core.embedders import create_embedder
from pe_core.errors import PrivevoError
from pe_core.job import run_started
from pe_core.outputs import OutputLayout, write_json
from pe_core.policy import PrivacyPolicy
from pe_core.runner import check_modalities
from pe_core.samples import DataShape
from privevo.local import ProgressBar, RunSpec

STAND_IN = Path("data/mnist/test.npz")
"""The default data: the MNIST test split, public, exported by ``make data``."""
AUDIT_REPORT = "audit.json"


def audit_local(
    spec: RunSpec,
    plan: AuditPlan,
    *,
    policy: PrivacyPolicy,
    sigma_divisor: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Audits the job of ``spec`` on its data under ``policy`` and returns the report.

    Args:
        spec: the job, its data and its output folder (which must be new or empty).
        plan: the audit's plan (m, r, mode, canary seed, confidence).
        policy: the local privacy policy; the job is refused outside it before anything is
            written.
        sigma_divisor: NOT PRIVATE: the injected bug (noise drawn at sigma / divisor while the
            ledger records sigma), for showing the audit's power; None in every real audit.
        progress: show a progress bar.

    Raises:
        PrivevoError: bad data, plan or job (JobRefused for the job), or the run failed.
    """
    layout = OutputLayout(spec.out)
    if layout.root.exists() and any(layout.root.iterdir()):
        raise PrivevoError(f"output directory {layout.root} is not empty: choose another --out")
    problems = plan.problems()
    if problems:
        raise PrivevoError("; ".join(problems))
    if spec.data == STAND_IN and not spec.data.exists():
        raise PrivevoError(
            f"the MNIST stand-in {STAND_IN} is missing: run `make data` here, or pass --data"
        )
    real = load_dataset(
        spec.data, text_column=spec.text_column, label_column=spec.label_column, labels=spec.labels
    )
    job = spec.job()
    job = job.model_copy(update={"seed": secrets.randbits(62) if job.seed is None else job.seed})
    check_job(job, DataShape.of(real), policy=policy)
    canary_design(job.api)  # an API without canaries is refused before any model loads
    if sigma_divisor is not None and job.no_privacy:
        raise PrivevoError("the injected bug weakens the noise: it needs a run with noise")
    api = create_api(job.api, label_names=real.label_names, **job.api_config)
    embedder = create_embedder(job.embedding, **job.embedding_config)
    check_modalities(api, embedder, real)
    fresh = not layout.root.exists()
    started = time.monotonic()
    try:
        bar = ProgressBar(job.iterations, job.epsilon) if progress else None
        with bar or nullcontext():
            result = run_audit(
                job,
                real,
                api=api,
                embedder=embedder,
                plan=plan,
                state_dir=layout.state,
                noise=None
                if sigma_divisor is None
                else (lambda factory: weakened_noise(factory, sigma_divisor)),
                callbacks=bar,
            )
    except BaseException:
        if fresh and not run_started(layout.state):  # an audit that did nothing leaves nothing
            shutil.rmtree(layout.root, ignore_errors=True)
        raise
    report = {
        **result.report(job),
        "data": str(spec.data),
        "seed": job.seed,
        "wall_s": round(time.monotonic() - started, 1),
    }
    if sigma_divisor is not None:
        report["injected_bug"] = (
            f"NOT PRIVATE: the noise was drawn with sigma / {sigma_divisor:g} while the ledger "
            "records sigma, a deliberate bug that shows the audit's power"
        )
    write_json(layout.root / AUDIT_REPORT, report)
    return report


def summary(report: dict[str, Any]) -> str:
    """One line for the terminal: the bound next to the claim."""
    claimed = report["claimed_epsilon"]
    return (
        f"audit: epsilon >= {report['epsilon_lower_bound']:.3g} with "
        f"{report['confidence']:.0%} confidence (m {report['m']}, r {report['r']}, "
        f"{report['mode']}); claimed "
        + ("none (no privacy)" if claimed is None else f"{claimed:.4g}")
        + f": {report['verdict']}"
    )
