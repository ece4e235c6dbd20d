"""The synchronous client against a real `privevo serve` (no worker: jobs stay queued)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from privevo_client import (
    BudgetExceeded,
    Client,
    Conflict,
    Dataset,
    InvalidRequest,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)

from tests.conftest import digits_28
from tests.sdk.conftest import write_digits_npz
from tests.servers import Server


def test_upload_get_list_budget_delete(alice: Client, tmp_path: Path):
    first = alice.datasets.upload(write_digits_npz(tmp_path / "digits.npz", 3), epsilon_cap=2.0)
    assert isinstance(first, Dataset)
    assert (first.name, first.modality, first.record_count) == ("digits", "image", 30)
    assert first.labels == [str(c) for c in range(10)]
    assert first.budget.epsilon_cap == 2.0
    assert first.budget.delta_cap == 1e-5
    assert first.budget.epsilon_remaining == 2.0
    assert alice.datasets.get(first.id) == first

    second = alice.datasets.upload(
        write_digits_npz(tmp_path / "more.npz", 3, offset=10), name="more", epsilon_cap=1.0
    )
    listed = [d.id for d in alice.datasets.list(page_size=1)]  # one page per dataset
    assert {first.id, second.id} <= set(listed)
    assert len(listed) == len(set(listed))

    budget = alice.datasets.budget(second.id)
    assert (budget.epsilon_cap, budget.epsilon_remaining, budget.active_jobs) == (1.0, 1.0, 0)

    alice.datasets.delete(second.id)
    with pytest.raises(NotFound) as missing:
        alice.datasets.get(second.id)
    assert missing.value.status == 404
    assert second.id not in {d.id for d in alice.datasets.list()}


def test_an_upload_may_carry_its_expiry(alice: Client, tmp_path: Path):
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    dataset = alice.datasets.upload(
        write_digits_npz(tmp_path / "expiring.npz", 2, offset=30), epsilon_cap=1.0, expires_at=when
    )
    assert dataset.expires_at == when
    assert alice.datasets.get(dataset.id).expires_at == when
    data = tmp_path / "expiring.npz"
    with pytest.raises(ValueError, match="time zone"):  # said before anything is sent
        alice.datasets.upload(data, epsilon_cap=1.0, expires_at=when.replace(tzinfo=None))
    with pytest.raises(InvalidRequest, match="future"):
        alice.datasets.upload(data, epsilon_cap=1.0, expires_at=when - timedelta(days=60))


def test_folder_upload_is_zipped_on_the_fly(alice: Client, tmp_path: Path):
    digits = digits_28(2, offset=20)
    assert digits.images is not None
    folder = tmp_path / "handwritten"
    for i, (image, label) in enumerate(zip(digits.images, digits.labels, strict=True)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[:, :, 0]).save(folder / str(label) / f"{i}.png")
    (folder / "3" / ".DS_Store").write_bytes(b"junk a Mac leaves behind")

    dataset = alice.datasets.upload(folder, epsilon_cap=1.0)

    assert (dataset.name, dataset.modality, dataset.record_count) == ("handwritten", "image", 20)
    assert dataset.labels == [str(c) for c in range(10)]


def test_jobs_create_get_list_events_cancel(alice: Client, tmp_path: Path):
    dataset = alice.datasets.upload(
        write_digits_npz(tmp_path / "d.npz", 2, offset=30), epsilon_cap=1.0
    )
    job = alice.jobs.create(dataset, epsilon=0.25, iterations=1, num_samples=20, seed=3)
    assert (job.status, job.iteration, job.iterations) == ("queued", 0, 1)
    assert (job.epsilon_reserved, job.delta_reserved) == (0.25, 1e-6)
    assert job.spec["num_samples"] == 20 and job.spec["seed"] == 3
    assert alice.jobs.get(job.id).id == job.id
    assert job.id in {j.id for j in alice.jobs.list(page_size=1)}
    (created,) = alice.jobs.events(job.id)  # no worker: nothing runs
    assert (created.kind, created.payload) == ("created", {"epsilon": 0.25, "delta": 1e-6})
    assert alice.datasets.budget(dataset.id).epsilon_reserved == pytest.approx(0.25)

    assert job.cancel() is job
    assert job.status == "canceled" and job.done
    assert alice.jobs.cancel(job.id).status == "canceled"  # a final job comes back unchanged
    assert alice.datasets.budget(dataset.id).epsilon_remaining == pytest.approx(1.0)  # refunded
    later = list(alice.jobs.events(job.id, after=created.id))
    assert later and all(event.id > created.id for event in later)
    with pytest.raises(Conflict, match="canceled"):
        job.download(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_same_idempotency_key_reserves_once(alice: Client, tmp_path: Path):
    dataset = alice.datasets.upload(
        write_digits_npz(tmp_path / "d.npz", 2, offset=40), epsilon_cap=1.0
    )
    first = alice.jobs.create(dataset.id, epsilon=0.4, num_samples=10, idempotency_key="k-1")
    again = alice.jobs.create(dataset.id, epsilon=0.4, num_samples=10, idempotency_key="k-1")
    other = alice.jobs.create(dataset.id, epsilon=0.4, num_samples=10)  # a fresh key
    assert again.id == first.id != other.id
    assert alice.datasets.budget(dataset.id).epsilon_reserved == pytest.approx(0.8)


def test_budget_exceeded_carries_the_servers_message(alice: Client, tmp_path: Path):
    dataset = alice.datasets.upload(
        write_digits_npz(tmp_path / "d.npz", 2, offset=50), epsilon_cap=1.0
    )
    alice.jobs.create(dataset, epsilon=0.6, iterations=2, num_samples=10)
    with pytest.raises(BudgetExceeded) as refused:
        alice.jobs.create(dataset, epsilon=0.6, iterations=2, num_samples=10)
    assert refused.value.status == 409
    assert "left" in refused.value.detail  # the server's own words, e.g. "0.4 left"
    assert refused.value.detail in str(refused.value)
    assert isinstance(refused.value, Conflict)


def test_other_tenants_dataset_is_not_found(alice: Client, bob: Client, tmp_path: Path):
    dataset = alice.datasets.upload(
        write_digits_npz(tmp_path / "d.npz", 1, offset=60), epsilon_cap=1.0
    )
    job = alice.jobs.create(dataset, epsilon=0.1, num_samples=10)
    for attempt in (
        lambda: bob.datasets.get(dataset.id),
        lambda: bob.datasets.budget(dataset.id),
        lambda: bob.datasets.delete(dataset.id),
        lambda: bob.jobs.create(dataset.id, epsilon=0.1),
        lambda: bob.jobs.get(job.id),
        lambda: bob.jobs.cancel(job.id),
    ):
        with pytest.raises(NotFound) as hidden:
            attempt()
        assert hidden.value.status == 404 and hidden.value.detail
    assert list(bob.datasets.list()) == []
    assert alice.jobs.get(job.id).status == "queued"


def test_bad_key_is_unauthorized(server: Server):
    with (
        Client(server.url, "pev_not-a-real-key") as stranger,
        pytest.raises(Unauthorized) as refused,
    ):
        next(stranger.datasets.list())
    assert refused.value.status == 401
    assert "Bearer" in refused.value.detail


def test_invalid_requests_raise_with_the_servers_reason(alice: Client, tmp_path: Path):
    dataset = alice.datasets.upload(
        write_digits_npz(tmp_path / "d.npz", 1, offset=70), epsilon_cap=1.0
    )
    with pytest.raises(InvalidRequest) as negative:
        alice.jobs.create(dataset, epsilon=-1)
    assert negative.value.status == 422 and "epsilon" in negative.value.detail
    with pytest.raises(InvalidRequest, match="epsilom"):
        alice.jobs.create(dataset, epsilon=0.1, epsilom=1)
    with pytest.raises(InvalidRequest, match="no_privacy") as private_only:
        alice.jobs.create(dataset, epsilon=0.1, no_privacy=True)
    assert private_only.value.status == 400

    program = tmp_path / "data.exe"
    program.write_bytes(b"MZ")
    with pytest.raises(ValueError, match="modality"):
        alice.datasets.upload(program, epsilon_cap=1.0)
    with pytest.raises(InvalidRequest, match=r"\.exe") as unsupported:
        alice.datasets.upload(program, modality="image", epsilon_cap=1.0)
    assert unsupported.value.status == 415


def test_upload_over_the_limit_is_payload_too_large(alice: Client, tmp_path: Path):
    big = tmp_path / "big.npz"
    big.write_bytes(np.zeros(4 * 1024 * 1024, np.uint8).tobytes())  # the test server takes 3 MiB
    with pytest.raises(PayloadTooLarge, match="limit") as refused:
        alice.datasets.upload(big, epsilon_cap=1.0)
    assert refused.value.status == 413


def test_wait_reports_progress_and_raises_for_a_canceled_job(
    alice: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    dataset = alice.datasets.upload(
        write_digits_npz(tmp_path / "d.npz", 1, offset=80), epsilon_cap=1.0
    )
    job = alice.jobs.create(dataset, epsilon=0.5, iterations=3, num_samples=10)
    with pytest.raises(TimeoutError, match="queued"):
        job.wait(timeout=0.2, poll_interval=0.05)
    alice.jobs.cancel(job.id)
    with pytest.raises(JobFailed) as ended:
        job.wait(poll_interval=0.05)
    assert ended.value.status == "canceled" and ended.value.job is job
    assert job.wait(raise_on_failure=False, progress=False).status == "canceled"
    lines = capsys.readouterr().err.splitlines()  # not a terminal: one line per change
    assert lines[0].startswith(f"job {job.id} [")
    assert lines[0].endswith("0/3 - eps 0/0.5 eta unknown queued")
    assert lines[-1].endswith("canceled")
    assert len(lines) == 2


def test_a_user_column_uploads_user_level_data(alice: Client, tmp_path: Path):
    digits = digits_28(2, offset=150)
    path = tmp_path / "scans.npz"
    np.savez(path, images=digits.images, labels=digits.labels, patient=np.arange(20) % 4)
    by_user = alice.datasets.upload(path, epsilon_cap=1.0, user_column="patient")
    assert (by_user.privacy_unit, by_user.user_column) == ("user", "patient")
    assert alice.datasets.get(by_user.id) == by_user
    by_record = alice.datasets.upload(path, epsilon_cap=1.0)  # the same file, a budget apart
    assert (by_record.privacy_unit, by_record.user_column) == ("record", None)
    job = alice.jobs.create(by_user, epsilon=0.4, iterations=1, num_samples=10)
    assert job.spec["privacy_unit"] == "user"
    assert alice.datasets.budget(by_record.id).epsilon_remaining == 1.0
    job.cancel()
    with pytest.raises(InvalidRequest, match="no 'visitor' array to name the users") as bad:
        alice.datasets.upload(path, epsilon_cap=1.0, user_column="visitor")
    assert bad.value.status == 422


def test_held_out_data_is_uploaded_without_a_budget(alice: Client, tmp_path: Path):
    data = alice.datasets.upload(
        write_digits_npz(tmp_path / "mine.npz", 2, offset=160), epsilon_cap=1.0
    )
    held = alice.datasets.upload(
        write_digits_npz(tmp_path / "held.npz", 2, offset=170), role="heldout"
    )
    assert (held.role, held.budget, data.role) == ("heldout", None, "private")
    assert alice.datasets.get(held.id) == held
    with pytest.raises(NotFound, match="no privacy budget"):
        alice.datasets.budget(held.id)
    # Refused before anything is sent: caps on held-out data, private data without one.
    with pytest.raises(ValueError, match="held-out data has no privacy budget"):
        alice.datasets.upload(tmp_path / "held.npz", role="heldout", epsilon_cap=1.0)
    with pytest.raises(ValueError, match="pass epsilon_cap"):
        alice.datasets.upload(tmp_path / "held.npz")
    with pytest.raises(InvalidRequest, match="never a job's private input"):
        alice.jobs.create(held, epsilon=0.5)
    job = alice.jobs.create(data, epsilon=0.5, num_samples=20, eval_dataset=held)
    assert (job.eval_dataset_id, job.spec["eval_dataset_id"]) == (held.id, held.id)
    with pytest.raises(Conflict, match="once it has succeeded"):
        job.evaluation()
    with pytest.raises(Conflict, match="once it has succeeded"):
        job.evaluation_report(tmp_path / "report.html")
    job.cancel()


def test_an_audit_job_is_created_and_its_report_waits_for_it(
    alice: Client, bob: Client, tmp_path: Path
):
    data = alice.datasets.upload(
        write_digits_npz(tmp_path / "stand-in.npz", 2, offset=162), epsilon_cap=1.0
    )
    job = alice.jobs.create(data, epsilon=0.5, num_samples=20, audit=True)
    assert job.spec["audit"] == {"canaries": 2000, "guesses": 200, "seed": None}
    with pytest.raises(Conflict, match="once it has succeeded"):
        job.audit()
    with pytest.raises(NotFound):
        bob.jobs.audit(job.id)
    job.cancel()
    plain = alice.jobs.create(data, epsilon=0.2, num_samples=20)
    with pytest.raises(NotFound, match="is not an audit"):
        plain.audit()
    plain.cancel()
    with pytest.raises(InvalidRequest, match="guesses: need 1 to 10"):
        alice.jobs.create(data, epsilon=0.2, audit={"canaries": 10, "guesses": 20})
