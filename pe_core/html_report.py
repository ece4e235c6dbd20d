"""``report.html``: the privacy report as one self-contained page a person can read and share.

Everything on the page comes from ``privacy_report.json`` and the sample grids, both DP
outputs, so the page is as shareable as the synthetic data. Every number is written from the
report's own value (``data-key`` names where it came from; the tests compare them) and carries a
tag saying whether it is DP. Nothing is fetched: styles are inline and images are data URIs, and
a print stylesheet makes the browser's "print to PDF" a clean document.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

DIVERSITY_DROP = 0.5
"""A warning when the share of distinct selected parents falls below this fraction of its first
value: the population is concentrating on few parents."""
SWAMPED_SHARE = 0.1
"""A warning when fewer than this share of the samples score above the threshold at the last
iteration: the noise is swamping the votes."""

_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; color: #1b1f24; max-width: 60rem; margin: 2rem auto;
  padding: 0 1rem; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem;
  margin-top: 2rem; }
.status { display: inline-block; padding: .2rem .7rem; border-radius: 1rem; font-weight: 600; }
.status.dp { background: #dafbe1; color: #116329; }
.status.notdp { background: #ffebe9; color: #a40e26; }
.tag { font-size: .7rem; font-weight: 600; padding: 0 .35rem; border-radius: .5rem;
  margin-left: .25rem; vertical-align: middle; }
.tag.dp { background: #dafbe1; color: #116329; }
.tag.public { background: #ddf4ff; color: #0a3069; }
.tag.notdp { background: #ffebe9; color: #a40e26; }
table { border-collapse: collapse; margin: .5rem 0; }
td, th { border: 1px solid #d0d7de; padding: .25rem .6rem; text-align: left;
  vertical-align: top; }
th { background: #f6f8fa; }
.warning { background: #fff8c5; border-left: 4px solid #d4a72c; padding: .5rem .8rem;
  margin: .5rem 0; }
.how { color: #57606a; font-size: .9rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; image-rendering: pixelated;
  border: 1px solid #d0d7de; }
pre { white-space: pre-wrap; background: #f6f8fa; padding: .6rem; font-size: .85rem; }
@media print {
  body { max-width: none; margin: 0; font-size: 11pt; }
  h2 { page-break-after: avoid; } figure, table { page-break-inside: avoid; }
  .tag, .status { border: 1px solid currentColor; }
}
"""


