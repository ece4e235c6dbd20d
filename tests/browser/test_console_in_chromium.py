"""The console and the API docs in a real browser (Chromium, driven by Playwright) against a
real `privevo serve` with its local worker: sign in, upload, run a job to the end while
watching it, read its report, and another tenant sees none of it.

Throughout: no script dialog may open (the dataset's name is markup), no request may leave
the server (every asset is local) and the browser reports no error, a Content Security Policy
violation included.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.browser.conftest import ConsoleServer
from tests.conftest import digits_28

pytestmark = pytest.mark.slow

XSS_NAME = "<img src=x onerror=alert(1)>"
JOB_TIMEOUT_MS = 150_000
"""How long the job may take, the local worker's start (model imports) included."""


@dataclass
class Watched:
    """What a browser tab did that it should not have."""

    dialogs: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.dialogs == [], f"a script ran: {self.dialogs}"
        assert self.external == [], f"requests left the server: {self.external}"
        assert self.errors == [], f"the browser reported errors: {self.errors}"


@pytest.fixture
def tab(chromium: Any, console_server: ConsoleServer) -> Iterator[tuple[Any, Watched]]:
    """A fresh browser context (no cookies) and its page, watched."""
    context = chromium.new_context(viewport={"width": 1200, "height": 800})
    watched = Watched()

    def route(route: Any) -> None:
        if route.request.url.startswith(console_server.url):
            route.continue_()
        else:
            watched.external.append(route.request.url)
            route.abort()

    context.route("**/*", route)
    page = context.new_page()

    def dialog(d: Any) -> None:
        watched.dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", dialog)
    page.on(
        "console",
        lambda m: (
            watched.errors.append(f"{m.text} ({m.location.get('url')})")
            if m.type == "error"
            else None
        ),
    )
    page.on("pageerror", lambda e: watched.errors.append(str(e)))
    page.on("request", lambda r: watched.requests.append(r.url))
    yield page, watched
    context.close()


def save_screenshot(page: Any, path: Path, *, full_page: bool = True) -> None:
    """A small PNG (a 64-colour palette): these go into the README."""
    image = Image.open(io.BytesIO(page.screenshot(full_page=full_page))).convert("RGB")
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def sign_in(page: Any, server: ConsoleServer, key: str) -> None:
    page.goto(f"{server.url}/console")
    page.fill("input[name=api_key]", key)
    page.click("button:has-text('Sign in')")
    page.wait_for_url(f"{server.url}/console/datasets")


def sign_out(page: Any) -> None:
    page.click("button:has-text('Sign out')")
    page.wait_for_url(re.compile(r".*/console/sign-in$"))


def digits_npz(path: Path, offset: int = 100) -> Path:
    digits = digits_28(6, offset=offset)
    np.savez(path, images=digits.images, labels=digits.labels)
    return path


