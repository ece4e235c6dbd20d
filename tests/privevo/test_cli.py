"""The `privevo` CLI as a user runs it: real processes, real files."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pe_core.checkpoint import CheckpointStore
from pe_core.embedders import create_embedder
from pe_core.histogram import prepare_embeddings, vote_counts
from pe_core.samples import Samples
from pe_kernels.reference import ReferenceBackend
from tests.conftest import digits_28

SECRET = "zz-secret-record"


def privevo(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "privevo.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"privevo {' '.join(args)} failed:\n{result.stderr}")
    return result


def write_folder(samples: Samples, root: Path) -> Path:
    for i, (image, label) in enumerate(zip(samples.images, samples.labels, strict=True)):
        folder = root / samples.label_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[:, :, 0]).save(folder / f"{SECRET}-{i}.png")
    return root


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """One small DP run with evaluation data, shared by the checks below."""
    root = tmp_path_factory.mktemp("cli")
    private = write_folder(digits_28(12), root / "private")
    heldout = write_folder(digits_28(12, offset=100), root / "heldout")
    out = root / "out"
    done = privevo(
        "run", "--data", str(private), "--eval-data", str(heldout), "--out", str(out),
        "--epsilon", "4", "--iterations", "2", "--num-samples", "60", "--seed", "3",
        "--insecure-test-noise", "--nn-backend", "numpy-blocked", "--quiet",
    )  # fmt: skip
    return {"private": private, "out": out, "stdout": done.stdout}


def test_calibrate_prints_json():
    args = ("privacy", "calibrate", "--epsilon", "1", "--delta", "9.137e-5", "--iterations", "4")
    record = json.loads(privevo(*args).stdout)
    assert record["mechanism"] == "discrete_gaussian"
    assert record["epsilon"] <= 1.0
    assert record["sigma"] == pytest.approx(6.416, rel=0.01)  # PE-NOTES golden value
    assert record["releases"] == 4


def test_calibrate_refuses_impossible_budget():
    result = privevo("privacy", "calibrate", "--epsilon", "-1", "--iterations", "4", check=False)
    assert result.returncode == 2
    assert "epsilon" in result.stderr


def test_output_layout(image_run):
    out = image_run["out"]
    assert "NOT PRIVATE" in image_run["stdout"]
    with (out / "synthetic" / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 60
    assert set(rows[0]) == {"file", "label"}
    assert all((out / "synthetic" / row["file"]).is_file() for row in rows)
    assert {row["label"] for row in rows} == {str(c) for c in range(10)}
    assert pq.read_table(out / "synthetic" / "synthetic.parquet").num_rows == 60
    for t in range(3):
        with Image.open(out / "samples" / f"iter_{t:02d}.png") as grid:
            assert grid.width > 280 and grid.height > 280
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["private"] is False and report["status"] == "NOT PRIVATE"
    assert report["epsilon"] <= 4.0
    assert report["delta"] == 1e-6
    assert [e["key"] for e in report["events"]] == [
        "iteration-1/histogram",
        "iteration-2/histogram",
    ]
    assert report["labels"]["treated_as_public"] is True
    assert report["neighbouring_relation"] == "add/remove one record"
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["dp"] is False
    assert [row["iteration"] for row in metrics["per_iteration"]] == [0, 1, 2]


def _arrays_in(path: Path):
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            yield from (npz[key] for key in npz.files)
    elif path.suffix == ".json":
        yield from _lists(json.loads(path.read_text()))
    elif path.suffix == ".jsonl":
        for line in path.read_text().splitlines():
            yield from _lists(json.loads(line))
    elif path.suffix == ".parquet":
        table = pq.read_table(path)
        yield from (np.asarray(column.to_pylist(), dtype=object) for column in table.columns)


def _lists(value):
    if isinstance(value, list):
        yield np.asarray(value, dtype=object)
        for item in value:
            yield from _lists(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _lists(item)


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_no_output_or_state_file_holds_non_dp_data(image_run):
    """Clean counts, per-record votes and private records appear in no file we write."""
    out, private_dir = image_run["out"], image_run["private"]
    # Recompute iteration 1's clean histogram independently from the public iteration-0 state.
    population = CheckpointStore(out / ".state" / "checkpoints").load(0).population
    embed = create_embedder("raw-pixels").embed
    private = Samples.concat(
        [
            Samples(
                ids=np.array([p.name]),
                labels=[int(p.parent.name)],
                label_names=population.label_names,
                images=_read_png(p)[None, :, :, None],
            )
            for p in sorted(private_dir.glob("*/*.png"))
        ]
    )
    vectors = prepare_embeddings(embed(private), "l2")
    clean = vote_counts(
        [vectors[private.labels == c] for c in range(10)],
        prepare_embeddings(embed(population), "l2"),
        population.labels,
        k=1,
        backend=ReferenceBackend(),
    )
    assert clean.sum() == len(private)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.parent.name == "releases" for p in files)
    n_private = len(private)
    private_bytes = {image.tobytes() for image in private.images}
    for path in files:
        if path == out / "eval" / "report-not-dp.html":
            continue  # shows private records by design; owner-only (see the test below)
        data = path.read_bytes()
        assert SECRET.encode() not in data, f"{path} names a private file"
        for array in _arrays_in(path):
            if array.shape == clean.shape and array.dtype != object:
                assert not np.array_equal(array, clean), f"{path} holds the clean histogram"
            assert array.shape[:1] != (n_private,), f"{path} holds a per-record array"
        if path.suffix == ".png":
            with Image.open(io.BytesIO(data)) as image:
                if image.size == (28, 28):
                    assert np.asarray(image).tobytes() not in private_bytes, path


def test_the_not_dp_page_is_owner_only_and_checks_memorisation(image_run):
    page = image_run["out"] / "eval" / "report-not-dp.html"
    assert page.stat().st_mode & 0o777 == 0o600
    assert page.parent.stat().st_mode & 0o777 == 0o700
    html = page.read_text()
    assert "NOT DP" in html and "Memorisation check" in html and "never share it" in html
    check = json.loads((page.parent / "memorisation.json").read_text())
    assert check["dp"] is False and 0 <= check["closer_to_private"] <= 1
    assert check["baseline"] == 0.5  # 12 private and 12 held-out digits
    assert "owner-only page" in image_run["stdout"]


def test_existing_output_needs_resume_and_resume_finishes(image_run):
    out = image_run["out"]
    again = privevo("run", "--data", str(image_run["private"]), "--out", str(out), check=False)
    assert again.returncode == 2
    assert "--resume" in again.stderr
    before = json.loads((out / "privacy_report.json").read_text())["events"]
    changed = privevo("run", "--out", str(out), "--resume", "--epsilon", "5", check=False)
    assert changed.returncode == 2
    assert "different job" in changed.stderr
    privevo("run", "--out", str(out), "--resume", "--quiet")
    after = json.loads((out / "privacy_report.json").read_text())["events"]
    assert after == before  # nothing new was released


def test_a_user_level_run_protects_users(tmp_path):
    digits = digits_28(6)
    data = tmp_path / "digits.npz"
    users = np.array([f"patient-{i % 9}" for i in range(len(digits))])
    np.savez(data, images=digits.images, labels=digits.labels, patient=users)
    out = tmp_path / "out"
    privevo(
        "run", "--data", str(data), "--out", str(out), "--user-column", "patient",
        "--votes-per-user", "2", "--iterations", "2", "--num-samples", "40", "--epsilon", "4",
        "--nn-backend", "numpy-blocked", "--quiet",
    )  # fmt: skip
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["status"] == "DP" and report["epsilon"] <= 4.0
    assert report["unit_of_privacy"] == "one user: all records that name the same user"
    assert report["votes_per_user"] == 2 and report["releases"] == 4
    run = json.loads((out / ".state" / "run.json").read_text())
    assert run["job"]["privacy_unit"] == "user" and run["source"]["user_column"] == "patient"
    # The unit is fixed by the data: protecting single records of it is refused, before
    # anything is written.
    refused = privevo(
        "run", "--data", str(data), "--out", str(tmp_path / "o"), "--user-column", "patient",
        "--quiet", "-c", str(_config(tmp_path, "privacy_unit: record")), check=False,
    )  # fmt: skip
    assert refused.returncode == 2 and "the unit of privacy is one user" in refused.stderr
    assert not (tmp_path / "o").exists()


def _config(folder: Path, text: str) -> Path:
    path = folder / "job.yaml"
    path.write_text(text + "\n")
    return path


def test_a_run_without_privacy_writes_infinite_epsilon_as_null(tmp_path, image_run):
    """--no-privacy crashed writing run.json: "Out of range float values are not JSON
    compliant: inf". Infinity is null everywhere, and such a run resumes."""
    out = tmp_path / "out"
    args = ("run", "--data", str(image_run["private"]), "--out", str(out), "--quiet")
    privevo(*args, "--no-privacy", "--iterations", "1", "--num-samples", "40")
    report = json.loads((out / "privacy_report.json").read_text())
    assert (report["status"], report["epsilon"], report["epsilon_target"]) == (
        "NOT PRIVATE",
        None,
        None,
    )
    assert report["job"]["epsilon"] is None
    assert json.loads((out / ".state" / "run.json").read_text())["job"]["epsilon"] is None
    privevo("run", "--out", str(out), "--resume", "--quiet")


