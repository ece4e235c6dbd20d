"""The run record: the seed is fixed once per run, and the record says where the data came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pe_core.checkpoint import CheckpointError
from pe_core.config import PeJob
from pe_core.job import RUN_FORMAT, RUN_RECORD, read_run_record, record_run, run_started


def test_the_first_start_records_the_seed_and_later_ones_read_it_back(tmp_path: Path) -> None:
    job = PeJob(iterations=2)
    assert read_run_record(tmp_path) is None
    first = record_run(tmp_path, job, fresh_seed=11, source={"dataset_id": "ds_1"})
    assert first.seed == 11 and first.iterations == 2
    again = record_run(tmp_path, job, fresh_seed=99, source={"dataset_id": "ds_1"})
    assert again.seed == 11
    record = json.loads((tmp_path / RUN_RECORD).read_text())
    assert record == {
        "format": RUN_FORMAT,
        "job": first.model_dump(mode="json"),
        "source": {"dataset_id": "ds_1"},
    }


def test_a_seed_in_the_job_wins_over_a_fresh_one(tmp_path: Path) -> None:
    assert record_run(tmp_path, PeJob(seed=5), fresh_seed=11, source={}).seed == 5


@pytest.mark.parametrize("content", ["{not json", '{"seed": 3}', '{"format": 1, "job": 3}'])
def test_an_unreadable_record_is_a_clear_error(tmp_path: Path, content: str) -> None:
    (tmp_path / RUN_RECORD).write_text(content)
    with pytest.raises(CheckpointError, match="run record"):
        read_run_record(tmp_path)


def test_a_run_has_started_once_it_has_a_checkpoint_or_a_release(tmp_path: Path) -> None:
    assert not run_started(tmp_path)
    record_run(tmp_path, PeJob(), fresh_seed=1, source={})
    assert not run_started(tmp_path)  # a record alone: nothing to keep
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "iter_000.json").write_text("{}")
    assert run_started(tmp_path)
