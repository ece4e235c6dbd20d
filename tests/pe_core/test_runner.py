"""The PE loop: resume, exactly-once releases, DP-only checkpoints, and that it learns."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pe_core.apis import create_api
from pe_core.checkpoint import CheckpointError
from pe_core.config import PeJob
from pe_core.embedders import create_embedder
from pe_core.errors import PrivevoError
from pe_core.metrics import downstream_scores
from pe_core.population import allocate
from pe_core.privacy import InsecureSeededSampler
from pe_core.runner import PrivateEvolution, histogram_key


class Crash(Exception):
    pass


class CrashAt:
    """Raises at a phase of an iteration, like a killed process would stop there."""

    def __init__(self, iteration: int, phase: str) -> None:
        self.at = (iteration, phase)

    def on_phase(self, iteration: int, phase: str) -> None:
        if (iteration, phase) == self.at:
            raise Crash

    def on_iteration(self, report) -> None:
        pass


class CountingNoise:
    """Seeded test noise per release key that counts how often noise is drawn."""

    def __init__(self) -> None:
        self.draws: list[str] = []

    def __call__(self, key: str):
        outer = self

        class Sampler(InsecureSeededSampler):
            def sample(self, sigma, size):
                outer.draws.append(key)
                return super().sample(sigma, size)

        return Sampler(abs(hash(key)) % 2**31)


JOB = PeJob(
    epsilon=5.0,
    iterations=3,
    num_samples=100,
    lookahead=2,
    insecure_test_noise=True,
    label_fractions="uniform",
    nn_backend="numpy-blocked",
)


def _engine(tmp_path, private, job=JOB, noise=None):
    noise = noise or CountingNoise()
    return PrivateEvolution(
        job,
        api=create_api(job.api, label_names=private.label_names),
        embedder=create_embedder("raw-pixels"),
        noise=noise,
        state_dir=tmp_path,
        seed=7,
    ), noise


def test_allocate_sums_and_rounds_largest_remainder():
    np.testing.assert_array_equal(allocate(10, np.array([1.0, 1.0, 1.0])), [4, 3, 3])
    np.testing.assert_array_equal(allocate(5, np.array([0.0, 2.0, 3.0])), [0, 2, 3])


def test_resume_after_crash_equals_uninterrupted_and_reuses_release(tmp_path, private_digits):
    whole, _noise_a = _engine(tmp_path / "a", private_digits)
    expected = whole.run(private_digits)

    crashed, noise_b = _engine(tmp_path / "b", private_digits)
    # Crash after iteration 2's release was recorded, before it was used.
    with pytest.raises(Crash):
        crashed.run(private_digits, callbacks=CrashAt(2, "select"))
    assert noise_b.draws == [histogram_key(1), histogram_key(2)]
    resumed, noise_c = _engine(tmp_path / "b", private_digits)
    got = resumed.run(private_digits, resume=True)
    # Iteration 2's recorded release was reused: only iteration 3 drew noise.
    assert noise_c.draws == [histogram_key(3)]
    np.testing.assert_array_equal(got.population.images, expected.population.images)
    np.testing.assert_array_equal(got.population.ids, expected.population.ids)
    assert [e.key for e in got.ledger] == [histogram_key(t) for t in (1, 2, 3)]
    assert [e.release_sha256 for e in got.ledger] == [e.release_sha256 for e in expected.ledger]


def test_existing_state_needs_resume_and_same_job(tmp_path, private_digits):
    engine, _ = _engine(tmp_path, private_digits, job=JOB.model_copy(update={"iterations": 1}))
    engine.run(private_digits)
    again, _ = _engine(tmp_path, private_digits, job=JOB.model_copy(update={"iterations": 1}))
    with pytest.raises(CheckpointError, match="resume"):
        again.run(private_digits)
    other, _ = _engine(tmp_path, private_digits, job=JOB.model_copy(update={"iterations": 2}))
    with pytest.raises(CheckpointError, match="different job"):
        other.run(private_digits, resume=True)


def test_no_privacy_writes_no_release(tmp_path, private_digits):
    job = JOB.model_copy(update={"no_privacy": True, "epsilon": float("inf"), "iterations": 1})
    engine, noise = _engine(tmp_path, private_digits, job=job)
    result = engine.run(private_digits)
    assert result.sigma == 0 and result.ledger == [] and noise.draws == []
    assert not (tmp_path / "releases").exists() or not any((tmp_path / "releases").iterdir())


def test_dp_label_fractions_are_released_and_charged(tmp_path, private_digits):
    job = JOB.model_copy(update={"label_fractions": "dp", "iterations": 1})
    engine, _noise = _engine(tmp_path, private_digits, job=job)
    result = engine.run(private_digits)
    assert [e.key for e in result.ledger] == ["label-counts", histogram_key(1)]
    assert sum(result.label_targets.values()) == job.num_samples
    assert result.calibration is not None and result.calibration.releases == 2


def test_a_resume_refuses_a_ledger_that_lost_a_release(tmp_path, private_digits):
    """A deleted ledger made a finished run resume to a report of 1 release and a third of its
    epsilon, and drew the DP label counts again: the checkpoints prove what was released."""
    job = JOB.model_copy(update={"label_fractions": "dp", "iterations": 2})
    engine, _ = _engine(tmp_path, private_digits, job=job)
    engine.run(private_digits)
    (tmp_path / "ledger.jsonl").unlink()
    resumed, noise = _engine(tmp_path, private_digits, job=job)
    with pytest.raises(CheckpointError, match=r"release 'label-counts'.*is not in the ledger"):
        resumed.run(private_digits, resume=True)
    assert noise.draws == []  # nothing drawn again
    assert not (tmp_path / "ledger.jsonl").exists()


def test_a_resume_refuses_a_ledger_whose_release_differs(tmp_path, private_digits):
    engine, _ = _engine(tmp_path, private_digits, job=JOB.model_copy(update={"iterations": 2}))
    with pytest.raises(Crash):
        engine.run(private_digits, callbacks=CrashAt(2, "embed"))
    ledger = tmp_path / "ledger.jsonl"
    first = json.loads(ledger.read_text().splitlines()[0])
    first["release_sha256"] = "0" * 64
    ledger.write_text(json.dumps(first) + "\n")
    resumed, noise = _engine(tmp_path, private_digits, job=JOB.model_copy(update={"iterations": 2}))
    with pytest.raises(CheckpointError, match=rf"release '{histogram_key(1)}'.*differs"):
        resumed.run(private_digits, resume=True)
    assert noise.draws == []


def test_each_checkpoint_lists_the_releases_it_was_built_from(tmp_path, private_digits):
    job = JOB.model_copy(update={"label_fractions": "dp", "iterations": 2})
    engine, _ = _engine(tmp_path, private_digits, job=job)
    result = engine.run(private_digits)
    listed = {t: [r["key"] for r in engine.checkpoints.load(t).meta["releases"]] for t in range(3)}
    assert listed == {
        0: ["label-counts"],
        1: ["label-counts", histogram_key(1)],
        2: ["label-counts", histogram_key(1), histogram_key(2)],
    }
    final = engine.checkpoints.load(2).meta["releases"]
    assert [r["release_sha256"] for r in final] == [e.release_sha256 for e in result.ledger]


def test_a_user_level_run_charges_c_releases_per_iteration(tmp_path, private_digits):
    users = [f"user-{i % 7}" for i in range(len(private_digits))]  # users span labels
    job = JOB.model_copy(
        update={
            "privacy_unit": "user",
            "votes_per_user": 3,
            "labels_per_user": 2,
            "label_fractions": "dp",
            "iterations": 2,
        }
    )
    engine, _ = _engine(tmp_path, private_digits.with_users(users), job=job)
    result = engine.run(private_digits.with_users(users))
    assert [(e.key, e.event.count) for e in result.ledger] == [
        ("label-counts", 2),
        (histogram_key(1), 3),
        (histogram_key(2), 3),
    ]
    assert result.calibration is not None and result.calibration.releases == 2 + 3 * 2


def test_a_user_level_job_needs_users(tmp_path, private_digits):
    job = JOB.model_copy(update={"privacy_unit": "user", "iterations": 1})
    engine, _ = _engine(tmp_path, private_digits, job=job)
    with pytest.raises(PrivevoError, match="the records name no users"):
        engine.run(private_digits)


def test_pe_beats_its_initial_population(tmp_path, private_digits, heldout_digits):
    """End to end on real handwritten digits: selection by noisy votes must help."""
    job = PeJob(
        epsilon=10.0,
        iterations=4,
        num_samples=400,
        lookahead=4,
        threshold=1.0,
        insecure_test_noise=True,
    )
    engine, _ = _engine(tmp_path, private_digits, job=job)
    populations = {}

    class Keep:
        def on_phase(self, iteration, phase):
            pass

        def on_iteration(self, report):
            populations[report.iteration] = report.population

    engine.run(private_digits, callbacks=Keep())
    embed = create_embedder("raw-pixels").embed
    test_x, test_y = embed(heldout_digits), heldout_digits.labels
    acc = {
        t: downstream_scores(embed(p), p.labels, test_x, test_y).accuracy
        for t, p in populations.items()
    }
    assert acc[4] > acc[0] + 0.1, acc


class PopulationSizes:
    """Records each iteration's population size per label."""

    def __init__(self) -> None:
        self.sizes: dict[int, list[int]] = {}

    def on_phase(self, iteration: int, phase: str) -> None:
        pass

    def on_iteration(self, report) -> None:
        counts = np.bincount(report.population.labels, minlength=10)
        self.sizes[report.iteration] = counts.tolist()


