"""A job's files kept in the storage, for workers that share no disk: a job stopped on one
worker resumes on another from what the storage holds, and no worker keeps a private file."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from service.storage import LocalStorage
from tests.workers.support import ITERATIONS, Home, exited_process, hold, worker_context
from workers import jobs
from workers.jobfiles import JobFiles, clear_orphans
from workers.lease import process_name


def test_a_job_stopped_on_one_worker_resumes_on_another_from_the_storage(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = home.new_job(insecure_test_noise=True, seed=3)
    job = home.job(job_id)
    prefix = jobs.job_prefix(job.dataset_id, job.id)
    first, second = LocalStorage(tmp_path / "first"), LocalStorage(tmp_path / "second")
    recorded = jobs.JobProgress.on_iteration

    def lose_the_database_after_iteration_1(self: jobs.JobProgress, report) -> None:
        recorded(self, report)
        if report.iteration == 1:
            raise OperationalError("UPDATE jobs", {}, ConnectionError("the database went away"))

    with monkeypatch.context() as patch:
        patch.setattr(jobs.JobProgress, "on_iteration", lose_the_database_after_iteration_1)
        with pytest.raises(OperationalError):
            jobs.run_job(worker_context(home, work=first), job_id)
    assert home.job(job_id).status == "running"
    assert first.list(prefix) == []  # nothing private stays on the first worker
    stored = set(home.storage.list(prefix))
    assert {f"{prefix}/state/run.json", f"{prefix}/state/checkpoints/iter_001.json"} <= stored
    assert f"{prefix}/state/checkpoints/iter_002.json" not in stored
    # A delivery restores the latest checkpoint only: the run resumes from that one alone.
    files = JobFiles(home.sessions, home.storage, prefix, tmp_path / "look", job.dataset_id)
    files.restore()
    restored = {p.relative_to(files.folder).as_posix() for p in files.folder.rglob("*.*")}
    assert {"state/run.json", "out/samples/iter_01.png"} <= restored
    checkpoints = {name for name in restored if name.startswith("state/checkpoints/")}
    assert checkpoints == {"state/checkpoints/iter_001.npz", "state/checkpoints/iter_001.json"}
    files.remove()

    assert jobs.run_job(worker_context(home, work=second), job_id) == "succeeded"
    assert second.list(prefix) == []
    # It went on from iteration 1's checkpoint with the recorded seed: no iteration twice,
    # each release once.
    assert [event["iteration"] for event in home.events(job_id, "iteration")] == [0, 1, 2]
    assert home.events(job_id, "started") == [{"seed": 3}, {"seed": 3}]
    releases = home.releases(job_id)
    assert [r.mechanism for r in releases] == ["iteration-1/histogram", "iteration-2/histogram"]
    assert {r.storage_path for r in releases} <= set(home.storage.list(prefix))
    published = set(home.storage.list(jobs.result_prefix(job_id)))
    # The pictures of the first worker's iterations came back from the storage.
    samples = {f"results/{job_id}/samples/iter_{t:02d}.png" for t in range(ITERATIONS + 1)}
    assert samples <= published


def test_a_killed_deliverys_files_are_cleared_once_no_live_process_holds_the_job(
    home: Home, tmp_path: Path
) -> None:
    jobs_here = {name: home.new_job(insecure_test_noise=True, seed=3) for name in "abcd"}
    root = tmp_path / "work"
    for name, job_id in jobs_here.items():
        folder = root / "datasets" / "ds" / "jobs" / job_id
        (folder / "state").mkdir(parents=True)
        (folder / "state" / "run.json").write_text("{}")
        if name != "c":  # c's delivery is restoring into its folder just now
            for path in [*folder.rglob("*"), folder]:
                os.utime(path, (time.time() - 120, time.time() - 120))
    hold(home, jobs_here["b"], f"{process_name()}#live")
    hold(home, jobs_here["d"], f"{exited_process()}#killed")
    cleared = clear_orphans(home.sessions, root, idle_s=60)
    assert sorted(cleared) == sorted([jobs_here["a"], jobs_here["d"]])
    left = {path.name for path in (root / "datasets" / "ds" / "jobs").iterdir()}
    assert left == {jobs_here["b"], jobs_here["c"]}
