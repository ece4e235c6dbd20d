"""The REST API over real HTTP: a `privevo serve` process, its SQLite database and Redis."""

from __future__ import annotations

import base64
import io
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import text

from service.db import make_engine
from tests.conftest import digits_28
from tests.servers import Server


@pytest.fixture(scope="module")
def alice(server: Server) -> Iterator[httpx.Client]:
    with server.client(server.cli("keys", "create", "--tenant", "alice")) as client:
        yield client


@pytest.fixture(scope="module")
def bob(server: Server) -> Iterator[httpx.Client]:
    with server.client(server.cli("keys", "create", "--tenant", "bob")) as client:
        yield client


def npz_bytes(n_per_label: int = 6, *, offset: int = 0) -> bytes:
    """Digits as an npz upload. Uploads sharing any record share one budget, so a test that
    needs a budget of its own takes its own ``offset``."""
    digits = digits_28(n_per_label, offset=offset)
    buffer = io.BytesIO()
    np.savez(buffer, images=digits.images, labels=digits.labels)
    return buffer.getvalue()


def upload(client: httpx.Client, content: bytes, filename: str = "digits.npz", **fields):
    data = {"name": "digits", "modality": "image", "epsilon_cap": "1.0", **fields}
    return client.post("/v1/datasets", files={"file": (filename, content)}, data=data)


@pytest.fixture(scope="module")
def dataset(alice: httpx.Client) -> dict:
    response = upload(alice, npz_bytes())
    assert response.status_code == 201, response.text
    return response.json()


def stored_uploads(server: Server) -> list[Path]:
    root = server.home / "storage" / "uploads"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_health_and_auth(server: Server):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200, ready.text
    with server.client(None) as anonymous:
        response = anonymous.get("/v1/datasets")
    assert response.status_code == 401
    assert "Bearer" in response.json()["detail"]
    with server.client("pev_not-a-real-key") as stranger:
        assert stranger.get("/v1/datasets").status_code == 401


def test_upload_reports_records_labels_and_budget(dataset: dict):
    assert dataset["record_count"] == 60
    assert dataset["labels"] == [str(c) for c in range(10)]
    assert len(dataset["sha256"]) == 64
    assert dataset["budget"]["epsilon_cap"] == 1.0
    assert dataset["budget"]["epsilon_remaining"] == 1.0


def test_tenants_never_see_each_other(alice: httpx.Client, bob: httpx.Client, dataset: dict):
    job = alice.post(
        "/v1/jobs",
        json={"dataset_id": dataset["id"], "epsilon": 0.1, "iterations": 1, "num_samples": 20},
    )
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    ds = dataset["id"]
    for method, path in [
        ("GET", f"/v1/datasets/{ds}"),
        ("GET", f"/v1/datasets/{ds}/budget"),
        ("DELETE", f"/v1/datasets/{ds}"),
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", f"/v1/jobs/{job_id}/result"),
    ]:
        response = bob.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
    stolen = bob.post("/v1/jobs", json={"dataset_id": ds, "epsilon": 0.1})
    assert stolen.status_code == 404
    assert bob.get("/v1/datasets").json()["items"] == []
    assert bob.get("/v1/jobs").json()["items"] == []
    assert [d["id"] for d in alice.get("/v1/datasets").json()["items"]] == [ds]
    assert alice.get(f"/v1/jobs/{job_id}").json()["status"] in ("queued", "running")


def test_budget_is_reserved_refused_and_idempotent(alice: httpx.Client):
    ds = upload(alice, npz_bytes(5, offset=10), epsilon_cap="1.0").json()["id"]
    body = {"dataset_id": ds, "epsilon": 0.6, "iterations": 2}
    first = alice.post("/v1/jobs", json=body, headers={"Idempotency-Key": "abc"})
    assert first.status_code == 202
    assert first.headers["Location"] == f"/v1/jobs/{first.json()['id']}"
    again = alice.post("/v1/jobs", json=body, headers={"Idempotency-Key": "abc"})
    assert again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    refused = alice.post("/v1/jobs", json=body, headers={"Idempotency-Key": "def"})
    assert refused.status_code == 409
    assert "left" in refused.json()["detail"]
    budget = alice.get(f"/v1/datasets/{ds}/budget").json()
    assert budget["epsilon_reserved"] == pytest.approx(0.6)
    assert budget["epsilon_remaining"] == pytest.approx(0.4)


