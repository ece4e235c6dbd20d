"""`privevo audit` as a user runs it: a real process, real files, the report it prints."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import digits_28

ROOT = Path(__file__).resolve().parents[2]
SMALL = (
    "--iterations", "2", "--num-samples", "200", "--canaries", "400", "--guesses", "40",
    "--canary-seed", "3", "--seed", "5", "--nn-backend", "numpy-blocked", "--quiet",
)  # fmt: skip


def privevo(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "privevo.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audit") / "digits.npz"
    samples = digits_28(30)
    np.savez(path, images=samples.images, labels=samples.labels)
    return path


def test_help_explains_the_audit_and_its_cost():
    shown = privevo("audit", "--help")
    assert shown.returncode == 0
    text = " ".join(shown.stdout.split())
    for words in ("lower bound", "canary", "95%", "spends that dataset's budget", "public"):
        assert words in text
    assert "inject" not in text  # the NOT PRIVATE bug stays hidden


def test_an_audit_prints_and_writes_its_report(tmp_path, digits):
    out = tmp_path / "out"
    done = privevo(
        "audit", "--data", str(digits), "--out", str(out), "--epsilon", "2",
        "--insecure-test-noise", *SMALL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == json.loads((out / "audit.json").read_text())
    assert report["claimed_epsilon"] == pytest.approx(2.0, abs=0.01)
    assert 0 <= report["epsilon_lower_bound"] <= report["claimed_epsilon"]
    assert report["confidence"] == 0.95 and report["m"] == 400 and report["r"] == 40
    assert report["canaries"]["seed"] == 3
    assert report["canaries"]["design"]["name"] == "drawtext-small-bold-turned-corner"
    assert "spends that dataset's budget" in report["budget"]
    assert report["warnings"] and "NOT PRIVATE" in report["warnings"][0]
    assert "audit: epsilon >=" in done.stderr
    # The run's state is kept, owner-only, like any run's: its releases are spent budget.
    assert stat.S_IMODE((out / ".state").stat().st_mode) == 0o700
    assert (out / ".state" / "ledger.jsonl").exists()


def test_the_hidden_injected_bug_is_reported_not_private(tmp_path, digits):
    done = privevo(
        "audit", "--data", str(digits), "--out", str(tmp_path / "out"), "--epsilon", "2",
        "--insecure-test-noise", "--inject-bug-sigma-divisor", "4", *SMALL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "NOT PRIVATE" in report["injected_bug"]
    assert "injected-bug" in report["warnings"][0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--canaries", "10", "--guesses", "20"), "guesses"),
        (("--mode", "grey-box"), "mode"),
        (("--no-privacy", "--inject-bug-sigma-divisor", "4"), "needs a run with noise"),
        (("--epsilon", "-1"), "epsilon"),
    ],
)
def test_bad_settings_get_a_clear_error(tmp_path, digits, args, message):
    out = tmp_path / "out"
    done = privevo("audit", "--data", str(digits), "--out", str(out), *args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_a_full_output_folder_is_refused(tmp_path, digits):
    (tmp_path / "kept.txt").write_text("mine")
    done = privevo("audit", "--data", str(digits), "--out", str(tmp_path))
    assert done.returncode == 2 and "not empty" in done.stderr


def test_without_the_stand_in_it_says_how_to_get_it(tmp_path):
    done = privevo("audit", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2 and "make data" in done.stderr
