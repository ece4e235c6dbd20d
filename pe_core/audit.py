"""Empirical privacy audit: a lower bound on the epsilon that one PE run actually leaks.

The method is the one-run audit of Steinke, Nasr & Jagielski, "Privacy Auditing with One (1)
Training Run" (arXiv:2305.08846, NeurIPS 2023):

1. The auditor designs m canary records (:class:`DrawTextCanaries`) and includes each in the
   private data independently with probability 1/2 (seeded coins that the report names).
2. The SAME PE job runs once on the real records plus the included canaries.
3. Each canary gets a score computed from the released output alone (:func:`white_box_scores`,
   :func:`black_box_scores`); the auditor guesses "in" for the r/2 highest scores and "out" for
   the r/2 lowest, and abstains on the rest (:func:`guess`). m and r are fixed before the run.
4. If the run is (epsilon, delta)-DP, the number of correct guesses W satisfies their main
   theorem (Theorem 3.1; with delta = 0 it says W is dominated by Binomial(r, e^eps / (1 +
   e^eps)), the accuracy of eps-DP randomized response)::

       P[W >= v] <= beta(v) + 2 m delta max_{i=1..v} P[v - i <= B < v] / i,
       beta(v) = P[B >= v],  B ~ Binomial(r, e^eps / (1 + e^eps)).

   :func:`one_run_p_value` computes this (their Appendix D computes the same quantity), and
   :func:`epsilon_lower_bound` returns the largest epsilon whose claim the observed guesses
   reject at the given confidence (95%): with probability at least 95% over the coins, the
   run is NOT (eps', delta)-DP for any eps' below the bound. It is a lower bound: a bound below
   the claimed epsilon is consistent with the claim (it never proves it); a bound above it
   means the run leaks more than it claims, or the theorem's premises fail (e.g. the claim's
   neighbouring relation is not the one the canaries exercise).

Why a white-box score: one record is one vote among thousands, so the released synthetic
samples barely move when a canary is added (black-box scores have little power for PE). In the
white-box mode each canary's own image, public to the auditor, is pinned as an extra candidate
of its label in every iteration's vote (``PrivateEvolution(pinned=...)``); an included canary
votes for it (distance 0) and, being far from real data, almost no real record does. The score
is the sum over iterations of the NOISY counts of that candidate's bin: part of the DP release,
so reading them is post-processing. Per canary this is the Gaussian test the accountant
charges (shift 1 per iteration, noise sigma), so the audit is close to the best any one-run
audit can do for this mechanism; the one-run method itself still caps what m canaries can show.

The Bayesian estimate of Zanella-Beguelin et al. (2023, ``privacy-estimates``) needs many
independent runs; this module does not use it.

An audit on private data is a run on that data: it spends that dataset's budget like any run.
The default (``privevo audit``) is the MNIST stand-in, which is public.

Edges that run the job themselves (the service's workers, through ``pe_core.job.run_job``) use
the stages :func:`prepare_audit` and :func:`conclude_audit`; :func:`run_audit` is both around
one engine run. The gateway checks plans with :func:`audit_refusals`, so this module loads
neither scipy nor the engine until a bound is computed or a run made (the gateway has neither).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from pe_core.apis.base import VariationApi
from pe_core.apis.drawtext import DrawText
from pe_core.config import PeJob
from pe_core.embedders.base import Embedder
from pe_core.errors import PrivevoError
from pe_core.histogram import prepare_embeddings
from pe_core.registry import Registry
from pe_core.samples import Samples

if TYPE_CHECKING:  # imported where used: the gateway checks plans without scipy or the engine
    from pe_core.privacy import NoiseSampler
    from pe_core.runner import NoiseFactory, RunCallbacks, RunResult

AuditMode = Literal["white-box", "black-box"]
AUDIT_MODES: tuple[AuditMode, ...] = ("white-box", "black-box")

DEFAULT_CANARIES = 2000
"""m. Chosen before any audit ran, from a model of the white-box score (canary i scores
N(T s_i, T sigma^2), s_i its coin) simulated 300 times: with 2,000 canaries and 200 guesses the
bound of the injected bug (sigma / 4 at a claimed eps of 1, T 4) exceeds 1.40 in 95% of the
audits (median 1.71), and a run without noise shows the most that 200 guesses can (4.19). With
1,000 canaries and 200 guesses the bug's median was 1.40."""
DEFAULT_GUESSES = 200
"""r: 100 "in" guesses (the highest scores) and 100 "out" (the lowest); the rest abstain. r
perfect guesses show at most logit(0.05^(1/r)), so few guesses cap the bound, and many take in
weak ones: in the same simulation the bug's 5% quantile was 1.39, 1.40 and 1.31 for r 100, 200
and 400, and at eps 10 (no bug) the median 3.49, 3.44 and 3.39."""
DEFAULT_CONFIDENCE = 0.95

