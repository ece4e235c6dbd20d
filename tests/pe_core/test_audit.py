"""The empirical audit: its bound against independent computations, the canaries, the pinned
candidates in the PE loop, and both sides of an audit (power against no noise and an injected
bug; a correct run stays at or below its claim)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import optimize, special, stats

from pe_core.apis import create_api
from pe_core.audit import (
    AuditPlan,
    DrawTextCanaries,
    WeakenedNoise,
    black_box_scores,
    canary_design,
    epsilon_lower_bound,
    guess,
    include,
    one_run_p_value,
    run_audit,
    weakened_noise,
    white_box_scores,
    with_canaries,
)
from pe_core.checkpoint import CheckpointError
from pe_core.config import PeJob
from pe_core.embedders import create_embedder
from pe_core.errors import PrivevoError
from pe_core.privacy import InsecureSeededSampler
from pe_core.runner import PrivateEvolution
from pe_core.samples import Samples

LEVEL = 0.05

# --- the bound ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("r", "v"), [(10, 9), (100, 75), (200, 150), (1000, 560)])
def test_without_delta_the_bound_is_the_binomial_tests_root(r, v):
    """delta = 0: the claim eps is rejected iff an exact binomial test of v successes in r at
    rate e^eps / (1 + e^eps) rejects; its root, found by scipy, is the bound."""

    def p(eps: float) -> float:
        return stats.binomtest(v, r, float(special.expit(eps)), alternative="greater").pvalue

    root = optimize.brentq(lambda eps: p(eps) - LEVEL, 0.0, 50.0, xtol=1e-10)
    assert epsilon_lower_bound(5000, r, v, 0.0) == pytest.approx(root, abs=1e-6)
    for eps in (0.0, 0.5, root, 3.0):
        assert one_run_p_value(5000, r, v, eps, 0.0) == pytest.approx(p(eps), rel=1e-9)


@pytest.mark.parametrize("r", [5, 10, 100, 1000])
def test_a_perfect_guesser_reaches_the_closed_form(r):
    """r right out of r: p = q^r, so the bound is logit(0.05^(1/r))."""
    assert epsilon_lower_bound(r, r, r, 0.0) == pytest.approx(
        special.logit(LEVEL ** (1 / r)), abs=1e-6
    )


def test_values_that_ports_of_the_papers_code_pin():
    """Two values public ports of the paper's Appendix D code pin (p = 0.05)."""
    assert epsilon_lower_bound(1000, 100, 75, 1e-4) == pytest.approx(0.673, abs=5e-4)
    assert epsilon_lower_bound(100_000, 1510, 1439, 1e-5) == pytest.approx(2.675, abs=1e-3)


def test_the_delta_term_only_raises_the_p_value_and_lowers_the_bound():
    for eps in (0.0, 0.7, 2.0):
        plain = one_run_p_value(1000, 100, 80, eps, 0.0)
        assert plain <= one_run_p_value(1000, 100, 80, eps, 1e-5) <= 1.0
    bounds = [epsilon_lower_bound(1000, 100, 90, delta) for delta in (0.0, 1e-6, 1e-4, 1e-3)]
    assert bounds == sorted(bounds, reverse=True) and bounds[-1] < bounds[0]


def test_the_p_value_does_not_fall_as_epsilon_grows():
    """What the bisection of epsilon_lower_bound relies on, checked over a grid."""
    grid = np.linspace(0.0, 12.0, 241)
    for m, r, v, delta in [(100, 50, 40, 1e-2), (1000, 200, 150, 1e-5), (2000, 200, 199, 1e-6)]:
        values = np.array([one_run_p_value(m, r, v, eps, delta) for eps in grid])
        assert np.all(np.diff(values) >= -1e-12)


def test_more_correct_guesses_give_a_larger_bound():
    bounds = [epsilon_lower_bound(2000, 200, v, 1e-6) for v in (100, 120, 150, 180, 200)]
    assert bounds[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(bounds))
    # 200 perfect guesses show at most 4.19 (delta = 0), however leaky the run; delta's term
    # takes a little off.
    assert 4.15 < bounds[-1] < special.logit(LEVEL ** (1 / 200))


@pytest.mark.parametrize(
    ("args", "message"),
    [((10, 5, 6, 1.0, 0.0), "v <= r"), ((10, 11, 5, 1.0, 0.0), "r <= m"),
     ((10, 5, 3, -1.0, 0.0), "epsilon"), ((10, 5, 3, 1.0, 2.0), "delta")],
)  # fmt: skip
def test_the_p_value_refuses_impossible_inputs(args, message):
    with pytest.raises(ValueError, match=message):
        one_run_p_value(*args)


