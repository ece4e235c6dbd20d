"""A real `privevo serve` (SQLite, the file-system broker, its own local worker) and Debian's
Chromium driven by Playwright.

Playwright cannot download its browsers here, so it drives the system's Chromium
(``make chromium`` installs it). Missing, the browser tests fail under CI (``CI`` set), where
they must run, and are skipped elsewhere with a hint.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

CHROMIUM = Path(os.environ.get("PRIVEVO_CHROMIUM", "/usr/bin/chromium"))
# The machine's network is closed: nothing Chromium would fetch on its own is wanted.
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_TIMEOUT_S = 90


@dataclass
class ConsoleServer:
    url: str
    home: Path
    env: dict[str, str]
    log: Path

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "privevo.cli", *args],
            env=self.env, capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        return done.stdout.strip()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="package")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:
    """`privevo serve` as a user starts it: the embedded setup with one local worker."""
    home = tmp_path_factory.mktemp("console")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVEVO_")}
    env["PRIVEVO_HOME"] = str(home)
    port = _free_port()
    server = ConsoleServer(f"http://127.0.0.1:{port}", home, env, home / "serve.log")
    server.cli("keys", "create", "--tenant", "warmup")  # migrates the database
    with server.log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "privevo.cli", "serve", "--port", str(port)],
            env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"privevo serve did not start:\n{server.log_tail()}")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()  # serve stops its worker before it exits
        process.wait(timeout=60)


@pytest.fixture(scope="package")
def chromium() -> Iterator[object]:
    """Playwright's Chromium: the system's, headless."""
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        message = f"no Chromium at {CHROMIUM}: run `make chromium` (Debian's package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="package")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests save their screenshots: ``PRIVEVO_SCREENSHOTS`` (the README's are made
    so), else the test's temporary output."""
    chosen = os.environ.get("PRIVEVO_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
