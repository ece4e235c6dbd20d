"""The one output layout shared by the CLI and the service's result zip.

OUT/synthetic/            the DP synthetic dataset (files + synthetic.parquet)
OUT/privacy_report.json   the guarantee and every ledger event
OUT/report.html           the same for people: one self-contained, shareable page
OUT/samples/iter_XX.png   a sample grid per iteration (iter_XX.md for texts)
OUT/eval/                 NOT DP: metrics against held-out real data, only with eval data,
                          and report-not-dp.html, which shows private records (owner only)
OUT/.state/               PRIVATE: checkpoints, ledger, releases; deleted with the dataset
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from pe_core.datasets import write_synthetic
from pe_core.fileio import atomic_write_bytes, private_directory
from pe_core.html_report import render_eval_report, render_report
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


MEMORISATION_PAIRS = 8
"""The closest (synthetic, private) pairs the NOT DP page shows side by side."""


def _show(samples: Samples, index: int) -> str:
    """One sample as HTML: an inline PNG scaled up to at least 84 px, or escaped text."""
    if samples.texts is not None:
        return f"<pre>{escape(samples.texts[index])}</pre>"
    assert samples.images is not None
    image = Image.fromarray(
        samples.images[index].squeeze(-1)
        if samples.images.shape[-1] == 1
        else samples.images[index]
    )
    scale = max(1, 84 // max(image.size))
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="sample">'


def write_eval_report(
    layout: OutputLayout,
    evaluator: Evaluator,
    population: Samples,
    private: Samples,
    heldout: Samples,
    features: Callable[[Samples], NDArray[np.float32]],
) -> Path:
    """Writes ``eval/report-not-dp.html`` (owner-only, 0600): the evaluation curves and the
    memorisation check of the final population. NOT DP: it reads and shows private records.

    Returns:
        The page's path.
    """
    # Imported here: the NOT DP metrics load scikit-learn and scipy, which a run without
    # held-out data never needs.
    from pe_core.metrics import memorisation

    private_directory(layout.eval)  # the page shows private records: owner-only folder
    check = memorisation(features(population), features(private), features(heldout))
    closest = np.argsort(check.to_private, kind="stable")[:MEMORISATION_PAIRS]
    pairs = [
        (
            _show(population, int(i)),
            _show(private, int(check.closest_private[i])),
            float(check.to_private[i]),
            float(check.to_heldout[i]),
        )
        for i in closest
    ]
    summary = {"closer_to_private": check.closer_to_private, "baseline": check.baseline}
    write_json(layout.eval / "memorisation.json", {"dp": False, "note": EVAL_NOTE, **summary})
    page = render_eval_report(evaluator.rows, layout.eval, pairs=pairs, **summary)
    path = layout.eval / "report-not-dp.html"
    atomic_write_bytes(path, page.encode())  # 0600, as every file atomic_write_bytes makes
    return path