def test_the_bound_refuses_a_confidence_outside_0_1():
    with pytest.raises(ValueError, match="confidence"):
        epsilon_lower_bound(10, 5, 5, 0.0, confidence=1.0)


# --- guesses and scores -------------------------------------------------------------------------


def test_guesses_take_the_top_and_bottom_scores_and_abstain_on_the_rest():
    scores = np.array([5.0, -1.0, 3.0, 0.0, 0.0, 9.0, -4.0])
    guesses = guess(scores, 4)
    np.testing.assert_array_equal(guesses.signs, [1, -1, 0, 0, 0, 1, -1])
    assert guesses.count == 4
    included = np.array([True, False, True, False, True, False, False])
    assert guesses.correct(included) == (1, 2)
    # An odd r gives the extra guess to "out"; ties go by index (the coins cannot matter).
    np.testing.assert_array_equal(guess(np.zeros(5), 3).signs, [1, 0, 0, -1, -1])
    with pytest.raises(ValueError, match="guesses"):
        guess(scores, 8)


def test_white_box_scores_sum_the_iterations():
    counts = np.array([[1, 0, -2], [2, 1, 0]])
    np.testing.assert_array_equal(white_box_scores(counts), [3.0, 1.0, -2.0])


def test_black_box_scores_are_minus_the_distance_to_the_nearest_sample_of_the_label():
    canaries = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    synthetic = np.array([[1.0, 0.0], [3.0, 4.0], [0.0, 3.0]], dtype=np.float32)
    scores = black_box_scores(canaries, np.array([0, 0, 2]), synthetic, np.array([0, 0, 1]))
    np.testing.assert_allclose(scores, [-1.0, -4.0, -np.inf])


# --- canaries -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drawtext():
    return create_api("drawtext", label_names=[str(d) for d in range(10)])


def test_canaries_are_distinct_legal_drawtext_renders(drawtext):
    canaries = DrawTextCanaries().make(drawtext, 500, np.random.default_rng(0))
    assert len(np.unique(canaries.images.reshape(500, -1), axis=0)) == 500
    np.testing.assert_array_equal(np.bincount(canaries.labels), np.full(10, 50))
    # Reachable by the generator: every parameter lies in the ranges `random` draws from, and
    # the API's own renderer draws the canaries from their parameters.
    s, p = drawtext.settings, canaries.params
    assert np.all((p["font"] >= 0) & (p["font"] < len(drawtext.font_pool)))
    for column, (low, high) in [
        ("font_size", s.font_size_range),
        ("stroke_width", s.stroke_width_range),
        ("rotation", (-s.max_rotation, s.max_rotation)),
        ("offset_x", (-s.max_offset, s.max_offset)),
        ("offset_y", (-s.max_offset, s.max_offset)),
    ]:
        assert np.all((p[column] >= low) & (p[column] <= high)), column
    assert list(p["text"]) == [canaries.label_names[label] for label in canaries.labels]
    np.testing.assert_array_equal(drawtext.renderer.render(dict(p)), canaries.images)
    again = DrawTextCanaries().make(drawtext, 500, np.random.default_rng(0))
    np.testing.assert_array_equal(again.images, canaries.images)


def test_real_digits_rarely_choose_a_canary(drawtext, private_digits):
    """Unlike real data: beside a random population of the generator, real records choose a
    canary far less often than they choose as many more random samples of the generator."""
    embed = create_embedder("raw-pixels").embed
    rng = np.random.default_rng(1)
    population = Samples.concat([drawtext.random(label, 60, rng) for label in range(10)])
    more = Samples.concat([drawtext.random(label, 100, rng) for label in range(10)])
    canaries = DrawTextCanaries().make(drawtext, 1000, rng)
    real = embed(private_digits).astype(np.float64)

    def share_won_by(extra: Samples) -> float:
        won = 0
        for label in range(10):
            candidates = np.concatenate(
                [embed(population.with_label(label)), embed(extra.with_label(label))]
            ).astype(np.float64)
            x = real[private_digits.labels == label]
            squared = (x * x).sum(1)[:, None] - 2 * x @ candidates.T + (candidates**2).sum(1)
            won += int(np.sum(squared.argmin(axis=1) >= 60))
        return won / len(real)

    assert share_won_by(canaries) < share_won_by(more) / 4


def test_the_design_is_described_and_other_apis_are_refused(drawtext):
    described = canary_design("drawtext").describe(drawtext)
    assert described["font_size"] == [10, 11] and described["abs_offset_px"] == 2.0
    with pytest.raises(PrivevoError, match="drawtext"):
        canary_design("grammar")


def test_the_coins_are_fair_and_apart_from_the_design():
    coins = include(20_000, np.random.default_rng(3))
    assert stats.binomtest(int(coins.sum()), 20_000, 0.5).pvalue > 1e-3
    design, flips = AuditPlan(seed=3).rngs()
    assert design.random() != flips.random()