@pytest.mark.parametrize(
    "body",
    [
        {"epsilon": -1},
        {"epsilon": 0},
        {"delta": 2},
        {"iterations": 0},
        {"epsilom": 1},
        {"no_privacy": True, "epsilon": 1},
    ],
)
def test_impossible_or_unknown_job_fields_are_4xx(alice: httpx.Client, dataset: dict, body):
    response = alice.post("/v1/jobs", json={"dataset_id": dataset["id"], **body})
    assert response.status_code in (400, 422), response.text
    assert response.json()["detail"]


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("filename", "content", "fields", "status", "message"),
    [
        ("bad.zip", _zip({"a/1.png": b"not a png"}), {}, 422, "1.png"),
        ("evil.zip", _zip({"../a/1.png": b"x"}), {}, 422, ".."),
        ("data.csv", b"body,label\nhello,a\n", {"modality": "text"}, 422, "body"),
        ("empty.jsonl", b"", {"modality": "text"}, 422, "empty"),
        ("data.exe", b"MZ", {}, 415, ".exe"),
        ("big.npz", b"\0" * (4 * 1024 * 1024), {}, 413, "limit"),
        ("digits.npz", npz_bytes(1), {"epsilon_cap": "-1"}, 422, "epsilon_cap"),
        ("digits.npz", npz_bytes(1), {"modality": "video"}, 422, "modality"),
    ],
)
def test_bad_uploads_are_4xx_and_leave_nothing(
    server: Server, alice: httpx.Client, filename, content, fields, status, message
):
    before = stored_uploads(server)
    response = upload(alice, content, filename, **fields)
    assert response.status_code == status, response.text
    assert message in response.text
    assert stored_uploads(server) == before
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_delete_removes_private_files_but_keeps_budget(server: Server, alice: httpx.Client):
    created = upload(alice, npz_bytes(2, offset=20), epsilon_cap="2.0").json()
    job = alice.post("/v1/jobs", json={"dataset_id": created["id"], "epsilon": 0.5})
    assert job.status_code == 202
    files_before = len(stored_uploads(server))
    assert alice.delete(f"/v1/datasets/{created['id']}").status_code == 204
    assert len(stored_uploads(server)) == files_before - 1
    assert alice.get(f"/v1/datasets/{created['id']}").status_code == 404
    again = upload(alice, npz_bytes(2, offset=20), epsilon_cap="2.0").json()
    assert again["sha256"] == created["sha256"]
    assert again["budget"]["epsilon_remaining"] == pytest.approx(1.5)  # not reset