def test_a_run_piped_to_a_log_prints_a_line_per_iteration(tmp_path, image_run):
    """A redrawn bar shows nothing in a log: a piped run was silent for minutes."""
    done = privevo(
        "run", "--data", str(image_run["private"]), "--out", str(tmp_path / "o"),
        "--iterations", "2", "--num-samples", "40", "--epsilon", "2",
    )  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.startswith("PE iteration")]
    assert [line.split(":")[0] for line in lines] == [f"PE iteration {t}/2" for t in range(3)]
    assert "eps 2/2" in lines[-1] and "eta 0 s" in lines[-1]


def test_parameters_are_flags_too(tmp_path, image_run):
    """The README says every option is a flag: the API's and the embedder's parameters too,
    as JSON or key=value, over the config file's."""
    config = _config(tmp_path, "embedding_config: {size: 10, grayscale: true}")
    out = tmp_path / "out"
    privevo(
        "run", "--data", str(image_run["private"]), "--out", str(out), "-c", str(config),
        "--embedding-config", "size=14", "--api-config", '{"image_size": 28}',
        "--iterations", "1", "--num-samples", "40", "--epsilon", "2", "--quiet",
    )  # fmt: skip
    job = json.loads((out / "privacy_report.json").read_text())["job"]
    assert job["embedding_config"] == {"size": 14, "grayscale": True}
    assert job["api_config"] == {"image_size": 28}
    bad = privevo("run", "--data", str(image_run["private"]), "--out", str(tmp_path / "o"),
                  "--api-config", "{not json", check=False)  # fmt: skip
    assert bad.returncode == 2 and "--api-config: not a JSON object" in bad.stderr