BUDGET_NOTE = (
    "An audit is a PE run on its data: on private data it spends that dataset's budget like any "
    "run (this report's claimed epsilon). The default data is the MNIST stand-in, which is "
    "public: audit there, or on another public stand-in of the same shape, unless spending the "
    "budget is intended."
)


# --- the bound (Steinke, Nasr & Jagielski, Theorem 3.1) ----------------------------------------


def _check_counts(m: int, r: int, v: int) -> None:
    if not (isinstance(m, int) and isinstance(r, int) and isinstance(v, int)):
        raise TypeError(f"m, r and v must be integers, got {m!r}, {r!r}, {v!r}")
    if not 0 <= v <= r <= m or m < 1:
        raise ValueError(f"need 0 <= v <= r <= m and m >= 1, got v={v}, r={r}, m={m}")


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """The probability of at least ``v`` correct guesses out of ``r`` if the run is
    (epsilon, delta)-DP: the right side of Theorem 3.1 of arXiv:2305.08846, capped at 1.

    With delta = 0 it is the binomial tail P[Binomial(r, e^eps / (1 + e^eps)) >= v]. The delta
    term is the theorem's ``2 m delta max_i (f(v - i) - f(v)) / i`` with f the binomial tail, i.e.
    the binomial mass just below v spread over i: delta is paid once per canary (hence m), as
    the theorem's proof pays it.

    Args:
        m: canaries, each included independently with probability 1/2.
        r: guesses made (abstentions excluded), fixed before the run.
        v: correct guesses.
        epsilon: the claim under test, >= 0.
        delta: its delta, in [0, 1].

    Raises:
        ValueError: counts out of order, or epsilon or delta out of range.
    """
    from scipy import special, stats

    _check_counts(m, r, v)
    if not (epsilon >= 0 and 0 <= delta <= 1):
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon!r}, {delta!r}")
    if v == 0:
        return 1.0
    q = float(special.expit(epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))
    if delta == 0:
        return min(tail, 1.0)
    # P[B = v - 1], P[B = v - 2], ..., P[B = 0]: cumulative sums are P[v - i <= B < v].
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)
    spread = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
    return min(tail + 2 * m * delta * spread, 1.0)


