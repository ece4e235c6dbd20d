"""The library entry points, and the example notebook the README points to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import privevo
from pe_core.checks import JobRefused
from tests.conftest import digits_28

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


def test_run_returns_the_report_and_the_synthetic_data(tmp_path: Path) -> None:
    digits = digits_28(6)
    data = tmp_path / "digits.npz"
    np.savez(data, images=digits.images, labels=digits.labels)
    result = privevo.run(
        data, tmp_path / "out", epsilon=4.0, iterations=1, num_samples=30, environ={}
    )
    assert result.report["status"] == "DP" and result.report["epsilon"] <= 4.0
    assert result.report_html.is_file() and result.evaluation == []
    synthetic = result.synthetic()
    assert len(synthetic) == 30 and synthetic.images is not None
    with pytest.raises(JobRefused, match=r"delta: 0\.001 is above"):
        privevo.run(data, tmp_path / "o", delta=1e-3, environ={})
    assert not (tmp_path / "o").exists()


def test_calibrate_counts_releases_as_a_run_would() -> None:
    assert privevo.calibrate(1.0, iterations=3, k=2).releases == 6
    assert privevo.calibrate(1.0, iterations=3, label_fractions="dp").releases == 4
    user = privevo.calibrate(1.0, iterations=3, privacy_unit="user", votes_per_user=2)
    assert user.releases == 6 and user.epsilon <= 1.0


def notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "\n\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")


@pytest.mark.slow
def test_the_example_notebook_runs_end_to_end(tmp_path: Path) -> None:
    """Every code cell, in order, in one fresh interpreter, as "Run all" would."""
    if not (REPO / "data" / "mnist" / "test.npz").exists():
        pytest.skip("the stand-in data is missing: run `make data`")
    (tmp_path / "data").symlink_to(REPO / "data")
    result = subprocess.run(
        [sys.executable, "-c", notebook_code(NOTEBOOK)],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("mnist", "bbc"):
        report = json.loads((tmp_path / "runs" / name / "privacy_report.json").read_text())
        assert report["status"] == "DP"
