"""The broker options both sides share, the queue a job goes to, and the embedded broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from pe_core.config import PeJob
from service.broker import make_celery, prepare_broker, queue_for, send_job, time_limits
from service.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/14"


def test_long_job_settings(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, broker_url=REDIS_URL, task_time_limit_s=3600)
    conf = make_celery(settings).conf
    assert conf.broker_url == REDIS_URL
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
def test_time_limits_keep_their_order(hard: int) -> None:
    soft, limit, visibility = time_limits(hard)
    assert 0 < soft < limit == hard < visibility
    assert soft >= hard - 300
    assert visibility <= hard + 3600


def test_filesystem_broker_keeps_its_messages_in_the_broker_folder(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", broker_url="filesystem://")
    app = make_celery(settings)
    options = app.conf.broker_transport_options
    folder = settings.broker_folder
    assert options["data_folder_in"] == options["data_folder_out"] == str(folder)
    assert not (tmp_path / "home").exists()  # made when a worker or producer starts
    prepare_broker(app)
    for name in ("processed_folder", "control_folder"):
        assert Path(options[name]).parent == folder
        assert Path(options[name]).is_dir()
    send_job(app, "job_x", "cpu")
    assert [path.suffix for path in folder.iterdir() if path.is_file()] == [".msg"]


@pytest.mark.parametrize(
    ("job", "queue"),
    [
        (PeJob(), "cpu"),
        (PeJob(api="drawtext"), "cpu"),
        (PeJob(api="grammar", embedding="minilm"), "cpu"),
        (PeJob(api="diffusion"), "gpu"),
        (PeJob(api="llm"), "gpu"),
    ],
)
def test_queue_for_follows_the_apis_accelerator_attribute(job: PeJob, queue: str) -> None:
    assert queue_for(job) == queue


def test_the_visibility_timeout_can_be_set_shorter_than_the_time_limit(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, broker_url=REDIS_URL, task_time_limit_s=7200, visibility_timeout_s=600
    )
    options = make_celery(settings).conf.broker_transport_options
    assert options["visibility_timeout"] == 600