def epsilon_lower_bound(
    m: int, r: int, v: int, delta: float, confidence: float = DEFAULT_CONFIDENCE
) -> float:
    """The largest epsilon that ``v`` correct guesses out of ``r`` reject at ``confidence``.

    The test of the claim "(eps, delta)-DP" rejects when :func:`one_run_p_value` is at most
    1 - confidence. The p-value grows with eps (the binomial's success rate does; the delta
    term was checked non-decreasing on a grid of m, r, v and delta, see the tests), so the
    rejected claims are an interval [0, bound); bisection finds its end to 1e-7 and returns the
    end that is still rejected, so the bound errs low. 0 when even eps = 0 is not rejected.

    Args:
        m, r, v: canaries, guesses and correct guesses (see :func:`one_run_p_value`).
        delta: the delta of the claim under test (the run's delta).
        confidence: in (0, 1); 0.95 is the paper's and ours.

    Returns:
        The bound, finite: r correct guesses reject at most eps = logit((1 - confidence)^(1/r))
        (delta = 0), so even a run without noise gets a finite bound that grows with r.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    level = 1 - confidence
    if one_run_p_value(m, r, v, 0.0, delta) > level:
        return 0.0
    low, high = 0.0, 1.0
    while one_run_p_value(m, r, v, high, delta) <= level:
        low, high = high, 2 * high
    while high - low > 1e-7:
        middle = (low + high) / 2
        if one_run_p_value(m, r, v, middle, delta) <= level:
            low = middle
        else:
            high = middle
    return low


# --- guesses ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Guesses:
    """The auditor's guesses: +1 "in", -1 "out", 0 abstain, one per canary."""

    signs: NDArray[np.int8]

    @property
    def count(self) -> int:
        return int(np.count_nonzero(self.signs))

    def correct(self, included: NDArray[np.bool_]) -> tuple[int, int]:
        """Correct "in" and correct "out" guesses against the coins."""
        return (
            int(np.sum((self.signs == 1) & included)),
            int(np.sum((self.signs == -1) & ~included)),
        )


def guess(scores: NDArray[np.floating], r: int) -> Guesses:
    """Guesses "in" for the ``r // 2`` highest scores and "out" for the ``r - r // 2`` lowest;
    abstains on the rest.

    Ties are broken by canary index (stable sort), which the coins do not depend on, so the
    guesses are a function of the released output and the public design only, as the theorem
    requires.

    Raises:
        ValueError: r is not in [1, len(scores)].
    """
    m = len(scores)
    if not 1 <= r <= m:
        raise ValueError(f"the number of guesses must lie in [1, {m}], got {r}")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    signs = np.zeros(m, dtype=np.int8)
    guesses_in = r // 2
    signs[order[:guesses_in]] = 1
    signs[order[m - (r - guesses_in) :]] = -1
    return Guesses(signs)


# --- scores -------------------------------------------------------------------------------------


def white_box_scores(pinned_counts: NDArray[np.integer]) -> NDArray[np.float64]:
    """Each canary's score: the sum over iterations of its pinned candidate's noisy count.

    Args:
        pinned_counts: (iterations, m) noisy counts (``RunResult.pinned_counts``), DP outputs.
    """
    counts = np.asarray(pinned_counts)
    if counts.ndim != 2:
        raise ValueError(f"pinned counts must be (iterations, m), got shape {counts.shape}")
    return counts.sum(axis=0).astype(np.float64)


def black_box_scores(
    canaries: NDArray[np.float32],
    canary_labels: NDArray[np.int64],
    synthetic: NDArray[np.float32],
    synthetic_labels: NDArray[np.int64],
) -> NDArray[np.float64]:
    """Each canary's score: minus its squared L2 distance to the nearest released synthetic
    sample of its label (embeddings prepared for the job's metric); -inf where that label has
    no synthetic sample.

    Args:
        canaries: (m, d) canary embeddings.
        canary_labels: (m,) their labels.
        synthetic: (n, d) embeddings of the released synthetic samples.
        synthetic_labels: (n,) their labels.
    """
    scores = np.full(len(canaries), -np.inf)
    for label in np.unique(canary_labels).tolist():
        mine, theirs = canary_labels == label, synthetic[synthetic_labels == label]
        if len(theirs) == 0:
            continue
        a, b = canaries[mine].astype(np.float64), theirs.astype(np.float64)
        squared = (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]
        scores[mine] = -np.maximum(squared.min(axis=1), 0.0)
    return scores


# --- canaries -----------------------------------------------------------------------------------


