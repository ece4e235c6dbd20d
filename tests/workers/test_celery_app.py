"""The Celery app's configuration for long jobs, its queues, and its embedded broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pe_core.config import PeJob
from service.settings import Settings
from tests.workers.support import REDIS_URL, REPO


def test_long_job_settings(celery_app_module: ModuleType, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, broker_url=REDIS_URL, task_time_limit_s=3600)
    conf = celery_app_module.make_celery(settings).conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_time_limit == 3600
    assert 0 < conf.task_soft_time_limit < conf.task_time_limit
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.task_serializer == "json"
    assert list(conf.accept_content) == ["json"]
    assert conf.task_ignore_result is True
    assert {queue.name for queue in conf.task_queues} == {"cpu", "gpu"}
    assert not (tmp_path / "broker").exists()


@pytest.mark.parametrize("hard", [2, 3, 60, 3600, 24 * 3600, 7 * 24 * 3600])
def test_time_limits_keep_their_order(celery_app_module: ModuleType, hard: int) -> None:
    soft, limit, visibility = celery_app_module.time_limits(hard)
    assert 0 < soft < limit == hard < visibility
    assert soft >= hard - 300
    assert visibility <= hard + 3600


def test_filesystem_broker_keeps_its_messages_in_the_broker_folder(
    celery_app_module: ModuleType, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path / "home", broker_url="filesystem://")
    app = celery_app_module.make_celery(settings)
    options = app.conf.broker_transport_options
    folder = settings.broker_folder
    assert options["data_folder_in"] == options["data_folder_out"] == str(folder)
    assert not (tmp_path / "home").exists()  # made when a worker or producer starts
    celery_app_module.prepare_broker(app)
    for name in ("processed_folder", "control_folder"):
        assert Path(options[name]).parent == folder
        assert Path(options[name]).is_dir()
    celery_app_module.send_job(app, "job_x", {"api": "drawtext"})
    assert [path.suffix for path in folder.iterdir() if path.is_file()] == [".msg"]


def test_importing_the_worker_app_with_default_settings_creates_nothing(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PRIVEVO_")}
    env["PYTHONPATH"] = str(REPO)
    subprocess.run(
        [sys.executable, "-c", "import workers.celery_app, workers.tasks"],
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=120,
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("spec", "queue"),
    [
        ({}, "cpu"),
        ({"api": "drawtext"}, "cpu"),
        ({"api": "grammar"}, "cpu"),
        ({"api": "diffusion"}, "gpu"),
        ({"api": "llm"}, "gpu"),
        (PeJob(api="grammar", embedding="minilm"), "cpu"),
    ],
)
def test_queue_for(celery_app_module: ModuleType, spec: object, queue: str) -> None:
    assert celery_app_module.queue_for(spec) == queue


def test_the_job_task_is_registered_by_name(celery_app_module: ModuleType) -> None:
    from workers.tasks import run_job

    assert run_job.name == "workers.tasks.run_job"
    assert run_job.app is celery_app_module.app
    assert "workers.tasks.run_job" in celery_app_module.app.tasks


def test_the_visibility_timeout_can_be_set_shorter_than_the_time_limit(
    celery_app_module: ModuleType, tmp_path: Path
) -> None:
    settings = Settings(
        home=tmp_path,
        broker_url="redis://127.0.0.1:6379/14",
        task_time_limit_s=7200,
        visibility_timeout_s=600,
    )
    options = celery_app_module.make_celery(settings).conf.broker_transport_options
    assert options["visibility_timeout"] == 600