def test_candidates_size_the_voted_populations_and_num_samples_the_output(tmp_path, private_digits):
    job = JOB.model_copy(update={"candidates": 30, "num_samples": 70})
    engine, noise = _engine(tmp_path, private_digits, job=job)
    seen = PopulationSizes()
    result = engine.run(private_digits, callbacks=seen)
    voted = allocate(30, np.ones(10)).tolist()
    assert seen.sizes[0] == seen.sizes[1] == seen.sizes[2] == voted
    assert (
        seen.sizes[3] == allocate(70, np.ones(10)).tolist() == list(result.label_targets.values())
    )
    # Each release is one count per voted sample, and the plan's charge is unchanged.
    assert noise.draws == [histogram_key(t) for t in (1, 2, 3)]
    sizes = [
        len(np.load(tmp_path / "releases" / str(e.release_path))["values"]) for e in result.ledger
    ]
    assert sizes == [30, 30, 30]
    assert result.calibration is not None and result.calibration.releases == 3


class Populations:
    def __init__(self) -> None:
        self.seen: dict[int, object] = {}

    def on_phase(self, iteration: int, phase: str) -> None:
        pass

    def on_iteration(self, report) -> None:
        self.seen[report.iteration] = report.population


def test_without_vary_last_the_output_is_the_last_votes_best_candidates(tmp_path, private_digits):
    job = JOB.model_copy(update={"candidates": 60, "num_samples": 30, "vary_last": False})
    engine, noise = _engine(tmp_path, private_digits, job=job)
    seen = Populations()
    result = engine.run(private_digits, callbacks=seen)
    voted, output = seen.seen[2], result.population
    assert noise.draws == [histogram_key(t) for t in (1, 2, 3)]  # no extra release
    last = np.load(tmp_path / "releases" / str(result.ledger[-1].release_path))["values"]
    scores = np.maximum(last - result.threshold, 0)
    position = {sid: i for i, sid in enumerate(voted.ids.tolist())}
    assert len(set(output.ids.tolist())) == len(output) == 30
    for label in range(10):
        members = np.flatnonzero(voted.labels == label)
        kept = [position[sid] for sid in output.ids[output.labels == label].tolist()]
        assert len(kept) == 3  # taken from the voted candidates, not varied
        dropped = sorted(set(members.tolist()) - set(kept))
        assert scores[kept].min() >= scores[dropped].max()