def test_upload_run_watch_and_read_a_job_that_another_tenant_cannot_see(
    tab: tuple[Any, Watched], console_server: ConsoleServer, screenshots: Path, tmp_path: Path
):
    page, watched = tab
    server = console_server
    alice = server.cli("keys", "create", "--tenant", "alice")
    bob = server.cli("keys", "create", "--tenant", "bob")

    sign_in(page, server, alice)
    assert "HttpOnly" in _cookie_flags(page, "privevo_session")
    assert page.evaluate("document.cookie") == ""  # no script can read the session

    # Held-out data first: it has no budget, so the page turns the budget fields off.
    page.fill("input[name=name]", "held-out digits")
    page.select_option("select[name=role]", "heldout")
    assert page.is_disabled("input[name=epsilon_cap]")
    page.set_input_files("input[name=file]", str(digits_npz(tmp_path / "heldout.npz", 150)))
    page.click("button:has-text('Upload')")
    page.wait_for_url(re.compile(r".*/console/datasets/ds_[A-Za-z0-9_-]+$"))
    heldout_id = page.url.rsplit("/", 1)[1]
    assert "Held-out data has no budget" in page.inner_text("main")
    page.goto(f"{server.url}/console/datasets")

    page.fill("input[name=name]", XSS_NAME)
    page.select_option("select[name=modality]", "image")
    page.fill("input[name=epsilon_cap]", "2")
    page.set_input_files("input[name=file]", str(digits_npz(tmp_path / "digits.npz")))
    page.click("button:has-text('Upload')")
    page.wait_for_url(re.compile(r".*/console/datasets/ds_[A-Za-z0-9_-]+$"))
    dataset_url = page.url
    assert page.inner_text("h1") == XSS_NAME  # shown as text
    assert page.locator("img[src=x]").count() == 0
    assert "60 image" in page.inner_text("dl.facts")

    page.fill("input[name=epsilon]", "1")
    page.fill("input[name=iterations]", "2")
    page.fill("input[name=num_samples]", "40")
    page.select_option("select[name=eval_dataset_id]", heldout_id)
    page.click("button:has-text('Start')")
    page.wait_for_url(re.compile(r".*/console/jobs/job_[A-Za-z0-9_-]+$"))
    job_url = page.url
    job_id = job_url.rsplit("/", 1)[1]
    assert page.get_attribute("#progress", "data-final") == "false"
    # The page follows the job over server-sent events and reloads itself once it has ended.
    page.wait_for_selector("#job-status.succeeded", timeout=JOB_TIMEOUT_MS)
    assert f"{job_url}/events" in watched.requests
    assert page.inner_text("#job-iteration") == "2"
    assert page.inner_text("#job-eta") == "done"
    page.wait_for_selector("img[src$='iter_02.png']")
    assert page.locator("img[src$='dp_diagnostics.png']").count() == 1
    for image in page.locator("figure img").all():  # every grid and curve loaded
        assert image.evaluate("i => i.complete && i.naturalWidth > 0")
    # The NOT DP evaluation against the held-out data: a score per iteration, and its report.
    assert page.locator("#evaluation tbody tr").count() == 3
    assert "NOT DP" in page.inner_text("#evaluation h2")
    page.locator("#evaluation").screenshot(path=str(screenshots / "console-evaluation.png"))
    with page.expect_download() as evaluation:
        page.click("a:has-text('Download the NOT DP report')")
    assert "NOT DP" in Path(evaluation.value.path()).read_text()
    report_frame = page.frame_locator("iframe.report")
    assert "epsilon" in report_frame.locator("body").inner_text().lower()
    save_screenshot(page, screenshots / "console-job.png", full_page=False)

    with page.expect_download() as download:
        page.click("a:has-text('Download result')")
    with zipfile.ZipFile(download.value.path()) as archive:
        names = archive.namelist()
    assert "report.html" in names and "privacy_report.json" in names

    page.goto(f"{server.url}/console/jobs/{job_id}/report")
    assert page.title()  # the report is its own page too
    save_screenshot(page, screenshots / "report.png", full_page=False)
    report_url = page.url

    page.goto(dataset_url)
    assert page.locator(f"a[href='/console/jobs/{job_id}']").count() == 1  # its history
    page.goto(f"{server.url}/console/datasets")
    assert page.locator("td a", has_text=XSS_NAME).count() == 1
    watched.assert_clean()

    # Another tenant: an empty console, and a 404 for each of alice's pages and files.
    sign_out(page)
    sign_in(page, server, bob)
    assert "No datasets yet" in page.inner_text("main")
    page.goto(f"{server.url}/console/jobs")
    assert "No jobs yet" in page.inner_text("main")
    for url in [
        dataset_url,
        job_url,
        report_url,
        f"{job_url}/samples/iter_02.png",
        f"{job_url}/result",
        f"{job_url}/events",
        f"{job_url}/evaluation/report",
    ]:
        response = page.request.get(url)
        assert response.status == 404, (url, response.status)
        assert XSS_NAME not in response.text()
    watched.assert_clean()
    assert page.goto(job_url).status == 404
    assert "Not found" in page.inner_text("h1")
    assert "not found" in page.inner_text("main")  # as for an id that never existed


def test_the_api_docs_load_from_this_server_alone(
    tab: tuple[Any, Watched], console_server: ConsoleServer
):
    page, watched = tab
    page.goto(f"{console_server.url}/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "privevo" in page.inner_text(".swagger-ui .info .title")
    page.wait_for_selector(".opblock-summary-path[data-path='/v1/datasets']")  # rendered
    page.goto(f"{console_server.url}/redoc")
    page.wait_for_selector("h1:has-text('privevo')")
    page.wait_for_selector("text=Uploads a private dataset")
    # ReDoc's attribution asks for its logo on Redocly's CDN: the policy blocks it (so nothing
    # leaves), ReDoc then hides the image, and this is the one error the browser may report.
    blocked = [e for e in watched.errors if "https://cdn.redoc.ly/redoc/logo-mini.svg" in e]
    assert all("Content Security Policy" in e for e in blocked)
    watched.errors = [e for e in watched.errors if e not in blocked]
    watched.assert_clean()


def _cookie_flags(page: Any, name: str) -> str:
    for cookie in page.context.cookies():
        if cookie["name"] == name:
            flags = ["HttpOnly"] if cookie["httpOnly"] else []
            return " ".join([*flags, f"SameSite={cookie['sameSite']}"])
    return ""
