"""What a dead gateway leaves of an upload: its folder, swept once no request holds it and no
dataset keeps it, and no validator process (it dies with the gateway)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path

import pytest

from service.storage import LocalStorage, copy_object, create_storage
from service.uploads import RECEIVING, receiving, sweep_orphan_uploads
from tests.servers import S3Server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


def nothing_in_use(keys: Collection[str]) -> set[str]:
    return set()


def store(storage: LocalStorage, key: str) -> None:
    with storage.open_write(key) as handle:
        handle.write(b"records")


def test_a_folder_is_kept_while_its_request_runs_or_a_dataset_keeps_it(
    storage: LocalStorage,
) -> None:
    with receiving(storage, "uploads/live"):
        store(storage, "uploads/live/data.csv")
        assert (storage.root / "uploads/live" / RECEIVING).is_file()
        assert sweep_orphan_uploads(storage, nothing_in_use) == []
    assert not (storage.root / "uploads/live" / RECEIVING).exists()  # the dataset's folder
    kept = sweep_orphan_uploads(storage, lambda keys: set(keys), grace_s=0.0)
    assert kept == [] and storage.list("uploads/live") == ["uploads/live/data.csv"]
    # Its dataset deleted (but the gateway died before deleting the files): swept.
    assert sweep_orphan_uploads(storage, nothing_in_use, grace_s=0.0) == ["uploads/live"]
    assert not (storage.root / "uploads/live").exists()


def test_a_folder_without_a_lock_is_swept_once_it_is_old(storage: LocalStorage) -> None:
    store(storage, "uploads/legacy/data.csv")
    assert sweep_orphan_uploads(storage, nothing_in_use) == []  # it may be starting
    assert sweep_orphan_uploads(storage, nothing_in_use, grace_s=0.0) == ["uploads/legacy"]
    store(storage, "uploads/direct.npz")  # a file, not an upload folder: not the sweep's
    assert sweep_orphan_uploads(storage, nothing_in_use, grace_s=0.0) == []


@pytest.mark.usefixtures("s3_credentials")
def test_with_a_remote_store_the_folders_are_staging_copies(
    storage: LocalStorage, s3_server: S3Server
) -> None:
    bucket = s3_server.new_bucket()
    remote = create_storage("s3", bucket=bucket, endpoint_url=s3_server.url)
    # Two gateways died after copying an upload to the store: one after committing its
    # dataset (only the staging copy is left to delete), one before (the store's copy too).
    for name in ("committed", "uncommitted"):
        store(storage, f"uploads/{name}/data.csv")
        copy_object(storage, remote, f"uploads/{name}/data.csv")

    def in_use(keys: Collection[str]) -> set[str]:
        return {key for key in keys if key.startswith("uploads/committed/")}

    assert sweep_orphan_uploads(storage, in_use, store=remote, grace_s=0.0) == [
        "uploads/uncommitted"
    ]
    assert storage.list() == []
    assert remote.list() == ["uploads/committed/data.csv"]


def test_the_folder_of_a_killed_request_is_swept(storage: LocalStorage) -> None:
    # A request stopped mid-upload (a half-written temporary file), then killed.
    code = (
        "import os, signal, sys\n"
        "from service.storage import LocalStorage\n"
        "from service.uploads import receiving\n"
        "storage = LocalStorage(sys.argv[1])\n"
        "with receiving(storage, 'uploads/cut'):\n"
        "    with storage.open_write('uploads/cut/data.npz') as handle:\n"
        "        handle.write(b'x' * 4096)\n"
        "        handle.flush()\n"
        "        os.kill(os.getpid(), signal.SIGSTOP)\n"
    )
    request = subprocess.Popen([sys.executable, "-c", code, str(storage.root)], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not list((storage.root / "uploads/cut").glob(".data.npz.*.tmp")):
            assert time.monotonic() < deadline and request.poll() is None
            time.sleep(0.05)
        time.sleep(0.2)
        assert sweep_orphan_uploads(storage, nothing_in_use) == []  # held
    finally:
        request.kill()
        request.wait()
    assert sweep_orphan_uploads(storage, nothing_in_use) == ["uploads/cut"]
    assert list(storage.root.rglob("*")) == [storage.root / "uploads"]


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_the_validator_dies_with_its_gateway(tmp_path: Path) -> None:
    # The upload is a pipe no one closes: validation reads it forever, so the validator can
    # only end by dying with its parent (before the fix, it outlived it by 25 minutes).
    upload = tmp_path / "data.jsonl"
    os.mkfifo(upload)
    writer = os.open(upload, os.O_RDWR)
    code = (
        "import os, signal, sys, threading, time, multiprocessing\n"
        "from service.uploads import validate_in_child_process\n"
        "def kill():\n"
        "    while not multiprocessing.active_children():\n"
        "        time.sleep(0.05)\n"
        "    time.sleep(3)\n"  # past the validator's start: it is reading the upload
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "threading.Thread(target=kill, daemon=True).start()\n"
        "validate_in_child_process(sys.argv[1], modality='text')\n"
    )
    gateway = subprocess.Popen([sys.executable, "-c", code, str(upload)], cwd=REPO)
    try:
        children: set[int] = set()
        while gateway.poll() is None:
            children |= set(children_of(gateway.pid))
            time.sleep(0.05)
        assert gateway.returncode == -signal.SIGKILL
        assert children, "the validator never started"
        deadline = time.monotonic() + 10
        while [pid for pid in children if alive(pid)]:
            assert time.monotonic() < deadline, [pid for pid in children if alive(pid)]
            time.sleep(0.1)
    finally:
        os.close(writer)
        gateway.kill()
        gateway.wait()