def test_vary_last_false_needs_more_candidates_than_samples():
    with pytest.raises(ValueError, match="candidates \\(100\\) must exceed num_samples"):
        PeJob.model_validate({**JOB.model_dump(), "vary_last": False})
    PeJob.model_validate({**JOB.model_dump(), "vary_last": False, "candidates": 101})


def test_fewer_candidates_than_labels_keep_one_per_label(tmp_path, private_digits):
    job = JOB.model_copy(update={"candidates": 3, "num_samples": 50, "iterations": 1})
    seen = PopulationSizes()
    _engine(tmp_path, private_digits, job=job)[0].run(private_digits, callbacks=seen)
    assert seen.sizes[0] == [1] * 10 and seen.sizes[1] == [5] * 10


@pytest.mark.parametrize(
    ("api", "degree_end", "degrees"),
    [
        ("drawtext", None, [1.0, 0.6, 0.2]),
        ("strokes", None, [1.0, 1.0, 1.0]),
        ("strokes", 0.4, [1.0, 0.7, 0.4]),
    ],
)
def test_the_degree_schedule_ends_at_the_apis_degree_unless_the_job_names_one(
    tmp_path, private_digits, api, degree_end, degrees
):
    job = JOB.model_copy(update={"api": api, "degree_end": degree_end, "num_samples": 40})
    result = _engine(tmp_path, private_digits, job=job)[0].run(private_digits)
    assert [d["degree"] for d in result.diagnostics] == degrees


@pytest.mark.parametrize(
    ("api", "threshold", "sigmas"),
    [("drawtext", None, 2.0), ("strokes", None, 1.0), ("strokes", 3.0, None)],
)
def test_the_threshold_is_the_apis_multiple_of_sigma_unless_the_job_names_one(
    tmp_path, private_digits, api, threshold, sigmas
):
    job = JOB.model_copy(update={"api": api, "threshold": threshold, "num_samples": 40})
    result = _engine(tmp_path, private_digits, job=job)[0].run(private_digits)
    assert result.sigma > 1.0
    expected = threshold if sigmas is None else sigmas * result.sigma
    assert result.threshold == pytest.approx(expected, rel=1e-12)
