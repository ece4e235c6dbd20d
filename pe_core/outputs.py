"""The one output layout shared by the CLI and the service's result zip.

OUT/synthetic/            the DP synthetic dataset (files + synthetic.parquet)
OUT/privacy_report.json   the guarantee and every ledger event
OUT/report.html           the same for people: one self-contained, shareable page
OUT/samples/iter_XX.png   a sample grid per iteration (iter_XX.md for texts)
OUT/eval/                 NOT DP: metrics against held-out real data, only with eval data
OUT/.state/               PRIVATE: checkpoints, ledger, releases; deleted with the dataset
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pe_core.datasets import write_synthetic
from pe_core.fileio import atomic_write_bytes
from pe_core.html_report import render_report
from pe_core.runner import IterationReport, RunCallbacks
from pe_core.samples import Samples
from pe_core.visualize import save_image_grid, save_series_plot, save_text_sample

EVAL_NOTE = (
    "NOT DP: evaluation against held-out real data, for the data owner only; "
    "never publish it with the synthetic data"
)


@dataclass(frozen=True)
class OutputLayout:
    root: Path

    @property
    def synthetic(self) -> Path:
        return self.root / "synthetic"

    @property
    def privacy_report(self) -> Path:
        return self.root / "privacy_report.json"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def state(self) -> Path:
        return self.root / ".state"


def write_json(path: Path, record: Mapping[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(record, indent=2, allow_nan=False) + "\n").encode())


class CallbackList:
    """Calls several run callbacks in order."""

    def __init__(self, callbacks: Sequence[RunCallbacks]) -> None:
        self.callbacks = list(callbacks)

    def on_phase(self, iteration: int, phase: str) -> None:
        for callback in self.callbacks:
            callback.on_phase(iteration, phase)

    def on_iteration(self, report: IterationReport) -> None:
        for callback in self.callbacks:
            callback.on_iteration(report)


class SampleWriter:
    """Writes ``samples/iter_XX.png`` (or ``.md``) and the DP diagnostics plot per iteration."""

    def __init__(self, layout: OutputLayout) -> None:
        self.layout = layout
        self.diagnostics: list[Mapping[str, Any]] = []

    def on_phase(self, iteration: int, phase: str) -> None:
        pass

    def on_iteration(self, report: IterationReport) -> None:
        stem = self.layout.samples / f"iter_{report.iteration:02d}"
        title = f"iteration {report.iteration}"
        if report.population.modality == "image":
            save_image_grid(report.population, stem.with_suffix(".png"), title=title)
        else:
            save_text_sample(report.population, stem.with_suffix(".md"))
        if report.diagnostics:
            self.diagnostics.append(report.diagnostics)
            save_series_plot(
                {
                    "share above threshold": [d["share_above_threshold"] for d in self.diagnostics],
                    "distinct parents share": [
                        d["distinct_parents_share"] for d in self.diagnostics
                    ],
                },
                self.layout.samples / "dp_diagnostics.png",
                title="DP diagnostics (from noisy counts)",
                ylabel="share",
                first_x=1,
            )


class Evaluator:
    """NOT DP: scores each iteration's population against held-out real data into ``eval/``."""

    def __init__(
        self, layout: OutputLayout, evaluate: Callable[[Samples], Mapping[str, float]]
    ) -> None:
        self.layout = layout
        self.evaluate = evaluate
        path = layout.eval / "metrics.json"
        previous = json.loads(path.read_text()) if path.exists() else {}
        self.rows: list[dict[str, Any]] = previous.get("per_iteration", [])

    def on_phase(self, iteration: int, phase: str) -> None:
        pass

    def on_iteration(self, report: IterationReport) -> None:
        scores = dict(self.evaluate(report.population))
        self.rows = [r for r in self.rows if r["iteration"] < report.iteration]
        self.rows.append({"iteration": report.iteration, **scores})
        write_json(
            self.layout.eval / "metrics.json",
            {"dp": False, "note": EVAL_NOTE, "per_iteration": self.rows},
        )
        for metric in scores:
            save_series_plot(
                {metric: [row[metric] for row in self.rows]},
                self.layout.eval / f"{metric}.png",
                title=f"{metric} per iteration (NOT DP evaluation)",
                ylabel=metric,
            )

    @property
    def latest(self) -> dict[str, Any]:
        return self.rows[-1] if self.rows else {}


def write_result(layout: OutputLayout, population: Samples, report: Mapping[str, Any]) -> None:
    """Writes ``synthetic/``, ``privacy_report.json`` and ``report.html``, replacing an earlier
    result."""
    if layout.synthetic.exists():
        shutil.rmtree(layout.synthetic)
    write_synthetic(population, layout.synthetic)
    write_json(layout.privacy_report, report)
    atomic_write_bytes(layout.report_html, render_report(report, layout.samples).encode())