class CanaryDesign(Protocol):
    """Makes an audit's canaries for one variation API.

    Canaries must be reachable by the generator (records it could draw) and far from real data,
    so that real records rarely vote for a canary's pinned candidate.
    """

    def make(self, api: VariationApi, m: int, rng: np.random.Generator) -> Samples:
        """m distinct canaries, labels spread evenly (canary i has label i mod #labels), with
        the generator parameters that draw them."""
        ...

    def describe(self, api: VariationApi) -> dict[str, Any]:
        """The design in words and numbers, for the report."""
        ...


class DrawTextCanaries:
    """Digits drawn by ``drawtext`` with legal but unusual parameters.

    Each canary is its label's text at one of the two smallest font sizes of the API's range
    (10-11 px on 28 px: MNIST's digits fill about 20 px), with the thickest stroke, turned by
    75-100% of the largest rotation either way, with its ink centre in a corner of the allowed
    offsets; the font is uniform over the pool. ``DrawText.random`` draws such a sample with
    small but nonzero probability, so the generator reaches every canary, while real digits
    are larger, upright and centred.

    Real records still vote for a few canaries' candidates, which only weakens the audit (it
    adds to "in" and "out" scores alike). Measured on the MNIST stand-in (demo job, 2,000
    canaries, no noise): 1-7 of the ~1,000 excluded canaries got a real vote per iteration, and
    all 200 guesses were right. Of the variants tried there, thin small digits drew 7-13 such
    canaries per iteration and thin large ones 33-83.
    """

    ROTATION_SHARE = (0.75, 1.0)
    SIZES = 2
    MAX_REDRAWS = 100

    def _ranges(self, api: DrawText) -> dict[str, Any]:
        s = api.settings
        low = s.font_size_range[0]
        return {
            "font_size": [low, min(low + self.SIZES - 1, s.font_size_range[1])],
            "stroke_width": s.stroke_width_range[1],
            "abs_rotation_deg": [self.ROTATION_SHARE[0] * s.max_rotation, s.max_rotation],
            "abs_offset_px": s.max_offset,
        }

    def describe(self, api: VariationApi) -> dict[str, Any]:
        drawtext = _drawtext(api)
        return {
            "name": "drawtext-small-bold-turned-corner",
            "what": (
                "each label's digit drawn by the drawtext API at its smallest font sizes with the "
                "thickest stroke, turned near the largest rotation, ink centre in an offset "
                "corner, font uniform over the pool: legal drawtext parameters, unlike real digits"
            ),
            "fonts": len(drawtext.font_pool),
            **self._ranges(drawtext),
        }

    def _params(self, api: DrawText, labels: NDArray[np.int64], rng: np.random.Generator) -> dict:
        n, ranges = len(labels), self._ranges(api)
        size_low, size_high = ranges["font_size"]
        turn_low, turn_high = ranges["abs_rotation_deg"]
        corner = ranges["abs_offset_px"]
        return {
            "font": rng.integers(0, len(api.font_pool), size=n, dtype=np.int64),
            "font_size": rng.integers(size_low, size_high + 1, size=n, dtype=np.int64),
            "stroke_width": np.full(n, ranges["stroke_width"], dtype=np.int64),
            "rotation": rng.choice([-1.0, 1.0], size=n) * rng.uniform(turn_low, turn_high, n),
            "text": np.array(
                [api.texts[label][0] for label in labels.tolist()], dtype=np.str_
            ).reshape(n),
            "offset_x": rng.choice([-corner, corner], size=n),
            "offset_y": rng.choice([-corner, corner], size=n),
            # Neither slanted nor widened: the unusual parameters above set canaries apart.
            "shear": np.zeros(n),
            "scale_x": np.full(n, np.clip(1.0, *api.settings.scale_x_range)),
        }

    def make(self, api: VariationApi, m: int, rng: np.random.Generator) -> Samples:
        drawtext = _drawtext(api)
        labels = np.arange(m, dtype=np.int64) % len(drawtext.label_names)
        params = self._params(drawtext, labels, rng)
        images = drawtext.renderer.render(params)
        # Two equal canaries would share one candidate (duplicates are merged before the vote):
        # redraw until every image is distinct.
        for _ in range(self.MAX_REDRAWS):
            _, first = np.unique(images.reshape(m, -1), axis=0, return_index=True)
            repeated = np.setdiff1d(np.arange(m), first)
            if not len(repeated):
                break
            fresh = self._params(drawtext, labels[repeated], rng)
            for key, column in fresh.items():
                params[key][repeated] = column
            images[repeated] = drawtext.renderer.render(fresh)
        else:
            raise PrivevoError(
                f"cannot draw {m} distinct canaries with this font pool; use fewer canaries"
            )
        return Samples(
            ids=np.array([f"audit-canary-{i:06d}" for i in range(m)]),
            labels=labels,
            label_names=drawtext.label_names,
            images=images,
            params=params,
        )