def test_the_private_data_gets_the_included_canaries_only(drawtext, private_digits):
    canaries = DrawTextCanaries().make(drawtext, 40, np.random.default_rng(0))
    included = include(40, np.random.default_rng(1))
    private = with_canaries(private_digits, canaries, included)
    assert len(private) == len(private_digits) + included.sum()
    assert set(private.ids[len(private_digits) :]) == set(canaries.ids[included])
    clash = Samples(
        ids=canaries.ids[:1],
        labels=canaries.labels[:1],
        label_names=canaries.label_names,
        images=canaries.images[:1],
    )
    with pytest.raises(PrivevoError, match="id"):
        with_canaries(clash, canaries, included)


def test_plans_say_what_is_wrong():
    assert AuditPlan().problems() == []
    problems = AuditPlan(canaries=10, guesses=20, mode="grey-box", confidence=1.5).problems()  # type: ignore[arg-type]
    assert [p.split(":")[0] for p in problems] == ["guesses", "mode", "confidence"]


def test_the_injected_bug_draws_at_a_quarter_of_sigma():
    weak = WeakenedNoise(InsecureSeededSampler(5), 4)
    np.testing.assert_array_equal(weak.sample(8.0, 50), InsecureSeededSampler(5).sample(2.0, 50))
    assert weak.secure is False and "NOT-PRIVATE" in weak.name
    assert weakened_noise(lambda key: InsecureSeededSampler(1), 4)("k").secure is False
    with pytest.raises(ValueError, match="> 1"):
        WeakenedNoise(InsecureSeededSampler(5), 0.5)


# --- pinned candidates in the PE loop -----------------------------------------------------------


def _job(**changes) -> PeJob:
    settings = {
        "iterations": 2,
        "num_samples": 200,
        "insecure_test_noise": True,
        "nn_backend": "numpy-blocked",
        "seed": 4,
        "no_privacy": True,
        "epsilon": math.inf,
        **changes,
    }
    return PeJob(**settings)


def _engine(tmp_path, job, pinned=None, name="state"):
    return PrivateEvolution(
        job,
        api=create_api("drawtext", label_names=[str(d) for d in range(10)]),
        embedder=create_embedder("raw-pixels"),
        noise=lambda key: InsecureSeededSampler(abs(hash(key)) % 2**31),
        state_dir=tmp_path / name,
        seed=job.seed,
        pinned=pinned,
    )


def _white(n: int) -> Samples:
    """n distinct nearly white images: far from every digit, so no real record votes for them."""
    images = np.full((n, 28, 28, 1), 255, dtype=np.uint8)
    images.reshape(n, -1)[np.arange(n), np.arange(n)] = 0
    return Samples(
        ids=np.array([f"white-{i}" for i in range(n)]),
        labels=np.arange(n) % 10,
        label_names=tuple(str(d) for d in range(10)),
        images=images,
    )


def test_pinned_candidates_nobody_votes_for_change_nothing(tmp_path, private_digits):
    canaries = _white(20)
    plain = _engine(tmp_path, _job(), name="plain").run(private_digits)
    pinned = _engine(tmp_path, _job(), canaries, name="pinned").run(private_digits)
    assert plain.pinned_counts is None
    assert pinned.pinned_counts is not None and pinned.pinned_counts.shape == (2, 20)
    np.testing.assert_array_equal(pinned.pinned_counts, 0)  # no real record chose a canary
    np.testing.assert_array_equal(pinned.population.ids, plain.population.ids)
    np.testing.assert_array_equal(pinned.population.images, plain.population.images)


def test_included_canaries_vote_for_their_own_pinned_candidate(tmp_path, private_digits):
    canaries = _white(100)
    included = include(100, np.random.default_rng(1))
    private = with_canaries(private_digits, canaries, included)
    result = _engine(tmp_path, _job(), canaries).run(private)
    assert result.pinned_counts is not None
    # Without noise the counts are the votes: one per iteration from each included canary.
    np.testing.assert_array_equal(result.pinned_counts[:, included], 1)
    np.testing.assert_array_equal(result.pinned_counts[:, ~included], 0)
    # Never selected nor varied: no canary, and no copy of one, is in the population.
    assert not set(result.population.ids) & set(canaries.ids)
    population = result.population.images.reshape(len(result.population), -1)
    assert not (set(map(bytes, population)) & set(map(bytes, canaries.images.reshape(100, -1))))


