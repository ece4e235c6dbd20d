"""The privacy report that travels with every synthetic dataset."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pe_core.config import PeJob
from pe_core.policy import PrivacyPolicy
from pe_core.privacy import NoiseSampler, epsilon_for
from pe_core.runner import RunResult

REPORT_VERSION = 1

NOT_PRIVATE = "NOT PRIVATE"


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _unit(job: PeJob) -> dict[str, Any]:
    """What the guarantee protects, and the sensitivity the accountant charges for it."""
    if job.privacy_unit == "user":
        c, c_labels = job.votes_per_user, job.labels_per_user
        return {
            "neighbouring_relation": "add/remove one user with all of their records",
            "unit_of_privacy": "one user: all records that name the same user",
            "votes_per_user": c,
            "labels_per_user": c_labels,
            "sensitivity": (
                f"each user votes once for each of at most c = {c} distinct synthetic samples "
                f"per iteration, over all of their records and labels: {c} releases of "
                "sensitivity 1 per iteration"
                + (
                    f"; DP label counts count each user in at most {c_labels} label(s)"
                    if job.label_fractions == "dp"
                    else ""
                )
            ),
        }
    return {
        "neighbouring_relation": "add/remove one record",
        "unit_of_privacy": "one record of the private dataset (one file or one row)",
        "sensitivity": (
            "each record adds one vote to each of at most k distinct synthetic samples of its "
            "own label per iteration: k releases of sensitivity 1 per iteration"
        ),
    }


def privacy_report(
    job: PeJob,
    result: RunResult,
    *,
    sampler: NoiseSampler | None,
    label_source: str,
    generator_public_data: str,
    policy: PrivacyPolicy,
) -> dict[str, Any]:
    """Builds ``privacy_report.json``: the guarantee, every ledger event, and what is not covered.

    Args:
        job: the job that ran.
        result: its outcome.
        sampler: the noise sampler used (None without noise).
        label_source: where the public label set came from ("declared" or a description).
        generator_public_data: the public data the generator saw (its own training data is not
            protected by this run's guarantee): the API's ``public_data``.
        policy: the operator's policy; the status is "DP" only within it (a delta of 0.5 is
            an (epsilon, delta) pair, but no privacy).
    """
    warnings: list[str] = []
    events = [entry.event for entry in result.ledger]
    if job.no_privacy:
        achieved = math.inf
        warnings.append(f"{NOT_PRIVATE}: run with --no-privacy, the counts carry no noise.")
    else:
        achieved = epsilon_for(events, job.delta)
    if sampler is not None and not sampler.secure:
        warnings.append(
            f"{NOT_PRIVATE}: noise came from the seeded test sampler {sampler.name!r} "
            "(--insecure-test-noise); anyone with the seed can remove it."
        )
    if not job.no_privacy and not policy.within(job):
        warnings.append(
            f"{NOT_PRIVATE}: delta {job.delta:g} is above the policy's maximum of "
            f"{policy.max_delta:g}; a delta that large lets the guarantee fail outright for "
            "that share of the records."
        )
    private = not warnings
    return {
        "version": REPORT_VERSION,
        "private": private,
        "status": "DP" if private else NOT_PRIVATE,
        "warnings": warnings,
        "epsilon": _finite_or_none(achieved),
        "epsilon_target": _finite_or_none(job.epsilon),
        "delta": job.delta,
        "sigma": result.sigma,
        "iterations": job.iterations,
        "k": job.k,
        "releases": sum(e.count for e in events),
        "mechanism": "none" if job.no_privacy else "discrete_gaussian",
        "sampler": None if sampler is None else {"name": sampler.name, "secure": sampler.secure},
        "accountant": None if result.calibration is None else result.calibration.accountant,
        "policy": {
            "max_delta": policy.max_delta,
            "require_declared_labels": policy.require_declared_labels,
        },
        **_unit(job),
        "threshold": result.threshold,
        "labels": {
            "names": list(result.population.label_names),
            "treated_as_public": True,
            "source": label_source,
            "fractions": result.label_fraction_source,
            "samples_per_label": result.label_targets,
        },
        "events": [
            {
                "key": entry.key,
                "iteration": entry.iteration,
                **dataclasses.asdict(entry.event),
                "release_sha256": entry.release_sha256,
            }
            for entry in result.ledger
        ],
        "diagnostics": {
            "dp": True,
            "note": "computed from noisy counts only",
            "per_iteration": result.diagnostics,
        },
        "not_protected": [
            "the schema and the label set, which are treated as public",
            f"the generator's own training data ({generator_public_data})",
            "anything derived from evaluation data (eval/ is not DP and is not part of the result)",
        ],
        "job": job.model_dump(mode="json"),
    }