def test_a_run_whose_ledger_was_deleted_does_not_resume(tmp_path, image_run):
    """The issue's case: deleting the ledger of a finished run and resuming produced a report
    of "DP", 1 release and a third of the epsilon for the same synthetic data."""
    out = tmp_path / "out"
    shutil.copytree(image_run["out"], out)
    report = (out / "privacy_report.json").read_text()
    (out / ".state" / "ledger.jsonl").unlink()
    refused = privevo("run", "--out", str(out), "--resume", "--quiet", check=False)
    assert refused.returncode == 2
    assert "is not in the ledger" in refused.stderr and "Traceback" not in refused.stderr
    assert (out / "privacy_report.json").read_text() == report


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/nonexistent/data"], "/nonexistent/data"),
        (["--api", "dalle"], "valid names: diffusion, drawtext, grammar, llm, strokes"),
        (["--epsilon", "0"], "epsilon"),
        (["--iterations", "0"], "iterations"),
        (["--label-fractions", "a=b"], "--label-fractions"),
        (["--label-fractions", "0=1,1=1"], "missing ['2', '3'"),
        (["--embedding", "minilm"], "text"),
        (["--nn-backend", "foo"], "valid names: auto, faiss, numpy-blocked"),
        # Without CUDA (the interpreter is for tests), refused before anything is generated.
        (["--nn-backend", "triton"], "needs a CUDA device"),
        # Ran and was reported as DP: refused by the policy's maximum delta (1e-5 by default).
        (["--delta", "0.5"], "delta: 0.5 is above this installation's maximum of 1e-05"),
    ],
)
def test_bad_input_gets_a_clear_error(tmp_path, image_run, args, message):
    settings = ["--data", str(image_run["private"]), "--out", str(tmp_path / "o"), "--quiet"]
    result = privevo("run", *settings, *args, check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"PRIVEVO_MAX_DELTA": "lots"}, "PRIVEVO_MAX_DELTA='lots': give a number between 0 and 1"),
        ({"PRIVEVO_REQUIRE_DECLARED_LABELS": "true"}, "requires the label set to be declared"),
    ],
)
def test_the_local_policy_comes_from_the_environment(tmp_path, image_run, environment, message):
    command = [sys.executable, "-m", "privevo.cli", "run", "--data", str(image_run["private"])]
    result = subprocess.run(
        [*command, "--out", str(tmp_path / "o"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **environment},
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "o").exists()


def test_the_private_state_is_owner_only(image_run):
    state = image_run["out"] / ".state"
    modes = {path: path.stat().st_mode & 0o777 for path in [state, *state.rglob("*")]}
    assert {mode for path, mode in modes.items() if path.is_dir()} == {0o700}
    assert {mode for path, mode in modes.items() if path.is_file()} == {0o600}
    assert any(path.name == "ledger.jsonl" for path in modes)


def test_a_job_its_data_cannot_serve_is_refused_before_anything_is_written(tmp_path):
    rgb = tmp_path / "rgb"
    for label in ("cat_three", "seven"):
        (rgb / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(rgb / label / f"{i}.png")
    config = tmp_path / "job.yaml"
    config.write_text("num_sample: 10\n")
    out = tmp_path / "o"
    result = privevo("run", "--data", str(rgb), "--out", str(out), "--quiet", check=False)
    assert result.returncode == 2, result.stderr
    assert "the job cannot run on this data:" in result.stderr
    assert "64x64 with 3 channel(s)" in result.stderr
    assert "would draw ['cat_three', 'seven'] as words" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
    result = privevo("run", "-c", str(config), "--data", str(rgb), "--out", str(out), check=False)
    assert result.returncode == 2 and "did you mean 'num_samples'" in result.stderr
    assert not out.exists()


def test_eval_data_overlapping_private_is_refused(tmp_path, image_run):
    private = image_run["private"]
    result = privevo(
        "run", "--data", str(private), "--eval-data", str(private),
        "--out", str(tmp_path / "o"), "--quiet", check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "held-out" in result.stderr


def test_zip_with_path_traversal_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../escape/1.png", b"x")
    result = privevo("run", "--data", str(archive), "--out", str(tmp_path / "o"), check=False)
    assert result.returncode == 2
    assert "evil.zip" in result.stderr
    assert not (tmp_path / "escape").exists()


def test_diffusion_run_reports_the_generators_training_data(tmp_path):
    """The shipped DDPM from the CLI, tiny: the report names MNIST's training split."""
    private = write_folder(digits_28(3), tmp_path / "private")
    out = tmp_path / "out"
    privevo(
        "run", "--data", str(private), "--out", str(out), "--api", "diffusion",
        "--epsilon", "4", "--iterations", "1", "--num-samples", "20", "--seed", "1",
        "--quiet", "--config", str(_diffusion_config(tmp_path)),
    )  # fmt: skip
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["status"] == "DP"
    assert any("MNIST training split" in line for line in report["not_protected"])
    first = next((out / "synthetic" / "images" / "0").iterdir())
    with Image.open(first) as image:
        assert image.size == (28, 28)


def _diffusion_config(folder: Path) -> Path:
    path = folder / "diffusion.yaml"
    path.write_text("api_config: {num_inference_steps: 2, device: cpu}\n")
    return path