def test_pagination_walks_every_job(alice: httpx.Client):
    seen: list[str] = []
    cursor = None
    while True:
        page = alice.get("/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200
        seen += [j["id"] for j in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) >= 3
    assert alice.get("/v1/jobs", params={"cursor": "garbage"}).status_code == 400


def test_events_stream_as_server_sent_events_until_the_job_ends(alice: httpx.Client, dataset: dict):
    job = alice.post("/v1/jobs", json={"dataset_id": dataset["id"], "epsilon": 0.05}).json()
    assert alice.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    with alice.stream(
        "GET", f"/v1/jobs/{job['id']}/events", headers={"Accept": "text/event-stream"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())  # ends because the job has ended
    blocks = [b for b in text.split("\n\n") if b.strip()]
    kinds = [line.removeprefix("event: ") for b in blocks for line in b.splitlines()
             if line.startswith("event: ")]  # fmt: skip
    assert kinds[0] == "created"
    assert len(kinds) >= 2
    ids = [int(line.removeprefix("id: ")) for b in blocks for line in b.splitlines()
           if line.startswith("id: ")]  # fmt: skip
    assert ids == sorted(ids)
    with alice.stream(
        "GET",
        f"/v1/jobs/{job['id']}/events",
        headers={"Accept": "text/event-stream", "Last-Event-ID": str(ids[0])},
    ) as response:
        rest = "".join(response.iter_text())
    assert f"id: {ids[0]}\n" not in rest and f"id: {ids[1]}\n" in rest


def test_metrics_are_off_without_an_operator_token(server: Server, alice: httpx.Client):
    # They count every tenant's requests and jobs: no API key reads them
    # (tests/reliability/test_side_channels.py serves them with a token).
    assert httpx.get(f"{server.url}/metrics").status_code == 404
    assert alice.get("/metrics").status_code == 404


def test_concurrent_creates_over_http_accept_exactly_what_fits(alice: httpx.Client):
    ds = upload(alice, npz_bytes(3, offset=30), epsilon_cap="1.0").json()["id"]

    def create(i: int) -> int:
        with httpx.Client(base_url=alice.base_url, headers=alice.headers, timeout=60) as c:
            body = {"dataset_id": ds, "epsilon": 0.4, "iterations": 1}
            return c.post(
                "/v1/jobs", json=body, headers={"Idempotency-Key": f"race-{i}"}
            ).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = sorted(pool.map(create, range(8)))
    assert codes == [202, 202] + [409] * 6
    budget = alice.get(f"/v1/datasets/{ds}/budget").json()
    assert budget["epsilon_reserved"] == pytest.approx(0.8)


BOUNDARY = "privevo-test-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
FIELDS = [("name", None, b"digits"), ("modality", None, b"image"), ("epsilon_cap", None, b"1.0")]


def multipart(parts: list[tuple[str, str | None, bytes]], *, close: bool = True) -> bytes:
    """A multipart/form-data body of (name, file name or None, content) parts."""
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += content + b"\r\n"
    return body + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def post_form(client: httpx.Client, body: bytes | Iterator[bytes], content_type: str = MULTIPART):
    return client.post("/v1/datasets", content=body, headers={"Content-Type": content_type})


def test_fields_may_follow_the_file(alice: httpx.Client):
    response = post_form(alice, multipart([("file", "digits.npz", npz_bytes(1)), *FIELDS]))
    assert response.status_code == 201, response.text
    assert (response.json()["name"], response.json()["record_count"]) == ("digits", 10)


def test_a_form_without_a_file_part_is_422_naming_it(server: Server, alice: httpx.Client):
    before = stored_uploads(server)
    response = post_form(alice, multipart(FIELDS))
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == [
        {"type": "missing", "loc": ["body", "file"], "msg": "Field required", "input": None}
    ]
    assert stored_uploads(server) == before


FILE = ("file", "digits.npz", npz_bytes(1))


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (multipart([FILE, *FIELDS], close=False), MULTIPART, 400, "before its closing boundary"),
        (multipart([*FIELDS, FILE])[:-200], MULTIPART, 400, "before its closing boundary"),
        (f"--{BOUNDARY}XX\r\n".encode(), MULTIPART, 400, "not valid multipart/form-data"),
        (multipart([FILE, *FIELDS]), "multipart/form-data", 400, "names no boundary"),
        (b'{"name": "digits"}', "application/json", 415, "send the dataset as multipart"),
        (multipart([FILE, FILE, *FIELDS]), MULTIPART, 400, "more than one 'file' part"),
        (multipart([("name", None, b"x" * 5000), FILE]), MULTIPART, 413, "longer than 4096"),
        (multipart([(f"f{i}", None, b"1") for i in range(20)]), MULTIPART, 413, "more than 16"),
        (multipart([("name", None, b"\xff\xfe"), FILE]), MULTIPART, 400, "not UTF-8"),
        (
            f'--{BOUNDARY}\r\nContent-Disposition: attachment\r\n\r\nx\r\n--{BOUNDARY}--\r\n'
            .encode(),
            MULTIPART,
            400,
            "Content-Disposition: form-data; name=",
        ),
    ],
    ids=[
        "unclosed", "cut-in-file", "broken-boundary", "no-boundary", "json", "two-files",
        "long-field", "many-parts", "not-utf8", "no-name",
    ],
)  # fmt: skip
def test_malformed_forms_are_4xx_with_a_hint_and_leave_nothing(
    server: Server, alice: httpx.Client, body: bytes, content_type: str, status, message
):
    before = stored_uploads(server)
    response = post_form(alice, body, content_type)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert stored_uploads(server) == before