def _drawtext(api: VariationApi) -> DrawText:
    if not isinstance(api, DrawText):
        raise PrivevoError(
            f"the audit's canaries are drawtext renders, but the job's API is "
            f"{type(api).__name__}; audit a drawtext job (e.g. configs/mnist-drawtext.yaml)"
        )
    return api


CANARY_DESIGNS: Registry[CanaryDesign] = Registry("canary design")
"""Canary designs by the name of the variation API they are made for."""
CANARY_DESIGNS.register("drawtext", DrawTextCanaries)


def canary_design(api_name: str) -> CanaryDesign:
    """The canary design for the job's API.

    Raises:
        PrivevoError: no design exists for that API (the message lists those that do).
    """
    if api_name not in CANARY_DESIGNS.names():
        raise PrivevoError(
            f"the audit has no canaries for the {api_name!r} API; it audits "
            f"{', '.join(CANARY_DESIGNS.names())} jobs (e.g. configs/mnist-drawtext.yaml on the "
            "MNIST stand-in)"
        )
    return CANARY_DESIGNS.create(api_name)


def audit_refusals(job: PeJob, plan: AuditPlan) -> list[str]:
    """What keeps ``job`` from being audited with ``plan``, each saying how to fix it.

    Reads the job and the plan alone (no data, no model), so an edge refuses an audit before
    anything is reserved or written.
    """
    problems = plan.problems()
    if job.api not in CANARY_DESIGNS.names():
        problems.append(
            f"the audit has no canaries for the {job.api!r} API; it audits "
            f"{', '.join(CANARY_DESIGNS.names())} jobs (e.g. on the MNIST stand-in)"
        )
    if job.privacy_unit == "user":
        problems.append(
            "the canaries are single records, so an audit tests a record-level run; audit "
            "record-level data"
        )
    return problems


# --- the injected bug (NOT PRIVATE) -------------------------------------------------------------


class WeakenedNoise:
    """NOT PRIVATE: draws with sigma / ``divisor`` while the ledger records sigma.

    A deliberate bug, for showing that the audit has power; nothing but ``privevo audit``'s
    hidden option and the tests build it, and a plain run cannot reach it.
    """

    secure = False

    def __init__(self, inner: NoiseSampler, divisor: float) -> None:
        if not divisor > 1:
            raise ValueError(f"the injected bug divides sigma by a number > 1, got {divisor!r}")
        self.inner, self.divisor = inner, float(divisor)
        self.name = f"NOT-PRIVATE-injected-bug-sigma/{divisor:g}({inner.name})"

    def sample(self, sigma: float, size: int) -> NDArray[np.int64]:
        return self.inner.sample(sigma / self.divisor, size)


def weakened_noise(noise: NoiseFactory, divisor: float) -> NoiseFactory:
    """NOT PRIVATE: ``noise`` with every sampler drawing at sigma / ``divisor``."""

    def factory(key: str) -> NoiseSampler:
        return WeakenedNoise(noise(key), divisor)

    return factory


