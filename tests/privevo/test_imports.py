"""What a run loads: a raw-pixels drawtext run on a CPU needs neither torch nor scikit-learn.

torch costs ~2 s and ~200 MB to import and scikit-learn with scipy's stats ~1.5 s and ~100 MB:
most of a small run's time and memory (the "Speed" issue). Each check runs in a fresh
interpreter, since this one has imported everything by now.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import digits_28

HEAVY = ("torch", "sklearn", "transformers", "diffusers")


def loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    modules = json.loads(done.stdout.splitlines()[-1])
    return [name for name in HEAVY if name in modules]


def test_the_cli_and_the_local_runner_import_no_heavy_library() -> None:
    assert loaded_after("import privevo.cli, privevo.local, pe_core.outputs") == []


def test_a_raw_pixels_drawtext_run_on_a_cpu_loads_no_heavy_library(tmp_path: Path) -> None:
    digits = digits_28(6)
    data = tmp_path / "digits.npz"
    np.savez(data, images=digits.images, labels=digits.labels)
    out = tmp_path / "out"
    args = [
        "run", "--data", str(data), "--out", str(out), "--num-samples", "40",
        "--iterations", "1", "--lookahead", "2", "--seed", "1", "--quiet",
    ]  # fmt: skip
    # No GPU driver, whatever machine runs the test: default_device must not ask torch.
    code = (
        "from pe_kernels import dispatch\n"
        f"dispatch.GPU_DRIVER_FILES = ({str(tmp_path / 'no-driver')!r},)\n"
        "from privevo.cli import app\n"
        f"try:\n    app({json.dumps(args)})\nexcept SystemExit as exit:\n    assert not exit.code\n"
    )
    assert loaded_after(code) == []
    assert (out / "synthetic" / "synthetic.parquet").is_file()
