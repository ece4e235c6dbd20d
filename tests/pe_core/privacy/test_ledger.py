"""The release ledger: durability format, crash tolerance, exactly-once noisy releases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pe_core.privacy import (
    CorruptLedgerError,
    DpEvent,
    DuplicateReleaseError,
    JsonlLedger,
    Ledger,
    LedgerEntry,
    ReleaseIntegrityError,
    ReleaseStore,
    release_digest,
)

VOTES = DpEvent("discrete_gaussian", 6.416, count=10, description="iteration 1 votes, k=10")


def entry(key: str, iteration: int = 1, event: DpEvent = VOTES) -> LedgerEntry:
    values = np.arange(5, dtype=np.int64) + iteration
    return LedgerEntry(key, iteration, event, release_digest(values), f"{key}.npz")


def never_draw():
    raise AssertionError("draw() must not be called for a recorded release")


class CountingDraw:
    def __init__(self, values):
        self.values = np.asarray(values)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.values


class FlakyLedger:
    """An in-memory ledger whose first append fails, as if the process died mid-append."""

    def __init__(self):
        self._entries: list[LedgerEntry] = []
        self.fail_next = True

    def entries(self):
        return list(self._entries)

    def get(self, key):
        return next((e for e in self._entries if e.key == key), None)

    def append(self, entry):
        if self.fail_next:
            self.fail_next = False
            raise OSError("simulated crash before the ledger entry was written")
        if self.get(entry.key) is not None:
            raise DuplicateReleaseError(entry.key)
        self._entries.append(entry)


def test_entries_round_trip_through_the_file(tmp_path):
    path = tmp_path / "ledger.jsonl"
    odd = DpEvent("discrete_gaussian", 0.1 + 0.2, sensitivity=2, description="labels — ü")
    first, second = entry("iter-1/votes"), entry("labels", iteration=0, event=odd)
    ledger = JsonlLedger(path)
    ledger.append(first)
    ledger.append(second)
    reopened = JsonlLedger(path)
    assert reopened.entries() == [first, second]
    assert reopened.get("labels") == second and reopened.get("labels").event.sigma == 0.1 + 0.2
    assert reopened.get("missing") is None
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["version"] for line in lines] == [1, 1]
    assert isinstance(reopened, Ledger)


def test_missing_file_is_an_empty_ledger(tmp_path):
    assert JsonlLedger(tmp_path / "none.jsonl").entries() == []


def test_duplicate_key_is_refused(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = JsonlLedger(path)
    ledger.append(entry("iter-1/votes"))
    before = path.read_bytes()
    with pytest.raises(DuplicateReleaseError, match="iter-1/votes"):
        ledger.append(entry("iter-1/votes", iteration=2))
    assert path.read_bytes() == before


def test_torn_last_line_is_ignored_then_replaced(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = JsonlLedger(path)
    ledger.append(entry("a"))
    with open(path, "ab") as file:  # a crash in the middle of writing the next entry
        file.write(b'{"version": 1, "key": "b", "itera')
    assert [e.key for e in ledger.entries()] == ["a"]
    ledger.append(entry("b"))
    assert [e.key for e in JsonlLedger(path).entries()] == ["a", "b"]
    assert path.read_bytes().count(b"\n") == 2


@pytest.mark.parametrize(
    "bad_line",
    [b"not json", b"", b'{"version": 2}', b"[1, 2]", b'{"version": 1, "key": "x"}'],
)
def test_corrupt_complete_lines_are_rejected(tmp_path, bad_line):
    path = tmp_path / "ledger.jsonl"
    ledger = JsonlLedger(path)
    ledger.append(entry("a"))
    good = path.read_bytes()
    path.write_bytes(good + bad_line + b"\n" + good.replace(b'"key":"a"', b'"key":"c"'))
    with pytest.raises(CorruptLedgerError, match=r"ledger\.jsonl:2"):
        ledger.entries()
    with pytest.raises(CorruptLedgerError):
        ledger.append(entry("d"))


def test_corrupt_event_values_are_rejected(tmp_path):
    path = tmp_path / "ledger.jsonl"
    JsonlLedger(path).append(entry("a"))
    path.write_bytes(path.read_bytes().replace(b'"sigma":6.416', b'"sigma":-1'))
    with pytest.raises(CorruptLedgerError, match="sigma"):
        JsonlLedger(path).entries()


def test_entry_validation():
    with pytest.raises(ValueError, match="key"):
        entry("")
    with pytest.raises(ValueError, match="iteration"):
        entry("a", iteration=-1)
    with pytest.raises(ValueError, match="sha256"):
        LedgerEntry("a", 1, VOTES, "ABC", None)


def test_release_draws_once_and_reuses(tmp_path):
    ledger = JsonlLedger(tmp_path / "ledger.jsonl")
    store = ReleaseStore(ledger, tmp_path / "releases")
    draw = CountingDraw(np.array([3, -1, 0, 7], dtype=np.int32))
    first = store.release("iter-1/votes", 1, VOTES, draw)
    assert draw.calls == 1
    assert first.dtype == np.int64 and first.tolist() == [3, -1, 0, 7]
    assert not first.flags.writeable
    recorded = ledger.get("iter-1/votes")
    assert recorded is not None and recorded.event == VOTES
    assert recorded.release_sha256 == release_digest(first)
    assert (store.directory / recorded.release_path).is_file()
    # The same process retrying, and a fresh process resuming, get the recorded vector back.
    again = store.release("iter-1/votes", 1, VOTES, never_draw)
    resumed = ReleaseStore(JsonlLedger(tmp_path / "ledger.jsonl"), tmp_path / "releases")
    reloaded = resumed.release("iter-1/votes", 1, VOTES, never_draw)
    assert np.array_equal(again, first) and np.array_equal(reloaded, first)
    assert not reloaded.flags.writeable
    assert len(ledger.entries()) == 1


def test_description_may_change_but_the_event_may_not(tmp_path):
    store = ReleaseStore(JsonlLedger(tmp_path / "ledger.jsonl"), tmp_path / "releases")
    store.release("k", 1, VOTES, CountingDraw([1, 2]))
    reworded = DpEvent("discrete_gaussian", VOTES.sigma, count=VOTES.count, description="votes")
    assert store.release("k", 1, reworded, never_draw).tolist() == [1, 2]
    other_sigma = DpEvent("discrete_gaussian", 7.0, count=VOTES.count)
    with pytest.raises(ReleaseIntegrityError, match="iteration 1"):
        store.release("k", 1, other_sigma, never_draw)
    with pytest.raises(ReleaseIntegrityError, match="iteration 2"):
        store.release("k", 2, VOTES, never_draw)


def test_altered_release_file_is_refused(tmp_path):
    ledger = JsonlLedger(tmp_path / "ledger.jsonl")
    store = ReleaseStore(ledger, tmp_path / "releases")
    store.release("k", 1, VOTES, CountingDraw([5, 6, 7]))
    path = store.directory / ledger.get("k").release_path
    with np.load(path) as npz:
        meta = npz["meta"]
    np.savez(path, values=np.array([5, 6, 8], dtype=np.int64), meta=meta)
    with pytest.raises(ReleaseIntegrityError, match="sha256"):
        store.release("k", 1, VOTES, never_draw)
    path.write_bytes(b"not an npz file")
    with pytest.raises(ReleaseIntegrityError, match="unreadable"):
        store.release("k", 1, VOTES, never_draw)
    path.unlink()
    with pytest.raises(ReleaseIntegrityError, match="missing"):
        store.release("k", 1, VOTES, never_draw)


def test_vector_stored_before_a_crash_is_reused_not_redrawn(tmp_path):
    ledger = FlakyLedger()
    store = ReleaseStore(ledger, tmp_path)
    with pytest.raises(OSError, match="simulated crash"):
        store.release("k", 3, VOTES, CountingDraw([4, 4, 2]))
    assert ledger.entries() == []
    values = store.release("k", 3, VOTES, never_draw)
    assert values.tolist() == [4, 4, 2]
    assert ledger.get("k").release_sha256 == release_digest(values)
    with pytest.raises(ReleaseIntegrityError, match="iteration 3"):
        ReleaseStore(FlakyLedger(), tmp_path).release("k", 4, VOTES, never_draw)


def test_atomic_write_leaves_only_the_release(tmp_path, monkeypatch):
    directory = tmp_path / "releases"
    ledger = JsonlLedger(tmp_path / "ledger.jsonl")
    store = ReleaseStore(ledger, directory)
    store.release("a", 1, VOTES, CountingDraw([1]))
    store.release("b", 1, VOTES, CountingDraw([2]))
    assert sorted(p.suffix for p in directory.iterdir()) == [".npz", ".npz"]

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="disk full"):
        store.release("c", 1, VOTES, CountingDraw([3]))
    assert len(list(directory.iterdir())) == 2
    assert ledger.get("c") is None


def test_only_integer_vectors_are_released(tmp_path):
    ledger = JsonlLedger(tmp_path / "ledger.jsonl")
    store = ReleaseStore(ledger, tmp_path / "releases")
    with pytest.raises(TypeError, match="integer"):
        store.release("k", 1, VOTES, CountingDraw([0.5, 1.5]))
    with pytest.raises(TypeError):
        store.release("k", 1, VOTES, CountingDraw(np.array([2**63], dtype=np.uint64)))
    assert ledger.entries() == []


def test_bad_requests_are_refused_before_drawing(tmp_path):
    store = ReleaseStore(JsonlLedger(tmp_path / "ledger.jsonl"), tmp_path / "releases")
    for key, iteration in (("", 1), ("k", -1), ("k", 1.0)):
        with pytest.raises(ValueError):
            store.release(key, iteration, VOTES, never_draw)
    assert list(store.directory.iterdir()) == []


def test_file_names_are_safe_and_distinct(tmp_path):
    ledger = JsonlLedger(tmp_path / "ledger.jsonl")
    store = ReleaseStore(ledger, tmp_path / "releases")
    for key in ("iter 3/votes:ü", "iter 3_votes:ü", "../../escape"):
        store.release(key, 3, VOTES, CountingDraw([1]))
    names = [e.release_path for e in ledger.entries()]
    assert len(set(names)) == 3
    assert all("/" not in name and not name.startswith(".") for name in names)
    assert len(list((tmp_path / "releases").iterdir())) == 3