# --- one audit ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditPlan:
    """What is fixed before the run.

    Attributes:
        canaries: m.
        guesses: r, the guesses made (r // 2 "in", the rest "out"); the others abstain.
        mode: "white-box" (pinned candidates, noisy counts) or "black-box" (distance of each
            canary to the released synthetic samples).
        seed: seed of the canary design and of the inclusion coins, reported.
        confidence: of the bound.
    """

    canaries: int = DEFAULT_CANARIES
    guesses: int = DEFAULT_GUESSES
    mode: AuditMode = "white-box"
    seed: int = 0
    confidence: float = DEFAULT_CONFIDENCE

    def problems(self) -> list[str]:
        """What is wrong with the plan, each saying how to fix it."""
        found = []
        if self.canaries < 2:
            found.append(f"canaries: need at least 2, got {self.canaries}")
        if not 1 <= self.guesses <= self.canaries:
            found.append(
                f"guesses: need 1 to {self.canaries} (the canaries), got {self.guesses}; "
                "a tenth of the canaries is a good choice"
            )
        if self.mode not in AUDIT_MODES:
            found.append(f"mode: {self.mode!r} is none of {', '.join(AUDIT_MODES)}")
        if not 0 < self.confidence < 1:
            found.append(f"confidence: need a number in (0, 1), got {self.confidence}")
        if self.seed < 0:
            found.append(f"seed: need an integer >= 0, got {self.seed}")
        return found

    def rngs(self) -> tuple[np.random.Generator, np.random.Generator]:
        """Independent generators of the canary design and of the inclusion coins."""
        design, coins = np.random.SeedSequence([self.seed, 0x417D17]).spawn(2)
        return np.random.default_rng(design), np.random.default_rng(coins)


def include(m: int, rng: np.random.Generator) -> NDArray[np.bool_]:
    """Each canary's coin: included with probability 1/2, independently."""
    return rng.random(m) < 0.5


def with_canaries(real: Samples, canaries: Samples, included: NDArray[np.bool_]) -> Samples:
    """The audited run's private data: the real records plus the included canaries (as plain
    records: no generator parameters)."""
    if real.label_names != canaries.label_names:
        raise PrivevoError("the canaries and the data must share one label set")
    if np.intersect1d(real.ids, canaries.ids).size:
        raise PrivevoError("a record id of the data equals a canary's id; rename the records")
    chosen = canaries.take(np.flatnonzero(included))
    records = Samples(
        ids=chosen.ids, labels=chosen.labels, label_names=chosen.label_names, images=chosen.images
    )
    return Samples.concat([real, records])