def test_an_upload_over_the_limit_is_refused_while_it_streams(server: Server, alice: httpx.Client):
    limit = int(server.env["PRIVEVO_MAX_UPLOAD_BYTES"])
    body = multipart([*FIELDS, ("file", "big.npz", b"\0" * (limit + 1))])
    before = stored_uploads(server)

    def chunks() -> Iterator[bytes]:  # no Content-Length: only the stream's count can refuse it
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    response = post_form(alice, chunks())
    assert response.status_code == 413, response.text
    assert "larger than the limit of 3 MiB" in response.json()["detail"]
    assert stored_uploads(server) == before


@pytest.fixture(scope="module")
def carol(server: Server) -> Iterator[httpx.Client]:
    """A tenant whose only jobs are the refused ones below: they must leave none behind."""
    with server.client(server.cli("keys", "create", "--tenant", "carol")) as client:
        yield client


def refused_uploads() -> dict[str, tuple[str, bytes, str]]:
    """(file name, content, modality) of data that the default job cannot run on."""
    rng = np.random.default_rng(0)
    rgb = io.BytesIO()
    np.savez(
        rgb, images=rng.integers(0, 256, (20, 64, 64, 3), dtype=np.uint8), labels=np.arange(20) % 2
    )
    words = io.BytesIO()
    with zipfile.ZipFile(words, "w") as archive:
        for name in ("cat_three", "seven"):
            for i in range(3):
                png = io.BytesIO()
                Image.fromarray(np.zeros((28, 28), np.uint8)).save(png, format="PNG")
                archive.writestr(f"{name}/{i}.png", png.getvalue())
    texts = b"".join(b'{"text": "a short review", "label": "%s"}\n' % s for s in (b"a", b"b") * 3)
    return {
        "digits": ("digits.npz", npz_bytes(2), "image"),
        "rgb": ("rgb.npz", rgb.getvalue(), "image"),
        "words": ("words.zip", words.getvalue(), "image"),
        "texts": ("reviews.jsonl", texts, "text"),
    }


@pytest.mark.parametrize(
    ("data", "body", "message"),
    [
        ("digits", {"api": "no-such-api"}, "unknown variation API 'no-such-api'; valid names"),
        ("digits", {"embedding": "minilmm"}, "did you mean 'minilm'"),
        ("digits", {"nn_backend": "annoy"}, "nn_backend: unknown 'annoy'"),
        ("digits", {"api_config": {"image_sise": 28}}, "did you mean 'image_size'"),
        ("digits", {"num_samples": 5}, "raise num_samples to at least 10"),
        ("digits", {"itrations": 2}, "did you mean 'iterations'"),
        ("texts", {}, "'drawtext' works on images but the dataset holds texts"),
        ("rgb", {}, "the dataset's are 64x64 with 3 channel(s)"),
        ("words", {}, "would draw ['cat_three', 'seven'] as words"),
    ],
)
def test_a_job_that_cannot_run_is_422_before_anything_is_reserved(
    carol: httpx.Client, data: str, body: dict, message: str
) -> None:
    filename, content, modality = refused_uploads()[data]
    created = upload(carol, content, filename, modality=modality)
    assert created.status_code == 201, created.text
    dataset_id = created.json()["id"]
    before = carol.get(f"/v1/datasets/{dataset_id}/budget").json()
    response = carol.post("/v1/jobs", json={"dataset_id": dataset_id, "epsilon": 0.5, **body})
    assert response.status_code == 422, response.text
    assert message in response.text
    assert carol.get(f"/v1/datasets/{dataset_id}/budget").json() == before
    assert carol.get("/v1/jobs").json()["items"] == []


