"""The stand-in data export (scripts/prepare_data.py) and the quality benchmark's helpers
(benchmarks/quality.py): what they write and read, on small files made here."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(relative: str) -> ModuleType:
    """Imports a script by path (registered under a private name: dataclasses look their
    module up in sys.modules)."""
    path = REPO / relative
    name = f"_script_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prepare_data() -> ModuleType:
    return _load("scripts/prepare_data.py")


@pytest.fixture(scope="module")
def quality() -> ModuleType:
    return _load("benchmarks/quality.py")


def _strfile(path: Path, fortunes: list[str]) -> Path:
    path.write_text("\n%\n".join(fortunes) + "\n%\n", encoding="latin-1")
    return path


def test_read_fortunes_collapses_whitespace_and_drops_long_ones(
    prepare_data: ModuleType, tmp_path: Path
) -> None:
    long = " ".join(["word"] * (prepare_data.FORTUNE_MAX_WORDS + 1))
    source = _strfile(tmp_path / "food", ["Eat\n\tdessert first.", long, "  ", "Caf\xe9 au lait."])
    assert prepare_data.read_fortunes(source) == {"Eat dessert first.", "Caf\xe9 au lait."}


def test_fortunes_splits_are_disjoint_stable_and_drop_texts_filed_twice(
    prepare_data: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "fortunes"
    source.mkdir()
    for topic in prepare_data.FORTUNE_TOPICS:
        _strfile(source / topic, [f"{topic} fortune {i}." for i in range(20)] + ["Filed twice."])
    monkeypatch.setattr(prepare_data, "FORTUNES_DIR", source)

    first = prepare_data.export_fortunes(tmp_path / "a")
    again = prepare_data.export_fortunes(tmp_path / "b")
    rows = {
        path.stem: [json.loads(line) for line in path.read_text("utf-8").splitlines()]
        for path in first
    }
    assert sorted(rows) == ["eval", "private"]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    private = {row["text"] for row in rows["private"]}
    held_out = {row["text"] for row in rows["eval"]}
    assert not private & held_out and "Filed twice." not in private | held_out
    for topic in prepare_data.FORTUNE_TOPICS:
        labels = [row["label"] for row in rows["eval"]]
        assert labels.count(topic) == round(20 * prepare_data.EVAL_SHARE)
    assert prepare_data.export_fortunes(tmp_path / "a") == []  # kept, not written again


def test_fortunes_without_the_package_says_how_to_install_it(
    prepare_data: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prepare_data, "FORTUNES_DIR", tmp_path / "absent")
    with pytest.raises(SystemExit, match="apt-get install fortunes"):
        prepare_data.export_fortunes(tmp_path / "out")
    assert not (tmp_path / "out" / "fortunes").exists()


def test_overrides_set_nested_options_and_keep_their_siblings(quality: ModuleType) -> None:
    options = {"iterations": 4, "api_config": {"backend": "transformers", "max_words": 40}}
    changed = quality.with_overrides(
        options, ["iterations=8", "api_config.paraphrase_above=0", "embedding_config.size=14"]
    )
    assert changed == {
        "iterations": 8,
        "api_config": {"backend": "transformers", "max_words": 40, "paraphrase_above": 0},
        "embedding_config": {"size": 14},
    }
    assert options["api_config"] == {"backend": "transformers", "max_words": 40}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        quality.with_overrides(options, ["iterations"])
    with pytest.raises(ValueError, match="iterations is not a mapping"):
        quality.with_overrides(options, ["iterations.x=1"])


def test_duplicate_share_counts_repeated_texts(quality: ModuleType, tmp_path: Path) -> None:
    assert quality.duplicate_share(tmp_path) is None  # images: no texts.jsonl
    (tmp_path / "synthetic").mkdir()
    texts = ["a", "b", "a", "a", "c"]
    (tmp_path / "synthetic" / "texts.jsonl").write_text(
        "".join(json.dumps({"text": t, "label": "x"}) + "\n" for t in texts), "utf-8"
    )
    assert quality.duplicate_share(tmp_path) == pytest.approx(2 / 5)


def test_every_setting_names_shipped_configs_options(quality: ModuleType) -> None:
    from pe_core.config import PeJob

    for name, setting in quality.SETTINGS.items():
        PeJob.model_validate({"epsilon": 1.0, **setting.options})
        assert not {"epsilon", "seed", "data", "eval_data"} & set(setting.options), name