@dataclass(frozen=True)
class AuditResult:
    """One audit's outcome: the bound next to the claim, and how it was reached.

    Attributes:
        plan: the plan it ran.
        claimed_epsilon: what the run's ledger accounts for at ``delta`` (inf without noise).
        delta: the run's delta, used in the bound.
        epsilon_lower_bound: the bound at ``plan.confidence``.
        p_value_at_claim: the probability of this many correct guesses if the claim held
            (None without a claim).
        included: the coins.
        guesses: the guesses.
        design: the canary design, for the report.
        sampler: the name and security of the noise, or None without noise.
        run: the engine's result (the run's releases and final population).
    """

    plan: AuditPlan
    claimed_epsilon: float
    delta: float
    epsilon_lower_bound: float
    p_value_at_claim: float | None
    included: NDArray[np.bool_]
    guesses: Guesses
    design: Mapping[str, Any]
    sampler: Mapping[str, Any] | None
    run: RunResult = field(repr=False)

    @property
    def correct(self) -> int:
        return sum(self.guesses.correct(self.included))

    @property
    def exceeds_claim(self) -> bool:
        return self.epsilon_lower_bound > self.claimed_epsilon

    def report(self, job: PeJob) -> dict[str, Any]:
        """The audit report (JSON values): the bound next to the claim, and the design."""
        plan, claimed = self.plan, self.claimed_epsilon
        correct_in, correct_out = self.guesses.correct(self.included)
        if math.isinf(claimed):
            verdict = "no privacy is claimed (no noise): the bound shows what the audit can see"
        elif self.exceeds_claim:
            verdict = (
                "the bound EXCEEDS the claimed epsilon: this run leaks more than it claims "
                "(with 95% confidence), or the audit's premises fail; investigate"
            )
        else:
            verdict = (
                "the bound is at or below the claimed epsilon: consistent with the claim (an "
                "audit can refute a claim, never prove it)"
            )
        warnings = []
        if self.sampler is not None and not self.sampler["secure"]:
            warnings.append(f"NOT PRIVATE noise: {self.sampler['name']}")
        return {
            "claimed_epsilon": None if math.isinf(claimed) else claimed,
            "epsilon_target": None if math.isinf(job.epsilon) else job.epsilon,
            "delta": self.delta,
            "epsilon_lower_bound": round(self.epsilon_lower_bound, 4),
            "confidence": plan.confidence,
            "exceeds_claim": self.exceeds_claim and not math.isinf(claimed),
            "verdict": verdict,
            "p_value_at_claim": self.p_value_at_claim,
            "method": (
                "one run, Steinke, Nasr & Jagielski 2023 (arXiv:2305.08846, Theorem 3.1): the "
                "largest epsilon whose (epsilon, delta) claim the guesses reject"
            ),
            "mode": plan.mode,
            "score": (
                "sum over iterations of the noisy count of the canary's pinned candidate"
                if plan.mode == "white-box"
                else "minus the squared distance to the nearest released synthetic sample"
            ),
            "m": plan.canaries,
            "r": plan.guesses,
            "guesses": {
                "in": int(np.sum(self.guesses.signs == 1)),
                "out": int(np.sum(self.guesses.signs == -1)),
                "abstained": plan.canaries - self.guesses.count,
                "correct": correct_in + correct_out,
                "correct_in": correct_in,
                "correct_out": correct_out,
            },
            "canaries": {
                "seed": plan.seed,
                "included": int(self.included.sum()),
                "inclusion": "each independently with probability 1/2, from the seed",
                "design": dict(self.design),
            },
            "run": {
                "iterations": job.iterations,
                "num_samples": job.num_samples,
                "k": job.k,
                "lookahead": job.lookahead,
                "sigma": self.run.sigma,
                "noise": None if self.sampler is None else dict(self.sampler),
            },
            "warnings": warnings,
            "budget": BUDGET_NOTE,
        }


@dataclass(frozen=True)
class AuditSetup:
    """What an audit fixes before its run (:func:`prepare_audit`).

    Attributes:
        plan: the plan.
        canaries: the m canaries, public to the auditor.
        included: each canary's coin.
        private: the run's data: the real records plus the included canaries.
        design: the canary design, for the report.
    """

    plan: AuditPlan
    canaries: Samples
    included: NDArray[np.bool_]
    private: Samples = field(repr=False)
    design: Mapping[str, Any]

    @property
    def pinned(self) -> Samples | None:
        """The candidates the run pins beside its population (white-box), else None."""
        return self.canaries if self.plan.mode == "white-box" else None


def prepare_audit(job: PeJob, real: Samples, *, api: VariationApi, plan: AuditPlan) -> AuditSetup:
    """Draws the canaries and their coins from ``plan.seed`` and adds the included ones to
    ``real``: the data and the pinned candidates of the audited run.

    Raises:
        PrivevoError: the plan or the job cannot be audited (:func:`audit_refusals`), or the
            canaries clash with the data.
    """
    problems = audit_refusals(job, plan)
    if real.users is not None and job.privacy_unit == "record":
        problems.append("the records name their users; an audit tests record-level data")
    if problems:
        raise PrivevoError("cannot audit this job: " + "; ".join(problems))
    design = canary_design(job.api)
    design_rng, coin_rng = plan.rngs()
    canaries = design.make(api, plan.canaries, design_rng)
    included = include(plan.canaries, coin_rng)
    return AuditSetup(
        plan=plan,
        canaries=canaries,
        included=included,
        private=with_canaries(real, canaries, included),
        design=design.describe(api),
    )


