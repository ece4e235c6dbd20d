"""Runs one PE job on this machine: the CLI's engine room (no server, no GPU needed)."""

from __future__ import annotations

import json
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ConfigDict
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from pe_core.apis import create_api
from pe_core.config import PeJob
from pe_core.datasets import dataset_fingerprint, load_dataset
from pe_core.embedders import CachedEmbedder, create_embedder
from pe_core.errors import DataError, PrivevoError
from pe_core.metrics import evaluate, refuse_overlap
from pe_core.outputs import (
    CallbackList,
    Evaluator,
    OutputLayout,
    SampleWriter,
    write_json,
    write_result,
)
from pe_core.report import privacy_report
from pe_core.runner import (
    IterationReport,
    PrivateEvolution,
    RunCallbacks,
    check_label_fractions,
    check_modalities,
    noise_factory,
)
from pe_core.samples import Samples
from privevo.openai_backend import register_openai_backend

RUN_RECORD = "run.json"

register_openai_backend()  # the llm API's `openai` backend: needs the network, so edge-only


class RunSpec(PeJob):
    """A local run: the engine's job model plus where the data and outputs live."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Path
    eval_data: Path | None = None
    out: Path = Path("privevo-out")
    text_column: str = "text"
    label_column: str = "label"

    def job(self) -> PeJob:
        return PeJob.model_validate(self.model_dump(include=set(PeJob.model_fields)))


class ProgressBar:
    """A rich progress bar: iteration t of T, phase, epsilon spent."""

    def __init__(self, total: int, epsilon_target: float) -> None:
        self.progress = Progress(
            TextColumn("[bold]PE[/bold] {task.description}"),
            BarColumn(),
            TextColumn("iteration {task.completed}/{task.total}"),
            TextColumn("{task.fields[phase]:<13}"),
            TextColumn("eps {task.fields[eps]}"),
            TimeElapsedColumn(),
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


def _load(spec: RunSpec, path: Path, labels: list[str] | None) -> Samples:
    return load_dataset(
        path,
        text_column=spec.text_column,
        label_column=spec.label_column,
        labels=labels,
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
    path = OutputLayout(out).state / RUN_RECORD
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise PrivevoError(f"--resume: {out} holds no run to resume") from None
    except (OSError, ValueError) as exc:
        raise PrivevoError(f"--resume: cannot read {path}: {exc}") from None


def run_local(spec: RunSpec, *, resume: bool = False, progress: bool = True) -> str:
    """Runs the job described by ``spec`` and returns a short summary for the terminal."""
    job = spec.job()
    layout = OutputLayout(spec.out)
    _check_out_dir(layout, resume)
    private = _load(spec, spec.data, spec.labels)
    label_source = (
        "declared with --labels" if spec.labels else "the dataset's folder or column values"
    )
    evaluation = None
    if spec.eval_data is not None:
        if dataset_fingerprint(spec.eval_data) == dataset_fingerprint(spec.data):
            raise DataError(
                f"--eval-data {spec.eval_data} is the private data itself: "
                "evaluate on held-out data"
            )
        evaluation = _load(spec, spec.eval_data, list(private.label_names))
        refuse_overlap(private, evaluation)
    # The seed is drawn once and recorded, so a resumed run repeats the same choices.
    seed = spec.seed if spec.seed is not None else secrets.randbits(62)
    spec = spec.model_copy(update={"seed": seed})
    job = spec.job()
    check_label_fractions(job, private.label_names)
    api = create_api(job.api, label_names=private.label_names, **job.api_config)
    embedder = create_embedder(job.embedding, **job.embedding_config)
    check_modalities(api, embedder, private)
    noise, sampler = noise_factory(job, seed)
    fresh = not layout.root.exists()
    try:
        engine = PrivateEvolution(
            job, api=api, embedder=embedder, noise=noise, state_dir=layout.state, seed=seed
        )
        if not resume:
            write_json(layout.state / RUN_RECORD, spec.model_dump(mode="json"))
    except BaseException:
        if fresh:  # a setup error leaves nothing behind
            shutil.rmtree(layout.root, ignore_errors=True)
        raise
    callbacks: list[RunCallbacks] = [SampleWriter(layout)]
    evaluator = None
    if evaluation is not None:
        # Its own cache: the held-out records are embedded once, not once per iteration.
        features = CachedEmbedder(embedder).embed
        evaluator = Evaluator(layout, lambda population: evaluate(population, evaluation, features))
        callbacks.append(evaluator)
    started = time.monotonic()
    if progress:
        with ProgressBar(job.iterations, job.epsilon) as bar:
            result = engine.run(private, callbacks=CallbackList([bar, *callbacks]), resume=resume)
    else:
        result = engine.run(private, callbacks=CallbackList(callbacks), resume=resume)
    report = privacy_report(
        job,
        result,
        sampler=sampler,
        label_source=label_source,
        generator_public_data=api.public_data,
    )
    report["run"] = {"seed": seed, "nn_backend": result.nn_backend}
    write_result(layout, result.population, report)
    return _summary(layout, report, evaluator, time.monotonic() - started)


def _summary(
    layout: OutputLayout, report: dict[str, Any], evaluator: Evaluator | None, seconds: float
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
        f"privacy report:  {layout.privacy_report}",
        f"sample grids:    {layout.samples}/",
    ]
    if evaluator is not None and evaluator.rows:
        first, last = evaluator.rows[0], evaluator.rows[-1]
        lines.append(
            f"evaluation (NOT DP): {layout.eval}/  accuracy {first['accuracy']:.3f} at iteration 0"
            f" -> {last['accuracy']:.3f} at iteration {last['iteration']}"
        )
    return "\n".join(lines)