def _number(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return escape(str(value))
    if isinstance(value, float) and not math.isfinite(value):
        return "none"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _tag(kind: str) -> str:
    text = {"dp": "DP", "public": "PUBLIC", "notdp": "NOT DP"}[kind]
    return f'<span class="tag {kind}">{text}</span>'


def _value(key: str, value: Any, kind: str = "dp") -> str:
    """A number from the report, with where it came from and whether it is DP."""
    return f'<span class="num" data-key="{escape(key)}">{_number(value)}</span>{_tag(kind)}'


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def _statement(report: Mapping[str, Any]) -> str:
    job = report["job"]
    if not report["private"]:
        reasons = "".join(f"<li>{escape(w)}</li>" for w in report["warnings"])
        return (
            "<p><strong>This run is NOT differentially private.</strong> Its synthetic data "
            f"may reveal the private records it was made from:</p><ul>{reasons}</ul>"
        )
    unit = escape(report["unit_of_privacy"])
    fractions = report["labels"]["fractions"]
    public = [
        "the schema of the data (its format, image size or text fields)",
        "the label set, " + escape(report["labels"]["source"]),
        "the share of samples per label"
        if fractions != "dp"
        else "nothing of the label shares: they were estimated with noise, and charged",
        escape(report["not_protected"][1]),
    ]
    epsilon = _value("epsilon", report["epsilon"], "public")
    target = _value("epsilon_target", report["epsilon_target"], "public")
    delta = _value("delta", report["delta"], "public")
    releases = _value("releases", report["releases"], "public")
    sigma = _value("sigma", report["sigma"], "public")
    max_delta = _value("policy.max_delta", report["policy"]["max_delta"], "public")
    labels = "required" if report["policy"]["require_declared_labels"] else "not required"
    return f"""
<p><strong>What is protected.</strong> The unit of privacy is {unit}. Whatever anyone learns
from these results, they could have learnt almost as well had any one such unit been left out
of the private data: the results change the odds of any conclusion about it by a factor of at
most e<sup>&epsilon;</sup>, except with probability at most &delta;.</p>
<p><strong>How much.</strong> &epsilon; = {epsilon} (the target was {target}) and &delta; =
{delta}. Smaller is more private: &epsilon; 1 is strong protection, 10 is weak; &delta; should
be far below one over the number of records.</p>
<p><strong>How.</strong> Private data was used only to count, {releases} times in all, which
synthetic samples the private records are closest to; each count was released with exact
discrete Gaussian noise (&sigma; = {sigma}) from the operating system's entropy, and composed
with {escape(str(report["accountant"]))}. Everything else is post-processing of those noisy
counts.</p>
<p><strong>Treated as public, so not protected:</strong></p>
<ul>{"".join(f"<li>{item}</li>" for item in public)}</ul>
<p><strong>Policy.</strong> This installation allows &delta; up to {max_delta}; declared labels
{labels}. The run used {escape(str(job["api"]))} to generate and
{escape(str(job["embedding"]))} to compare.</p>
"""


def _warnings(report: Mapping[str, Any]) -> list[str]:
    """Advice read from DP diagnostics only."""
    rows = report["diagnostics"]["per_iteration"]
    advice = []
    if rows and rows[-1]["share_above_threshold"] < SWAMPED_SHARE:
        advice.append(
            "At the last iteration fewer than 10% of the samples scored above the threshold: "
            "the noise swamps the votes. Consider a larger epsilon, fewer samples or fewer "
            "iterations."
        )
    shares = [row["distinct_parents_share"] for row in rows if "distinct_parents_share" in row]
    if len(shares) > 1 and shares[-1] < DIVERSITY_DROP * shares[0]:
        advice.append(
            "The share of distinct parents selected fell from "
            f"{shares[0]:.2f} to {shares[-1]:.2f}: the population is losing diversity."
        )
    fallen = sorted({label for row in rows for label in row["uniform_fallback_labels"]})
    if fallen:
        advice.append(
            f"For label(s) {', '.join(map(str, fallen))} no sample scored above the threshold "
            "in some iteration, so selection ignored the votes there (uniform fallback)."
        )
    return advice


_DIAGNOSTICS = (
    ("degree", "public", "How strongly the generator varied the selected samples (1: freely)."),
    ("noisy_vote_mass", "dp", "The sum of the noisy counts: about the number of votes cast."),
    (
        "share_above_threshold",
        "dp",
        "The share of samples whose noisy count passed the threshold: the ones that carry "
        "signal. Near 0, the noise swamps the votes.",
    ),
    (
        "distinct_parents_share",
        "dp",
        "The share of distinct samples among those selected as parents: falling means the "
        "population concentrates on few parents.",
    ),
)


def _diagnostics(report: Mapping[str, Any]) -> str:
    rows = report["diagnostics"]["per_iteration"]
    if not rows:
        return "<p>No iteration ran.</p>"
    shown = [(key, kind, how) for key, kind, how in _DIAGNOSTICS if key in rows[0]]
    head = "".join(f"<th>{escape(key.replace('_', ' '))}</th>" for key, _, _ in shown)
    body = "".join(
        f"<tr><td>{row['iteration']}</td>"
        + "".join(
            f"<td>{_value(f'diagnostics.per_iteration.{i}.{key}', row[key], kind)}</td>"
            for key, kind, _ in shown
        )
        + "</tr>"
        for i, row in enumerate(rows)
    )
    how = "".join(
        f"<li><strong>{escape(key.replace('_', ' '))}</strong>: {h}</li>" for key, _, h in shown
    )
    return f"<table><tr><th>iteration</th>{head}</tr>{body}</table><ul class='how'>{how}</ul>"


def _diagnostics_plot(samples_dir: Path) -> str:
    path = samples_dir / "dp_diagnostics.png"
    if not path.is_file():
        return ""
    return (
        f"<figure>{_image(path, 'DP diagnostics')}"
        f"<figcaption>DP diagnostics per iteration {_tag('dp')}</figcaption></figure>"
    )


def _samples(samples_dir: Path, modality_images: bool) -> str:
    parts = []
    pattern = "iter_*.png" if modality_images else "iter_*.md"
    for path in sorted(samples_dir.glob(pattern)):
        iteration = int(path.stem.split("_")[1])
        caption = f"Synthetic samples after iteration {iteration} {_tag('dp')}"
        content = (
            _image(path, f"samples after iteration {iteration}")
            if modality_images
            else f"<pre>{escape(path.read_text())}</pre>"
        )
        parts.append(f"<figure>{content}<figcaption>{caption}</figcaption></figure>")
    return "".join(parts) or "<p>No sample grids were written.</p>"


def _events(events: Sequence[Mapping[str, Any]]) -> str:
    if not events:
        return "<p>No noisy release was made.</p>"
    rows = "".join(
        f"<tr><td>{escape(e['key'])}</td>"
        + "".join(
            f"<td>{_value(f'events.{i}.{field}', e[field], 'public')}</td>"
            for field in ("iteration", "sigma", "count")
        )
        + f"<td><code>{escape(e['release_sha256'][:16])}</code></td></tr>"
        for i, e in enumerate(events)
    )
    return (
        "<table><tr><th>release</th><th>iteration</th><th>&sigma;</th>"
        f"<th>charged as releases</th><th>sha256</th></tr>{rows}</table>"
    )


def _settings(job: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{escape(key)}</th><td><code>{escape(json.dumps(value))}</code></td></tr>"
        for key, value in job.items()
        if value not in (None, {}, [])
    )
    return f"<table>{rows}</table>"


def render_report(report: Mapping[str, Any], samples_dir: Path) -> str:
    """The HTML page of a run from its privacy report and its ``samples/`` folder."""
    private = report["private"]
    status = (
        f'<span class="status {"dp" if private else "notdp"}">{escape(report["status"])}</span>'
    )
    advice = "".join(f'<div class="warning">{escape(w)}</div>' for w in _warnings(report))
    images = any(samples_dir.glob("iter_*.png"))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>privevo run report: {escape(report["status"])}</title>
<style>{_STYLE}</style></head>
<body>
<h1>privevo run report</h1>
<p>{status} Every number on this page is tagged {_tag("dp")} (computed from noisy counts, safe
to share), {_tag("public")} (a setting) or {_tag("notdp")}. This page holds DP outputs only.</p>
<h2>The privacy guarantee</h2>
{_statement(report)}
<h2>What the run saw {_tag("dp")}</h2>
{advice or "<p>No warning: the diagnostics look healthy.</p>"}
{_diagnostics(report)}
{_diagnostics_plot(samples_dir)}
<h2>Synthetic samples</h2>
{_samples(samples_dir, images)}
<h2>Every noisy release</h2>
{_events(report["events"])}
<h2>Settings {_tag("public")}</h2>
{_settings(report["job"])}
</body></html>
"""


_METRICS = (
    (
        "accuracy",
        "A classifier trained on the synthetic samples and tested on the held-out records: "
        "how useful the synthetic data is for the task (train on synthetic, test on real).",
    ),
    (
        "macro_f1",
        "The mean over classes of each class's F1 score for the same classifier: low when it "
        "ignores some classes (always guessing the majority class), even where accuracy is not.",
    ),
    (
        "fid",
        "Frechet distance between Gaussian fits of the synthetic and held-out embeddings: lower "
        "is closer (FID when the embedder is Inception).",
    ),
    ("precision", "The share of synthetic samples that fall where real records lie (fidelity)."),
    ("recall", "The share of held-out records near some synthetic sample (diversity, coverage)."),
)


def render_eval_report(
    rows: Sequence[Mapping[str, Any]],
    eval_dir: Path,
    *,
    closer_to_private: float,
    baseline: float,
    pairs: Sequence[tuple[str, str, float, float]],
) -> str:
    """The NOT DP evaluation page, for the data owner only: it shows private records.

    Args:
        rows: ``eval/metrics.json``'s per-iteration metrics.
        eval_dir: the folder holding the metrics' curves (``<metric>.png``).
        closer_to_private, baseline: the memorisation check's share and what chance gives.
        pairs: the closest (synthetic, private) pairs as (synthetic HTML, private HTML,
            distance to the private record, distance to the closest held-out record).
    """
    metrics = [(key, how) for key, how in _METRICS if rows and key in rows[0]]
    head = "".join(f"<th>{key}</th>" for key, _ in metrics)
    body = "".join(
        f"<tr><td>{row['iteration']}</td>"
        + "".join(f"<td>{_number(row[key])}{_tag('notdp')}</td>" for key, _ in metrics)
        + "</tr>"
        for row in rows
    )
    how = "".join(f"<li><strong>{key}</strong>: {escape(text)}</li>" for key, text in metrics)
    curves = "".join(
        f"<figure>{_image(eval_dir / f'{key}.png', key)}</figure>"
        for key, _ in metrics
        if (eval_dir / f"{key}.png").is_file()
    )
    verdict = (
        "well above chance: the generator may reproduce private records; look at the pairs"
        if closer_to_private > baseline + 0.1
        else "close to chance: no sign that the synthetic samples copy private records"
    )
    pair_rows = "".join(
        f"<tr><td>{synthetic}</td><td>{private}</td><td>{_number(d_private)}{_tag('notdp')}</td>"
        f"<td>{_number(d_heldout)}{_tag('notdp')}</td></tr>"
        for synthetic, private, d_private, d_heldout in pairs
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>privevo evaluation: NOT DP</title>
<style>{_STYLE}</style></head>
<body>
<h1>privevo evaluation <span class="status notdp">NOT DP</span></h1>
<div class="warning">This page is NOT differentially private: it was computed from real records
in the clear, and it shows private records. It is for the data owner only: never share it or
publish it with the synthetic data (the shareable page is <code>report.html</code>).</div>
<h2>Quality per iteration {_tag("notdp")}</h2>
<p>Measured against held-out real records that the run never saw.</p>
<table><tr><th>iteration</th>{head}</tr>{body}</table>
<ul class="how">{how}</ul>
{curves}
<h2 id="memorisation">Memorisation check {_tag("notdp")}</h2>
<p>For every final synthetic sample: its distance to the closest private record, and to the
closest held-out record. {_number(closer_to_private)}{_tag("notdp")} of the samples are closer
to a private record, against {_number(baseline)} for samples that saw neither set: {verdict}.</p>
<table><tr><th>synthetic sample</th><th>closest private record</th>
<th>distance to it</th><th>distance to closest held-out record</th></tr>{pair_rows}</table>
</body></html>
"""
