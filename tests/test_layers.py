"""The layers keep their arrows, and the gateway runs without the engine's heavy stack.

The import contracts live in pyproject.toml (``[tool.importlinter]``); ``pe_core``'s purity
(no environment, clock or global RNG) is checked by ``tests/pe_core/test_purity.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GATEWAY_LOCK = "requirements/gateway.txt"
ENGINE_MODULES = ("torch", "scipy", "sklearn", "matplotlib", "transformers", "workers")


def test_the_import_contracts_hold() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


def loaded_modules(python: str, code: str, cwd: Path, **env: str) -> list[str]:
    """The engine modules loaded after ``code`` runs in a fresh interpreter."""
    report = f"print(json.dumps([m for m in {ENGINE_MODULES!r} if m in sys.modules]))"
    probe = f"{code}\nimport json, sys\n{report}"
    result = subprocess.run(
        [python, "-c", probe],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout.splitlines()[-1]))


def test_importing_the_gateway_and_the_cli_loads_no_engine(tmp_path: Path) -> None:
    code = "import service.app, privevo.cli"
    assert loaded_modules(sys.executable, code, tmp_path) == []


@pytest.mark.slow
def test_the_gateway_lock_serves_without_torch(tmp_path: Path) -> None:
    """An environment made from requirements/gateway.txt alone (no torch, scipy, matplotlib or
    scikit-learn installed) imports the gateway and builds its app, the way
    docker/Dockerfile.gateway runs it."""
    env_dir = tmp_path / "gateway-env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    install = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--require-hashes",
            "-r",
            "requirements/gateway.txt",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-4000:]
    code = (
        "import importlib.util as u\n"
        "assert u.find_spec('torch') is None and u.find_spec('scipy') is None\n"
        "from service.app import create_app\n"
        "from service.settings import Settings\n"
        "from service.db import upgrade\n"
        "import privevo.cli\n"
        "import pathlib; pathlib.Path('home').mkdir()\n"
        "settings = Settings(home='home')\n"
        "upgrade(settings.resolved_database_url)\n"
        "create_app(settings)\n"
    )
    assert loaded_modules(python, code, tmp_path, PYTHONPATH=str(REPO)) == []