def test_with_noise_the_pinned_counts_come_from_the_release(tmp_path, drawtext, private_digits):
    canaries = DrawTextCanaries().make(drawtext, 50, np.random.default_rng(0))
    job = _job(no_privacy=False, epsilon=2.0)
    engine = _engine(tmp_path, job, canaries)
    result = engine.run(private_digits)
    assert result.pinned_counts is not None and result.pinned_counts.shape == (2, 50)
    # The pinned bins are the tail of each recorded release (population first, then pinned).
    for t, counts in enumerate(result.pinned_counts, start=1):
        entry = next(e for e in result.ledger if e.key == f"iteration-{t}/histogram")
        released = engine.releases.release(
            entry.key, entry.iteration, entry.event, lambda: pytest.fail("drew new noise")
        )
        assert len(released) == job.num_samples + 50
        np.testing.assert_array_equal(released[-50:], counts)


def test_a_run_with_pinned_candidates_does_not_resume(tmp_path, drawtext, private_digits):
    canaries = DrawTextCanaries().make(drawtext, 20, np.random.default_rng(0))

    class Stop(Exception):
        pass

    class StopAfterFirst:
        def on_phase(self, iteration, phase):
            if (iteration, phase) == (2, "embed"):
                raise Stop

        def on_iteration(self, report):
            pass

    with pytest.raises(Stop):
        _engine(tmp_path, _job(), canaries).run(private_digits, callbacks=StopAfterFirst())
    with pytest.raises(CheckpointError, match="cannot resume"):
        _engine(tmp_path, _job(), canaries).run(private_digits, resume=True)


# --- both sides of an audit ---------------------------------------------------------------------

AUDIT_JOB = {
    "iterations": 4,
    "num_samples": 600,
    "insecure_test_noise": True,
    "nn_backend": "numpy-blocked",
    "seed": 1,
}


def _audit(tmp_path, private_digits, *, divisor=None, mode="white-box", **job):
    settings = {**AUDIT_JOB, **job}
    return run_audit(
        PeJob(**settings),
        private_digits,
        api=create_api("drawtext", label_names=private_digits.label_names),
        embedder=create_embedder("raw-pixels"),
        plan=AuditPlan(canaries=2000, guesses=200, seed=1, mode=mode),  # type: ignore[arg-type]
        state_dir=tmp_path / "state",
        noise=None if divisor is None else (lambda factory: weakened_noise(factory, divisor)),
    )


def test_a_correct_run_stays_at_or_below_its_claim(tmp_path, private_digits):
    audit = _audit(tmp_path, private_digits, epsilon=1.0)
    assert audit.claimed_epsilon == pytest.approx(1.0, abs=1e-3)
    assert 0 <= audit.epsilon_lower_bound <= audit.claimed_epsilon
    assert not audit.exceeds_claim and audit.p_value_at_claim > LEVEL
    report = audit.report(PeJob(**AUDIT_JOB, epsilon=1.0))
    assert report["confidence"] == 0.95 and report["m"] == 2000 and report["r"] == 200
    assert report["guesses"]["in"] + report["guesses"]["out"] == 200
    assert report["canaries"]["design"]["name"] == "drawtext-small-bold-turned-corner"
    assert "spends that dataset's budget" in report["budget"]
    assert "NOT PRIVATE" in report["warnings"][0]  # the tests' seeded noise says so


def test_an_injected_bug_is_caught(tmp_path, private_digits):
    """The noise at sigma / 4 while the ledger claims sigma: the bound clearly exceeds the
    claim, which these guesses reject at p < 1e-3."""
    audit = _audit(tmp_path, private_digits, epsilon=1.0, divisor=4)
    assert audit.claimed_epsilon == pytest.approx(1.0, abs=1e-3)
    assert audit.epsilon_lower_bound > 1.4 * audit.claimed_epsilon
    assert audit.exceeds_claim and audit.p_value_at_claim < 1e-3
    assert "injected-bug" in audit.report(PeJob(**AUDIT_JOB))["warnings"][0]


def test_without_noise_the_audit_sees_every_canary(tmp_path, private_digits):
    audit = _audit(tmp_path, private_digits, no_privacy=True, epsilon=math.inf)
    assert audit.correct >= 195  # a few real votes for canaries cost the rest
    assert audit.epsilon_lower_bound > 3.0  # 4.19 is the most 200 guesses can show
    assert audit.p_value_at_claim is None and not audit.exceeds_claim


def test_black_box_scores_see_far_less(tmp_path, private_digits):
    audit = _audit(tmp_path, private_digits, no_privacy=True, epsilon=math.inf, mode="black-box")
    assert audit.run.pinned_counts is None
    assert audit.epsilon_lower_bound < 1.0


def test_an_injected_bug_needs_noise(tmp_path, private_digits):
    with pytest.raises(PrivevoError, match="needs noise"):
        _audit(tmp_path, private_digits, no_privacy=True, epsilon=math.inf, divisor=4)
