"""scripts/gpu_check.sh: its syntax, a CPU dry run of its Python, and its exit status on failure.

The script's real run needs a CUDA device; ``--cpu-dry-run`` runs the same Python under
``TRITON_INTERPRET=1`` at toy sizes, so everything but the timings is exercised here.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed: pip install 'privevo[triton]'")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.sh"


def _dry_run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "--cpu-dry-run"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
        check=False,
    )


def test_the_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_unknown_option_is_refused() -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr


@pytest.mark.triton_interpret
def test_cpu_dry_run_passes() -> None:
    done = _dry_run({})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exactness vs reference_search" in done.stdout
    assert "device only" in done.stdout
    assert "=== gpu_check: all sections passed" in done.stdout


@pytest.mark.triton_interpret
def test_an_exactness_failure_exits_nonzero(tmp_path: Path) -> None:
    # A reference that disagrees with every fast path, planted before the check imports it.
    (tmp_path / "sitecustomize.py").write_text(
        "import pe_kernels.reference as r\n"
        "_exact = r.reference_search\n"
        "r.reference_search = lambda p, s, k, *a: _exact(p, s, k, *a)[:, ::-1].copy()\n"
    )
    done = _dry_run({"PYTHONPATH": str(tmp_path)})
    assert done.returncode != 0
    assert "EXACTNESS FAILURE: triton float32" in done.stdout
    assert "=== gpu_check: nn_kernels FAILED" in done.stderr