def conclude_audit(
    setup: AuditSetup,
    job: PeJob,
    result: RunResult,
    *,
    embedder: Embedder,
    sampler: NoiseSampler | None,
) -> AuditResult:
    """Scores the canaries from the run's released output, guesses, and bounds the epsilon.

    Args:
        setup: what :func:`prepare_audit` fixed before the run.
        job: the job as run (its delta is the claim's).
        result: the run of ``job`` on ``setup.private`` with ``setup.pinned`` pinned.
        embedder: the job's embedder (black-box scores embed the canaries and the output).
        sampler: the noise the run drew with, for the report; None without noise.
    """
    from pe_core.privacy import epsilon_for

    plan, canaries, included = setup.plan, setup.canaries, setup.included
    if plan.mode == "white-box":
        if result.pinned_counts is None:
            raise PrivevoError("a white-box audit needs a run with the canaries pinned")
        scores = white_box_scores(result.pinned_counts)
    else:
        scores = black_box_scores(
            prepare_embeddings(embedder.embed(canaries), job.metric),
            canaries.labels,
            prepare_embeddings(embedder.embed(result.population), job.metric),
            result.population.labels,
        )
    guesses = guess(scores, plan.guesses)
    correct = sum(guesses.correct(included))
    events = [entry.event for entry in result.ledger]
    claimed = math.inf if job.no_privacy else epsilon_for(events, job.delta)
    return AuditResult(
        plan=plan,
        claimed_epsilon=claimed,
        delta=job.delta,
        epsilon_lower_bound=epsilon_lower_bound(
            plan.canaries, guesses.count, correct, job.delta, plan.confidence
        ),
        p_value_at_claim=None
        if math.isinf(claimed)
        else one_run_p_value(plan.canaries, guesses.count, correct, claimed, job.delta),
        included=included,
        guesses=guesses,
        design=setup.design,
        sampler=None if sampler is None else {"name": sampler.name, "secure": sampler.secure},
        run=result,
    )


def run_audit(
    job: PeJob,
    real: Samples,
    *,
    api: VariationApi,
    embedder: Embedder,
    plan: AuditPlan,
    state_dir: Path,
    noise: Callable[[NoiseFactory], NoiseFactory] | None = None,
    callbacks: RunCallbacks | None = None,
) -> AuditResult:
    """Runs the job once on ``real`` plus the included canaries, and bounds what it leaked.

    Args:
        job: the job, with its seed; checked against the data by the caller.
        real: the records the job would run on (a public stand-in unless spending their
            budget is intended).
        api: the generator, built for ``real.label_names`` (drawtext).
        embedder: the job's embedder.
        plan: m, r, mode, seed, confidence: fixed before the run.
        state_dir: a fresh private folder for the run's checkpoints, releases and ledger.
        noise: wraps the job's noise factory (the tests' and the hidden option's injected bug,
            :func:`weakened_noise`); None: the job's own noise, OS entropy unless the job asks
            for seeded test noise.
        callbacks: progress callbacks of the run.

    Raises:
        PrivevoError: a bad plan or API, or the run failed.
        ValueError: the job has no seed.
    """
    from pe_core.runner import PrivateEvolution, noise_factory

    if job.seed is None:
        raise ValueError("the job has no seed")
    setup = prepare_audit(job, real, api=api, plan=plan)
    factory, sampler = noise_factory(job, job.seed)
    if noise is not None:
        if job.no_privacy:
            raise PrivevoError("an injected noise bug needs noise: drop --no-privacy")
        factory = noise(factory)
        sampler = factory("report")
    engine = PrivateEvolution(
        job,
        api=api,
        embedder=embedder,
        noise=factory,
        state_dir=state_dir,
        seed=job.seed,
        pinned=setup.pinned,
    )
    result = engine.run(setup.private, callbacks=callbacks)
    return conclude_audit(setup, job, result, embedder=embedder, sampler=sampler)
