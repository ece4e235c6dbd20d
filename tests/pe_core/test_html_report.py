"""report.html: self-contained, DP outputs only, every number equal to privacy_report.json's."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pe_core.apis import create_api
from pe_core.config import PeJob
from pe_core.embedders import create_embedder
from pe_core.html_report import render_report
from pe_core.job import record_run, run_job
from pe_core.outputs import OutputLayout
from pe_core.policy import PrivacyPolicy
from pe_core.samples import Samples

HOSTILE = "<img src=x onerror=alert(1)>"


class Numbers(HTMLParser):
    """Collects every ``<span class="num" data-key=...>`` with its text and the tag after it."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []
        self.tags: list[str] = []
        self._key: str | None = None
        self.external: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            self.scripts += 1
        for name in ("src", "href"):
            link = values.get(name) or ""
            if link and not link.startswith("data:"):
                self.external.append(link)
        if tag == "span" and values.get("class") == "num":
            self._key = values["data-key"]
        elif tag == "span" and (values.get("class") or "").startswith("tag"):
            self.tags.append(values["class"] or "")

    def handle_data(self, data: str) -> None:
        if self._key is not None:
            self.found.append((self._key, data))
            self._key = None


def lookup(report: dict[str, Any], key: str) -> Any:
    value: Any = report
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def shown(value: Any) -> str:
    if value is None:
        return "none"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


@pytest.fixture(scope="module")
def run(tmp_path_factory, private_digits: Samples) -> OutputLayout:
    names = tuple(name if name != "3" else HOSTILE for name in private_digits.label_names)
    private = Samples(
        ids=private_digits.ids,
        labels=private_digits.labels,
        label_names=names,
        images=private_digits.images,
    )
    job = PeJob(
        epsilon=4.0,
        iterations=2,
        num_samples=60,
        nn_backend="numpy-blocked",
        api_config={"texts_per_label": {HOSTILE: ["3"]}},
    )
    layout = OutputLayout(tmp_path_factory.mktemp("run"))
    job = record_run(layout.state, job, fresh_seed=5, source={})
    run_job(
        job,
        private,
        api=create_api(job.api, label_names=names, **job.api_config),
        embedder=create_embedder(job.embedding),
        state_dir=layout.state,
        layout=layout,
        label_source="declared",
        policy=PrivacyPolicy(),
    )
    return layout


def test_every_number_on_the_page_is_the_reports_and_is_tagged(run: OutputLayout) -> None:
    report = json.loads(run.privacy_report.read_text())
    page = Numbers()
    page.feed(run.report_html.read_text())
    assert len(page.found) >= 15
    for key, text in page.found:
        assert text == shown(lookup(report, key)), key
    assert len(page.tags) >= len(page.found)
    keys = {key for key, _ in page.found}
    assert {"epsilon", "delta", "sigma", "releases"} <= keys
    assert any(key.startswith("diagnostics.per_iteration.1.") for key in keys)


def test_the_page_is_self_contained_and_escapes_what_data_names(run: OutputLayout) -> None:
    html = run.report_html.read_text()
    page = Numbers()
    page.feed(html)
    assert page.external == [] and page.scripts == 0
    assert HOSTILE not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 4  # diagnostics + 3 grids
    assert "@media print" in html


def test_warnings_come_from_the_dp_diagnostics(run: OutputLayout, tmp_path: Path) -> None:
    report = json.loads(run.privacy_report.read_text())
    rows = report["diagnostics"]["per_iteration"]
    rows[0].update(distinct_parents_share=0.9, share_above_threshold=0.5)
    rows[-1].update(distinct_parents_share=0.2, share_above_threshold=0.05)
    rows[-1]["uniform_fallback_labels"] = ["7"]
    html = render_report(report, tmp_path)
    assert "the noise swamps the votes" in html
    assert "fell from 0.90 to 0.20: the population is losing diversity" in html
    assert "For label(s) 7 no sample scored above the threshold" in html