def saved(images: np.ndarray, labels: np.ndarray, *, compressed: bool = False, **extra) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, images=images, labels=labels, **extra)
    return buffer.getvalue()


def test_the_same_records_share_one_cap_however_they_are_uploaded(
    alice: httpx.Client, bob: httpx.Client
):
    """Hole 1 of "Privacy II": the budget follows the records, not the bytes of the file."""
    digits = digits_28(6, offset=60)  # 60 records no other test of this module uploads
    images, labels = digits.images, digits.labels
    assert images is not None
    first = upload(alice, saved(images, labels))
    assert first.status_code == 201, first.text
    spent = alice.post("/v1/jobs", json={"dataset_id": first.json()["id"], "epsilon": 1.0})
    assert spent.status_code == 202, spent.text
    order = np.random.default_rng(0).permutation(len(images))
    newcomers = digits_28(2, offset=90)  # 20 records never uploaded before
    assert newcomers.images is not None
    variants = {
        "compressed": saved(images, labels, compressed=True),
        "extra array": saved(images, labels, unused=np.arange(7)),
        "reordered": saved(images[order], labels[order]),
        "first half": saved(images[:30], labels[:30]),
        "second half": saved(images[30:], labels[30:]),
        "overlapping": saved(
            np.concatenate([images[50:], newcomers.images]),
            np.concatenate([labels[50:], newcomers.labels]),
        ),
    }
    for name, content in variants.items():
        again = upload(alice, content)
        assert again.status_code == 201, (name, again.text)
        budget = again.json()["budget"]
        assert (budget["epsilon_cap"], budget["epsilon_reserved"]) == (1.0, 1.0), name
        assert budget["epsilon_remaining"] == 0.0, name
        refused = alice.post("/v1/jobs", json={"dataset_id": again.json()["id"], "epsilon": 1.0})
        assert refused.status_code == 409, (name, refused.text)
    # Another tenant's copy of the same records has a cap of its own, and its answers are
    # those of a first upload: nothing says that someone else holds these records.
    theirs = upload(bob, saved(images, labels))
    assert theirs.status_code == 201, theirs.text
    fresh = {key: value for key, value in theirs.json().items() if key not in ("id", "created_at")}
    mine = {key: value for key, value in first.json().items() if key not in ("id", "created_at")}
    assert fresh == mine
    assert bob.post("/v1/jobs", json={"dataset_id": theirs.json()["id"], "epsilon": 1.0}).is_success


def test_duplicate_records_of_an_upload_are_reported(alice: httpx.Client):
    digits = digits_28(1, offset=100)
    images, labels = digits.images, digits.labels
    assert images is not None
    twice = saved(np.concatenate([images, images[:3]]), np.concatenate([labels, labels[:3]]))
    created = upload(alice, twice)
    assert created.status_code == 201, created.text
    assert (created.json()["record_count"], created.json()["duplicate_records"]) == (13, 3)


def test_a_delta_above_the_servers_maximum_is_422_before_anything_is_reserved(
    alice: httpx.Client, dataset: dict
):
    before = alice.get(f"/v1/datasets/{dataset['id']}/budget").json()
    body = {"dataset_id": dataset["id"], "epsilon": 0.1, "delta": 2e-5}
    response = alice.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert "delta: 2e-05 is above this installation's maximum of 1e-05" in response.text
    assert alice.get(f"/v1/datasets/{dataset['id']}/budget").json() == before


def test_a_cap_above_the_servers_maximum_is_422_and_leaves_nothing(
    server: Server, alice: httpx.Client
):
    before = stored_uploads(server)
    for fields, message in [
        ({"epsilon_cap": "50"}, "epsilon_cap: 50 is above this installation's maximum of 10"),
        ({"delta_cap": "1e-3"}, "delta_cap: 0.001 is above this installation's maximum of 1e-05"),
    ]:
        response = upload(alice, npz_bytes(1, offset=110), **fields)
        assert response.status_code == 422, response.text
        assert message in response.json()["detail"]
    assert stored_uploads(server) == before


