"""One PE job from its parts to its result: the single assembly path of the CLI and the workers.

An edge loads the private records, builds (or reuses) the generator and the embedder, and keeps
its own storage, callbacks and retries. Everything between is here, so that the CLI and a worker
run a job the same way and write the same files:

1. :func:`record_run` fixes the job's seed and writes ``run.json`` in the state folder (once: a
   resumed run or a redelivered task reads the seed back and repeats the same choices);
2. :func:`run_job` checks the parts against each other, builds the noise and the engine, runs
   (or resumes) it, writes the sample grids, the privacy report and the synthetic data.

``run.json`` holds the job as run (its seed included) and the edge's description of where the
data came from (``source``: file paths for the CLI, the dataset id for a worker). It names no
private record and no statistic of one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pe_core.apis.base import VariationApi
from pe_core.checkpoint import CheckpointError
from pe_core.checks import DataShape, check_job
from pe_core.config import PeJob
from pe_core.embedders.base import Embedder
from pe_core.fileio import private_directory
from pe_core.generation import Generation
from pe_core.outputs import CallbackList, OutputLayout, SampleWriter, write_json, write_result
from pe_core.policy import PrivacyPolicy
from pe_core.privacy import DuplicateReleaseError, Ledger
from pe_core.report import privacy_report
from pe_core.runner import (
    CHECKPOINTS,
    LEDGER,
    PrivateEvolution,
    RunCallbacks,
    RunResult,
    check_modalities,
    noise_factory,
)
from pe_core.samples import Samples
from pe_core.votes import VoteCounterFactory

RUN_RECORD = "run.json"
RUN_FORMAT = 1

MAX_RESUMES = 3
"""Runs of one call when a release is lost to a concurrent run of the same job (two deliveries
of a task): each further run resumes and uses the recorded release. More would mean the two
keep racing."""


@dataclass(frozen=True)
class RunRecord:
    """What ``run.json`` holds.

    Attributes:
        job: the job as run, with its seed.
        source: where the edge took the private data from (paths or a dataset id), as JSON.
    """

    job: PeJob
    source: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RUN_FORMAT,
            "job": self.job.model_dump(mode="json"),
            "source": dict(self.source),
        }


def read_run_record(state_dir: Path) -> RunRecord | None:
    """The run record in ``state_dir``, or None where no run has started there.

    Raises:
        CheckpointError: the record is unreadable or of an unknown format.
    """
    path = state_dir / RUN_RECORD
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the run record {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
        raise CheckpointError(
            f"the run record {path} is not of format {RUN_FORMAT}; it was written by another "
            "version: start the run again in a new output"
        )
    try:
        return RunRecord(PeJob.model_validate(data["job"]), dict(data.get("source", {})))
    except (KeyError, TypeError, ValidationError) as exc:
        raise CheckpointError(f"the run record {path} is damaged: {exc}") from None


def record_run(state_dir: Path, job: PeJob, *, fresh_seed: int, source: Mapping[str, Any]) -> PeJob:
    """The job with its seed, recorded in ``state_dir/run.json`` when the run first starts.

    Args:
        state_dir: the run's private state folder.
        job: the job; its seed, if set, is the one a first start uses.
        fresh_seed: the seed of a first start without one, drawn by the edge from OS entropy
            (generation and selection use it, never the noise).
        source: where the data came from, recorded beside the job (JSON values).

    Returns:
        The job with the recorded seed: a later start reads it back, whatever ``job.seed`` and
        ``fresh_seed`` are then, so a resumed run repeats the same choices.
    """
    recorded = read_run_record(state_dir)
    if recorded is not None:
        return job.model_copy(update={"seed": recorded.job.seed})
    seeded = job.model_copy(update={"seed": fresh_seed if job.seed is None else job.seed})
    write_json(private_directory(state_dir) / RUN_RECORD, RunRecord(seeded, source).to_json())
    return seeded


def run_started(state_dir: Path) -> bool:
    """Whether a run in ``state_dir`` has made a checkpoint or a release: from then on its state
    must be kept (to resume it, and because its releases are spent); before, it can go."""
    return (state_dir / LEDGER).exists() or any((state_dir / CHECKPOINTS).glob("*"))


@dataclass(frozen=True)
class JobOutcome:
    """A finished run: the engine's result and the privacy report written beside the data."""

    result: RunResult
    report: dict[str, Any]


