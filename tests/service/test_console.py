"""The web console and the API docs over real HTTP, against a real `privevo serve`: sessions,
CSRF refusals, escaping, security headers and tenant isolation (the browser itself is in
tests/browser)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from service import db
from service.console.docs import STATIC
from tests.conftest import digits_28
from tests.servers import REDIS, Server, answers

XSS = "<img src=x onerror=alert(1)>"
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server on SQLite: the console adds no query of its own (it calls the API)."""
    if not answers(REDIS):
        pytest.skip("Redis does not answer on 127.0.0.1:6379 (make test starts one)")
    server = Server(tmp_path_factory.mktemp("console"))
    server.cli("keys", "create", "--tenant", "warmup")
    server.start()
    yield server
    server.stop()


def browser(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60)


def signed_in(server: Server, tenant: str) -> tuple[httpx.Client, str]:
    """A client with a console session, and the page's CSRF token."""
    client = browser(server)
    key = server.cli("keys", "create", "--tenant", tenant)
    page = client.get("/console/sign-in")
    answer = client.post(
        "/console/sign-in", data={"api_key": key, "csrf_token": TOKEN.search(page.text)[1]}
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/console/datasets"
    return client, token_of(client)


def token_of(client: httpx.Client) -> str:
    return TOKEN.search(client.get("/console/datasets").text)[1]


def npz(offset: int) -> bytes:
    digits = digits_28(3, offset=offset)
    buffer = io.BytesIO()
    np.savez(buffer, images=digits.images, labels=digits.labels)
    return buffer.getvalue()


def upload(client: httpx.Client, token: str | None, name: str, offset: int) -> httpx.Response:
    """The upload form as a browser sends it: the token first, then the fields and the file."""
    fields = {"name": name, "modality": "image", "epsilon_cap": "1"}
    data = fields if token is None else {"csrf_token": token, **fields}
    return client.post("/console/datasets", data=data, files={"file": ("digits.npz", npz(offset))})


def stored_uploads(server: Server) -> list[Path]:
    root = server.home / "storage" / "uploads"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture(scope="module")
def alice(console: Server) -> Iterator[tuple[httpx.Client, str]]:
    client, token = signed_in(console, "alice")
    yield client, token
    client.close()


@pytest.fixture(scope="module")
def alice_job(console: Server, alice: tuple[httpx.Client, str]) -> dict[str, str]:
    """A dataset named with markup, and a job on it (canceled, so that its events end)."""
    client, token = alice
    created = upload(client, token, XSS, offset=0)
    assert created.status_code == 303, created.text
    dataset_id = created.headers["location"].rsplit("/", 1)[1]
    started = client.post(
        f"/console/datasets/{dataset_id}/jobs",
        data={"csrf_token": token, "epsilon": "0.5", "iterations": "1", "num_samples": "20"},
    )
    assert started.status_code == 303, started.text
    job_id = started.headers["location"].rsplit("/", 1)[1]
    canceled = client.post(f"/console/jobs/{job_id}/cancel", data={"csrf_token": token})
    assert canceled.status_code == 303, canceled.text
    return {"dataset": dataset_id, "job": job_id}


def test_pages_need_a_session_and_sign_in_gives_an_httponly_strict_cookie(console: Server):
    with browser(console) as client:
        for path in ["/console/datasets", "/console/jobs", "/console/jobs/job_x"]:
            answer = client.get(path)
            assert answer.status_code == 303
            assert answer.headers["location"] == "/console/sign-in"
        assert client.get("/console/jobs/job_x/events").status_code == 401
        page = client.get("/console/sign-in")
        assert "HttpOnly" in page.headers["set-cookie"]
        wrong = client.post(
            "/console/sign-in",
            data={"api_key": "pev_" + "x" * 43, "csrf_token": TOKEN.search(page.text)[1]},
        )
        assert wrong.status_code == 401
        assert "privevo_session" not in wrong.headers.get("set-cookie", "")
    client, _ = signed_in(console, "carol")
    with closing(client):
        cookie = next(c for c in client.cookies.jar if c.name == "privevo_session")
        assert cookie.path == "/console"
        assert cookie.has_nonstandard_attr("HttpOnly")
        assert cookie.get_nonstandard_attr("SameSite").lower() == "strict"
        assert client.get("/console/datasets").status_code == 200


def test_every_page_carries_a_policy_without_inline_script(
    console: Server, alice: tuple[httpx.Client, str], alice_job: dict[str, str]
):
    client, _ = alice
    pages = [
        "/console/sign-in",
        "/console/datasets",
        f"/console/datasets/{alice_job['dataset']}",
        "/console/jobs",
        f"/console/jobs/{alice_job['job']}",
        "/console/jobs/job_nothing",  # an error page
    ]
    for path in pages:
        answer = client.get(path)
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy, path
        assert "frame-ancestors 'none'" in policy and "object-src 'none'" in policy, path
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["cache-control"] == "no-store"
        # No inline script and no inline handler: every <script> names a file of this server.
        scripts = re.findall(r"<script\b([^>]*)>", answer.text)
        assert scripts and all('src="/console/static/' in s for s in scripts), path
        assert not re.search(r"<[a-z][^>]*\son[a-z]+\s*=", answer.text, re.IGNORECASE), path
    for path in ["/docs", "/redoc"]:
        answer = client.get(path)
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy.split(";")[1]
        assert "http" not in answer.text.replace("http-equiv", "")  # nothing from elsewhere
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', answer.text):
            assert client.get(asset).status_code == 200, asset


def test_data_is_escaped_on_every_page(
    console: Server, alice: tuple[httpx.Client, str], alice_job: dict[str, str]
):
    client, _ = alice
    for path in [
        "/console/datasets",
        f"/console/datasets/{alice_job['dataset']}",
        f"/console/jobs/{alice_job['job']}",
    ]:
        html = client.get(path).text
        assert XSS not in html, path
        assert "&lt;img src=x onerror=alert(1)&gt;" in html, path


@pytest.mark.parametrize("path", ["sign-out", "datasets/{dataset}/jobs", "jobs/{job}/cancel"])
@pytest.mark.parametrize("token", [None, "forged"])
def test_a_form_without_its_csrf_token_is_refused(
    console: Server, alice: tuple[httpx.Client, str], alice_job: dict[str, str], path, token
):
    client, real = alice
    data = {"epsilon": "0.1"} if token is None else {"epsilon": "0.1", "csrf_token": token}
    jobs_before = client.get("/console/jobs").text.count("/console/jobs/job_")
    answer = client.post("/console/" + path.format(**alice_job), data=data)
    assert answer.status_code == 403
    assert "security token" in answer.text
    assert client.get("/console/jobs").text.count("/console/jobs/job_") == jobs_before
    assert client.get("/console/datasets").status_code == 200  # still signed in
    assert token_of(client) == real


def test_the_sign_in_form_needs_its_own_token(console: Server):
    key = console.cli("keys", "create", "--tenant", "dave")
    with browser(console) as client:
        client.get("/console/sign-in")  # the cookie half of the token
        for token in [None, "forged"]:
            data = {"api_key": key} if token is None else {"api_key": key, "csrf_token": token}
            answer = client.post("/console/sign-in", data=data)
            assert answer.status_code == 403
            assert "privevo_session" not in answer.headers.get("set-cookie", "")


@pytest.mark.parametrize("token", [None, "forged", "after"])
def test_an_upload_without_its_csrf_token_first_stores_nothing(
    console: Server, alice: tuple[httpx.Client, str], token
):
    client, real = alice
    before = stored_uploads(console)
    if token == "after":  # the right token, but after the file: the upload would be read first
        fields = {"name": "late", "modality": "image", "epsilon_cap": "1"}
        answer = client.post(
            "/console/datasets",
            files=[("file", ("digits.npz", npz(9))), *((k, (None, v)) for k, v in fields.items()),
                   ("csrf_token", (None, real))],
        )  # fmt: skip
    else:
        answer = upload(client, token, "forged", offset=9)
    assert answer.status_code == 403, answer.text
    assert stored_uploads(console) == before
    assert "forged" not in client.get("/console/datasets").text


def test_an_api_error_is_shown_on_the_form_with_its_status(alice: tuple[httpx.Client, str]):
    client, token = alice
    answer = client.post(
        "/console/datasets",
        data={"csrf_token": token, "name": "x", "modality": "image", "epsilon_cap": "-1"},
        files={"file": ("digits.npz", npz(12))},
    )
    assert answer.status_code == 422
    assert "epsilon_cap" in answer.text and 'role="alert"' in answer.text


def test_held_out_data_is_uploaded_and_named_for_a_job_from_the_forms(console: Server):
    client, token = signed_in(console, "carol")
    private = upload(client, token, "private digits", offset=20)
    assert private.status_code == 303, private.text
    heldout = client.post(
        "/console/datasets",
        data={"csrf_token": token, "name": "held-out digits", "modality": "image",
              "role": "heldout"},  # the page turns the budget fields off for held-out data
        files={"file": ("digits.npz", npz(40))},
    )  # fmt: skip
    assert heldout.status_code == 303, heldout.text
    heldout_id = heldout.headers["location"].rsplit("/", 1)[1]
    page = client.get(heldout.headers["location"]).text
    assert "Held-out data has no budget" in page and "Start a job" not in page
    page = client.get(private.headers["location"]).text
    assert f'<option value="{heldout_id}">held-out digits (30 records, NOT DP)</option>' in page
    dataset_id = private.headers["location"].rsplit("/", 1)[1]
    started = client.post(
        f"/console/datasets/{dataset_id}/jobs",
        data={"csrf_token": token, "epsilon": "0.5", "iterations": "1", "num_samples": "20",
              "eval_dataset_id": heldout_id},
    )  # fmt: skip
    assert started.status_code == 303, started.text
    job_id = started.headers["location"].rsplit("/", 1)[1]
    job = client.get(f"/console/jobs/{job_id}").text
    assert f"&#34;eval_dataset_id&#34;: &#34;{heldout_id}&#34;" in job  # its spec, escaped
    client.post(f"/console/jobs/{job_id}/cancel", data={"csrf_token": token})
    client.close()


def test_another_tenant_gets_404_on_every_page_and_file(console: Server, alice_job: dict[str, str]):
    bob, token = signed_in(console, "bob")
    with closing(bob):
        ds, job = alice_job["dataset"], alice_job["job"]
        for path in [
            f"/console/datasets/{ds}",
            f"/console/jobs/{job}",
            f"/console/jobs/{job}/events",
            f"/console/jobs/{job}/result",
            f"/console/jobs/{job}/report",
            f"/console/jobs/{job}/samples/iter_01.png",
        ]:
            answer = bob.get(path)
            assert answer.status_code == 404, (path, answer.status_code)
            assert XSS not in answer.text and "&lt;img" not in answer.text
        for path in [f"/console/datasets/{ds}/jobs", f"/console/jobs/{job}/cancel"]:
            answer = bob.post(path, data={"csrf_token": token, "epsilon": "0.1"})
            assert answer.status_code == 404, (path, answer.status_code)
        assert "No datasets yet" in bob.get("/console/datasets").text
        assert "No jobs yet" in bob.get("/console/jobs").text
        assert bob.get("/console/datasets/..%2F..%2Fv1%2Fjobs").status_code == 404


def test_the_events_of_a_job_are_relayed_as_server_sent_events(
    alice: tuple[httpx.Client, str], alice_job: dict[str, str]
):
    client, _ = alice
    with client.stream("GET", f"/console/jobs/{alice_job['job']}/events") as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        body = "".join(answer.iter_text())  # the job is canceled: the stream ends
    kinds = re.findall(r"^event: (\w+)$", body, re.MULTILINE)
    assert kinds[0] == "created" and kinds[-1] == "finished"
    ids = [int(i) for i in re.findall(r"^id: (\d+)$", body, re.MULTILINE)]
    with client.stream(
        "GET", f"/console/jobs/{alice_job['job']}/events", headers={"Last-Event-ID": str(ids[0])}
    ) as answer:
        again = "".join(answer.iter_text())
    assert re.findall(r"^id: (\d+)$", again, re.MULTILINE) == [str(i) for i in ids[1:]]


def test_sign_out_and_a_revoked_key_end_the_session(console: Server):
    client, token = signed_in(console, "erin")
    with closing(client):
        out = client.post("/console/sign-out", data={"csrf_token": token})
        assert out.status_code == 303
        assert client.get("/console/datasets").status_code == 303
    client, _ = signed_in(console, "frank")
    with closing(client):
        engine = db.make_engine(f"sqlite:///{console.home / 'privevo.sqlite3'}")
        with db.make_session_factory(engine)() as s:
            tenant = db.tenant_named(s, "frank")
            with db.read_transaction(s):
                statement = select(db.ApiKey.id).where(db.ApiKey.tenant_id == tenant.id)
                keys = list(s.scalars(statement))
            for key_id in keys:
                db.revoke_api_key(s, tenant.id, key_id)
        engine.dispose()
        answer = client.get("/console/datasets")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console/sign-in"


def test_the_docs_use_the_vendored_assets_and_stay_out_of_the_schema(console: Server):
    schema = httpx.get(f"{console.url}/openapi.json").json()
    assert not [p for p in schema["paths"] if not p.startswith(("/v1/", "/healthz", "/readyz"))]
    for vendored in ["swagger-ui/swagger-ui-bundle.js", "redoc/redoc.standalone.js"]:
        answer = httpx.get(f"{console.url}/static/vendor/{vendored}")
        assert answer.status_code == 200
        assert answer.content == (STATIC / "vendor" / vendored).read_bytes()
        assert answer.headers["x-content-type-options"] == "nosniff"
