"""Runs one PE job on this machine: the CLI's engine room (no server, no GPU needed)."""

from __future__ import annotations

import secrets
import shutil
import sys
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from pydantic import ConfigDict, model_validator

from pe_core.apis import create_api
from pe_core.checks import check_job
from pe_core.config import PeJob
from pe_core.datasets import dataset_fingerprint, load_dataset
from pe_core.embedders import CachedEmbedder, create_embedder
from pe_core.errors import DataError, PrivevoError
from pe_core.job import read_run_record, record_run, run_job, run_started
from pe_core.outputs import Evaluator, OutputLayout, write_eval_report
from pe_core.policy import DEFAULT_MAX_DELTA, PrivacyPolicy
from pe_core.runner import IterationReport, RunCallbacks
from pe_core.samples import DataShape, Samples

SOURCE_FIELDS = ("data", "eval_data", "text_column", "label_column", "user_column")
"""The RunSpec fields beyond the job that run.json records (``out`` is where it lies)."""


class RunSpec(PeJob):
    """A local run: the engine's job model plus where the data and outputs live."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Path
    eval_data: Path | None = None
    out: Path = Path("privevo-out")
    text_column: str = "text"
    label_column: str = "label"
    user_column: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _users_make_the_unit(cls, data: Any) -> Any:
        # Naming the users' column asks for user-level privacy; an explicit unit is kept (and
        # refused by the checks when it disagrees with the data).
        if isinstance(data, dict) and data.get("user_column") and "privacy_unit" not in data:
            return {**data, "privacy_unit": "user"}
        return data

    def job(self) -> PeJob:
        return PeJob.model_validate(self.model_dump(include=set(PeJob.model_fields)))

    def source(self) -> dict[str, Any]:
        """Where the data comes from, as run.json records it (absolute paths, so that
        ``--resume`` works from any directory)."""
        paths = {"data": self.data, "eval_data": self.eval_data}
        return {
            **self.model_dump(mode="json", include=set(SOURCE_FIELDS)),
            **{key: str(path.resolve()) for key, path in paths.items() if path is not None},
        }


class ProgressBar:
    """A rich progress bar: iteration t of T, phase, epsilon spent."""

    def __init__(self, total: int, epsilon_target: float) -> None:
        # rich loads only where a terminal shows the bar (a piped run prints lines).
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]PE[/bold] {task.description}"),
            BarColumn(),
            TextColumn("iteration {task.completed}/{task.total}"),
            TextColumn("{task.fields[phase]:<13}"),
            TextColumn("eps {task.fields[eps]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        self.task = self.progress.add_task("", total=total, phase="start", eps="0")
        self.epsilon_target = epsilon_target

    def __enter__(self) -> ProgressBar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_phase(self, iteration: int, phase: str) -> None:
        self.progress.update(self.task, phase=phase)

    def on_iteration(self, report: IterationReport) -> None:
        eps = (
            "none (NOT PRIVATE)"
            if not np.isfinite(report.epsilon_spent)
            else (f"{report.epsilon_spent:.3g}/{self.epsilon_target:.3g}")
        )
        self.progress.update(self.task, completed=report.iteration, eps=eps)


class ProgressLines:
    """One line per iteration on a stream that is not a terminal (a log, a pipe, CI), where a
    redrawn bar shows nothing until the end: iteration t of T, epsilon spent, elapsed, ETA."""

    def __init__(self, total: int, epsilon_target: float, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.epsilon_target = epsilon_target
        self.stream = stream
        self.started = time.monotonic()
        self.first: int | None = None

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def on_phase(self, iteration: int, phase: str) -> None:
        pass

    def on_iteration(self, report: IterationReport) -> None:
        # A resumed run starts after its checkpoint: the ETA counts only what this run did.
        if self.first is None:
            self.first = report.iteration
        elapsed = time.monotonic() - self.started
        done = report.iteration - self.first
        left = self.total - report.iteration
        eta = f"{elapsed / done * left:.0f} s" if done else "unknown"
        eps = (
            "none (NOT PRIVATE)"
            if not np.isfinite(report.epsilon_spent)
            else f"{report.epsilon_spent:.3g}/{self.epsilon_target:.3g}"
        )
        print(
            f"PE iteration {report.iteration}/{self.total}: eps {eps}, "
            f"{elapsed:.0f} s elapsed, eta {eta}",
            file=self.stream,
            flush=True,
        )


def _load(spec: RunSpec, path: Path, labels: list[str] | None, *, private: bool) -> Samples:
    return load_dataset(
        path,
        text_column=spec.text_column,
        label_column=spec.label_column,
        labels=labels,
        user_column=spec.user_column if private else None,
        # Embedding caches are keyed by id: held-out records must not share the private ones'.
        id_prefix="" if private else "heldout/",
    )


def _check_out_dir(layout: OutputLayout, resume: bool) -> None:
    if resume:
        if not layout.state.exists():
            raise PrivevoError(f"--resume: {layout.root} holds no run to resume")
        return
    if layout.root.exists() and any(layout.root.iterdir()):
        raise PrivevoError(
            f"output directory {layout.root} is not empty: pass --resume to continue that run "
            "or choose another --out"
        )


def recorded_settings(out: Path) -> dict[str, Any]:
    """The settings a run in ``out`` was started with (``--resume`` starts from them)."""
    record = read_run_record(OutputLayout(out).state)
    if record is None:
        raise PrivevoError(f"--resume: {out} holds no run to resume")
    return {**record.job.model_dump(mode="json"), **record.source, "out": str(out)}


POLICY_SETTINGS = ("PRIVEVO_MAX_DELTA", "PRIVEVO_REQUIRE_DECLARED_LABELS")
"""The environment variables of the local privacy policy: the service's settings of the same
names (``PRIVEVO_ALLOW_INSECURE_TEST_NOISE`` excepted: on their own machine, users may run seeded
test noise, and its reports say NOT PRIVATE)."""


def local_policy(environ: Mapping[str, str]) -> PrivacyPolicy:
    """The privacy policy of a local run, from this edge's environment.

    Raises:
        PrivevoError: a setting that does not parse; the message says how to fix it.
    """
    max_delta, require = (environ.get(name) for name in POLICY_SETTINGS)
    try:
        return PrivacyPolicy(
            max_delta=DEFAULT_MAX_DELTA if max_delta is None else float(max_delta),
            require_declared_labels=(require or "").strip().lower() in ("1", "true", "yes"),
            allow_insecure_test_noise=True,
        )
    except ValueError:
        raise PrivevoError(
            f"PRIVEVO_MAX_DELTA={max_delta!r}: give a number between 0 and 1, e.g. 1e-5"
        ) from None


@dataclass(frozen=True)
class LocalRun:
    """A finished local run.

    Attributes:
        layout: where its outputs are (``layout.report_html``, ``layout.synthetic``, ...).
        report: its privacy report, as ``privacy_report.json`` holds it.
        evaluation: NOT DP metrics per iteration against ``eval_data``; empty without it.
        seconds: how long the run took.
    """

    layout: OutputLayout
    report: dict[str, Any]
    evaluation: list[dict[str, Any]]
    seconds: float

    def summary(self) -> str:
        """A few lines for the terminal: the guarantee and where everything is."""
        return _summary(self.layout, self.report, self.evaluation, self.seconds)


def run_local(
    spec: RunSpec, *, policy: PrivacyPolicy, resume: bool = False, progress: bool = True
) -> LocalRun:
    """Runs the job described by ``spec`` under ``policy``."""
    layout = OutputLayout(spec.out)
    _check_out_dir(layout, resume)
    private = _load(spec, spec.data, spec.labels, private=True)
    label_source = (
        "declared with --labels" if spec.labels else "the dataset's folder or column values"
    )
    evaluation = None
    if spec.eval_data is not None:
        # The NOT DP metrics load scikit-learn and scipy (~1.5 s, ~100 MB): only for eval data.
        from pe_core.metrics import evaluate, refuse_overlap

        if dataset_fingerprint(spec.eval_data) == dataset_fingerprint(spec.data):
            raise DataError(
                f"--eval-data {spec.eval_data} is the private data itself: "
                "evaluate on held-out data"
            )
        evaluation = _load(spec, spec.eval_data, list(private.label_names), private=False)
        refuse_overlap(private, evaluation)
    job = spec.job()
    # Before any model loads or any state is written: the job against the data's public shape.
    check_job(job, DataShape.of(private), policy=policy)
    api = create_api(job.api, label_names=private.label_names, **job.api_config)
    embedder = create_embedder(job.embedding, **job.embedding_config)
    callbacks: list[RunCallbacks] = []
    evaluator = None
    if evaluation is not None:
        # Its own cache: the held-out records are embedded once, not once per iteration.
        features = CachedEmbedder(embedder).embed
        evaluator = Evaluator(layout, lambda population: evaluate(population, evaluation, features))
        callbacks.append(evaluator)
    fresh = not layout.root.exists()
    started = time.monotonic()
    try:
        # The seed is drawn once and recorded, so a resumed run repeats the same choices.
        job = record_run(layout.state, job, fresh_seed=secrets.randbits(62), source=spec.source())
        bar: ProgressBar | ProgressLines | None = None
        if progress:
            terminal = sys.stderr.isatty()
            bar = (ProgressBar if terminal else ProgressLines)(job.iterations, job.epsilon)
        with bar or nullcontext():
            outcome = run_job(
                job,
                private,
                api=api,
                embedder=embedder,
                state_dir=layout.state,
                layout=layout,
                label_source=label_source,
                policy=policy,
                callbacks=[bar, *callbacks] if bar is not None else callbacks,
                resume=resume,
            )
    except BaseException:
        if fresh and not run_started(layout.state):  # a run that did nothing leaves nothing
            shutil.rmtree(layout.root, ignore_errors=True)
        raise
    if evaluator is not None and evaluation is not None:
        write_eval_report(
            layout, evaluator, outcome.result.population, private, evaluation, features
        )
    rows = [] if evaluator is None else evaluator.rows
    return LocalRun(layout, outcome.report, rows, time.monotonic() - started)


def _summary(
    layout: OutputLayout, report: dict[str, Any], rows: list[dict[str, Any]], seconds: float
) -> str:
    eps = report["epsilon"]
    lines = [
        f"done in {seconds:.0f} s: {report['status']}"
        + (
            f" (epsilon {eps:.4g}, delta {report['delta']:g}, sigma {report['sigma']:.4g})"
            if eps is not None
            else ""
        ),
        *[f"WARNING: {w}" for w in report["warnings"]],
        f"synthetic data:  {layout.synthetic}/",
        f"report:          {layout.report_html}",
        f"privacy report:  {layout.privacy_report}",
        f"sample grids:    {layout.samples}/",
    ]
    if rows:
        first, last = rows[0], rows[-1]
        lines.append(
            f"evaluation (NOT DP): {layout.eval}/  accuracy {first['accuracy']:.3f} at iteration 0"
            f" -> {last['accuracy']:.3f} at iteration {last['iteration']}"
        )
        lines.append(
            f"  owner-only page (shows private records): {layout.eval / 'report-not-dp.html'}"
        )
    return "\n".join(lines)