def test_record_digests_never_appear_in_any_answer(
    server: Server, db_url: str, alice: httpx.Client, dataset: dict
):
    job = alice.post("/v1/jobs", json={"dataset_id": dataset["id"], "epsilon": 0.01}).json()
    answers = [
        alice.get("/v1/datasets").text,
        alice.get(f"/v1/datasets/{dataset['id']}").text,
        alice.get(f"/v1/datasets/{dataset['id']}/budget").text,
        alice.get("/v1/jobs").text,
        alice.get(f"/v1/jobs/{job['id']}").text,
        alice.get(f"/v1/jobs/{job['id']}/events").text,
        alice.post(f"/v1/jobs/{job['id']}/cancel").text,
        upload(alice, npz_bytes()).text,  # a re-upload joining the budget says nothing either
    ]
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            stored = [
                bytes(digest)
                for digest in connection.execute(
                    text("SELECT digest FROM record_digests WHERE dataset_id = :id"),
                    {"id": dataset["id"]},
                ).scalars()
            ]
    finally:
        engine.dispose()
    assert len(set(stored)) == 60
    forms = {
        form
        for digest in stored
        for form in (
            digest.hex(),
            base64.b64encode(digest).decode(),
            base64.urlsafe_b64encode(digest).decode(),
        )
    }
    shown = "\n".join(answers)
    assert not [form for form in forms if form in shown]
    assert "digest" not in shown


@pytest.fixture(scope="module")
def dave(server: Server) -> Iterator[httpx.Client]:
    """A tenant for the user-level tests: it holds their datasets and jobs only."""
    with server.client(server.cli("keys", "create", "--tenant", "dave")) as client:
        yield client


def patients_npz(**arrays: np.ndarray) -> bytes:
    """20 digits no other test of this module uploads, with ``arrays`` beside them."""
    digits = digits_28(2, offset=140)
    assert digits.images is not None
    return saved(digits.images, digits.labels, **arrays)


def png_zip() -> bytes:
    png = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(png, format="PNG")
    return _zip({"a/1.png": png.getvalue(), "b/2.png": png.getvalue()})


PATIENTS = np.array([f"patient-{i % 7}" for i in range(20)])
NOTES = b"".join(
    b'{"text": "visit note %d", "label": "%s", "user": "u%d"}\n'
    % (i, b"ab"[i % 2 : i % 2 + 1], i % 3)
    for i in range(12)
)


