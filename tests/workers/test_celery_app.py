"""The workers' Celery app: built on first use, never at import, with the shared broker options."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import Settings
from tests.workers.support import REDIS_URL, REPO
from workers.celery_app import WorkerApp, create_app


def test_importing_the_worker_modules_reads_no_settings_and_creates_nothing(
    tmp_path: Path,
) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PRIVEVO_")}
    env["PYTHONPATH"] = str(REPO)
    # An invalid setting would fail the import if anything read the settings.
    env["PRIVEVO_TASK_TIME_LIMIT_S"] = "not a number"
    code = (
        "import workers.celery_app as m, workers.tasks, sys\n"
        "assert m.worker_app.cache_info().currsize == 0\n"
        "assert 'service.app' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, timeout=120)
    assert list(tmp_path.iterdir()) == []


def test_the_worker_app_is_built_from_the_environment_on_first_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import workers.celery_app as module

    monkeypatch.setenv("PRIVEVO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PRIVEVO_BROKER_URL", REDIS_URL)
    module.worker_app.cache_clear()
    try:
        app = module.app
        assert isinstance(app, WorkerApp) and app is module.worker_app()
        assert app.settings.broker_url == REDIS_URL == app.conf.broker_url
    finally:
        module.worker_app.cache_clear()
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        module.nothing  # noqa: B018


def test_the_job_task_is_registered_by_name_on_each_worker_app(tmp_path: Path) -> None:
    from workers.tasks import run_job

    app = create_app(Settings(home=tmp_path, broker_url=REDIS_URL, task_time_limit_s=3600))
    assert "workers.tasks.run_job" in app.tasks
    assert app.tasks[run_job.name].name == "workers.tasks.run_job"
    assert app.conf.task_time_limit == 3600