def run_job(
    job: PeJob,
    private: Samples,
    *,
    api: VariationApi,
    embedder: Embedder,
    state_dir: Path,
    layout: OutputLayout,
    label_source: str,
    policy: PrivacyPolicy,
    callbacks: Sequence[RunCallbacks] = (),
    ledger: Callable[[], Ledger] | None = None,
    resume: bool = True,
    run_info: Mapping[str, Any] | None = None,
    pinned: Samples | None = None,
    votes: VoteCounterFactory | None = None,
    generation: Generation | None = None,
) -> JobOutcome:
    """Runs (or resumes) a recorded job and writes its DP result into ``layout``.

    Args:
        job: the job with its recorded seed (:func:`record_run`).
        private: the private records, labelled with the job's public label set.
        api: the generator (built for ``private.label_names``).
        embedder: the embedder the votes use.
        state_dir: the run's private state (checkpoints, releases; the ledger by default).
        layout: where the sample grids, the report and the synthetic data go.
        label_source: where the public label set came from, for the report.
        policy: the edge's privacy policy: checked again here (a worker meets jobs queued
            under an older one), and the report says DP only within it.
        callbacks: the edge's progress callbacks, called after each iteration's sample grid is
            written, so that a callback stopping the run (a time limit, a cancel) loses none:
            a resumed run starts after its last checkpoint.
        ledger: builds the release ledger for each run of this call (a worker's database
            ledger); None: the JSON-lines ledger in ``state_dir``.
        resume: continue from the latest checkpoint where there is one.
        run_info: extra keys for the report's ``run`` section (a worker adds the job id).
        pinned: an audit's pinned candidates (``pe_core.audit.prepare_audit``); such a run
            cannot resume, so it is never retried here.
        votes: builds the counter of the clean votes (``pe_core.votes``); None: in this
            process.
        generation: how ``api`` makes samples (``pe_core.generation``); None: directly, in
            this process. A chunked one changes the samples (they depend on its chunk size):
            the edge records it in ``run_info``.

    Raises:
        JobRefused: the job does not fit its data (see ``pe_core.checks.check_job``).
        PrivevoError: the parts do not fit each other, or the run failed.
        ValueError: the job has no seed.
    """
    if job.seed is None:
        raise ValueError("the job has no seed: call record_run first")
    check_job(job, DataShape.of(private), policy=policy)
    check_modalities(api, embedder, private)
    noise, sampler = noise_factory(job, job.seed)
    everything = CallbackList([SampleWriter(layout), *callbacks])
    for attempt in range(1, MAX_RESUMES + 1):
        engine = PrivateEvolution(
            job,
            api=api,
            embedder=embedder,
            noise=noise,
            state_dir=state_dir,
            seed=job.seed,
            ledger=None if ledger is None else ledger(),
            pinned=pinned,
            votes=votes,
            generation=generation,
        )
        try:
            result = engine.run(private, callbacks=everything, resume=resume or attempt > 1)
            break
        except DuplicateReleaseError:
            if attempt == MAX_RESUMES or pinned is not None:
                raise
    report = privacy_report(
        job,
        result,
        sampler=sampler,
        label_source=label_source,
        generator_public_data=api.public_data,
        policy=policy,
    )
    report["run"] = {"seed": job.seed, "nn_backend": result.nn_backend, **(run_info or {})}
    write_result(layout, result.population, report)
    return JobOutcome(result, report)