def test_a_user_column_makes_user_level_data_with_budgets_apart_from_record_level_ones(
    dave: httpx.Client,
):
    by_user = upload(dave, patients_npz(patient=PATIENTS), user_column="patient")
    assert by_user.status_code == 201, by_user.text
    shown = by_user.json()
    assert (shown["privacy_unit"], shown["user_column"], shown["record_count"]) == (
        "user",
        "patient",
        20,
    )
    # The owner sees the unit, not how many users there are.
    assert [key for key in shown if "user" in key] == ["user_column"]
    assert dave.get(f"/v1/datasets/{shown['id']}").json()["privacy_unit"] == "user"
    notes = upload(dave, NOTES, "notes.jsonl", modality="text", user_column="user")
    assert notes.status_code == 201, notes.text
    assert (notes.json()["privacy_unit"], notes.json()["user_column"]) == ("user", "user")

    # The same bytes and records without the user column: record-level, a budget apart.
    by_record = upload(dave, patients_npz(patient=PATIENTS))
    assert by_record.status_code == 201, by_record.text
    assert (by_record.json()["privacy_unit"], by_record.json()["user_column"]) == ("record", None)
    assert by_record.json()["sha256"] == shown["sha256"]
    assert by_record.json()["budget"]["epsilon_remaining"] == 1.0

    # A job that does not name its unit runs at the dataset's; spending on one unit's budget
    # leaves the other's alone.
    body = {"dataset_id": shown["id"], "epsilon": 0.6, "iterations": 2, "votes_per_user": 2}
    job = dave.post("/v1/jobs", json=body, headers={"Idempotency-Key": "user-level"})
    assert job.status_code == 202, job.text
    assert job.json()["spec"]["privacy_unit"] == "user"
    # A retry of the same body is the same job (its stored spec names the unit it was given).
    again = dave.post("/v1/jobs", json=body, headers={"Idempotency-Key": "user-level"})
    assert (again.status_code, again.json()["id"]) == (202, job.json()["id"])
    record_job = dave.post("/v1/jobs", json={"dataset_id": by_record.json()["id"], "epsilon": 0.3})
    assert record_job.status_code == 202, record_job.text
    assert record_job.json()["spec"]["privacy_unit"] == "record"
    user_budget = dave.get(f"/v1/datasets/{shown['id']}/budget").json()
    record_budget = dave.get(f"/v1/datasets/{by_record.json()['id']}/budget").json()
    assert (user_budget["epsilon_reserved"], record_budget["epsilon_reserved"]) == (0.6, 0.3)
    assert user_budget["epsilon_remaining"] == pytest.approx(0.4)
    assert record_budget["epsilon_remaining"] == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("filename", "content", "fields", "message"),
    [
        ("digits.npz", patients_npz(), {}, "digits.npz: no 'patient' array to name the users"),
        (
            "digits.npz",
            patients_npz(patient=PATIENTS[:5]),
            {},
            "digits.npz: 'patient' must be a 1-d array of integers or strings, one user per image",
        ),
        ("digits.zip", png_zip(), {}, "image folders and zips name no users"),
        (
            "notes.jsonl",
            NOTES.replace(b', "user": "u1"', b""),
            {"modality": "text", "user_column": "user"},
            "notes.jsonl, record 1: user 'user' must be a non-empty string",
        ),
        ("digits.npz", patients_npz(patient=PATIENTS), {"user_column": "p" * 256}, "user_column"),
    ],
    ids=["missing", "short", "zip", "jsonl-record-without-user", "too-long"],
)
def test_a_bad_user_column_is_422_and_stores_nothing(
    server: Server, dave: httpx.Client, filename, content, fields, message
):
    before = (stored_uploads(server), dave.get("/v1/datasets").json())
    response = upload(dave, content, filename, **{"user_column": "patient", **fields})
    assert response.status_code == 422, response.text
    assert message in response.text
    assert (stored_uploads(server), dave.get("/v1/datasets").json()) == before


def test_a_job_of_the_other_unit_is_422_before_anything_is_reserved(dave: httpx.Client):
    # Uploads that join the budgets of the first test's datasets (or make them, alone).
    by_user = upload(dave, patients_npz(patient=PATIENTS), user_column="patient").json()
    by_record = upload(dave, patients_npz(patient=PATIENTS)).json()
    for dataset, unit, message in [
        (by_user, "record", "the records name their users, so the unit of privacy is one user"),
        (by_record, "user", "privacy_unit: 'user' needs the records' users"),
    ]:
        before = (dave.get(f"/v1/datasets/{dataset['id']}/budget").json(), dave.get("/v1/jobs"))
        body = {"dataset_id": dataset["id"], "epsilon": 0.1, "privacy_unit": unit}
        response = dave.post("/v1/jobs", json=body)
        assert response.status_code == 422, response.text
        assert message in response.json()["detail"]
        after = (dave.get(f"/v1/datasets/{dataset['id']}/budget").json(), dave.get("/v1/jobs"))
        assert after[0] == before[0]
        assert after[1].json() == before[1].json()


def test_a_column_name_longer_than_the_database_stores_is_422(server: Server, alice: httpx.Client):
    # A 256-character column the file really has: it used to pass validation, then fail to be
    # stored (PostgreSQL: a 500) or be stored whole (SQLite).
    column = "t" * 256
    content = f"{column},label\nhello,a\nworld,b\n".encode()
    before = stored_uploads(server)
    response = upload(alice, content, "long.csv", modality="text", text_column=column)
    assert response.status_code == 422, response.text
    assert "text_column" in response.text
    assert stored_uploads(server) == before
