"""Privacy accounting for discrete Gaussian releases, with Google's ``dp_accounting`` PLD.

Neighbouring relation: add/remove one private record. Every noisy release is described by a
:class:`DpEvent`; a run's guarantee is the composition of all its events, computed with the
privacy loss distribution (PLD) accountant of ``dp_accounting`` (Koskela et al. 2020; Doroshenko
et al., "Connect the Dots", PETS 2022), which returns a pessimistic upper bound on epsilon.

Why a PE iteration is accounted as k releases of sensitivity 1 (the sensitivity itself is
bounded, with its proof, beside the histogram code): every private record votes for its k
nearest synthetic samples, k DISTINCT bins, with integer weight 1, and its votes depend only on
itself and the public synthetic set. Adding or removing one record therefore changes exactly k
coordinates of the vote vector, each by exactly 1, and leaves the others unchanged. The noise is
i.i.d. N_Z(0, sigma^2) per coordinate, so the privacy loss of the whole noisy vector is the sum
of the losses of the k changed coordinates (unchanged ones contribute zero), i.e. exactly the
privacy loss of k independent 1-d discrete Gaussians with shift 1, whichever k coordinates they
are and in either direction (the discrete Gaussian is symmetric). Releases of all labels at once
are one vector (labels partition the records), and with fewer than k synthetic samples fewer
coordinates change, which is dominated. A noisy label-count vector is one more release of
sensitivity 1 (one record changes one label's count by 1). Over T iterations, composition is
adaptive, which the PLD composition theorem covers.

What the bound rests on: (1) the PLD is built with ``pessimistic_estimate=True``, so every loss
is rounded up and composition tails go to the infinite-loss mass; (2) dp_accounting truncates
the noise to [-ceil(11.6 sigma), ceil(11.6 sigma)], dropping mass m <= 1e-30 per release. For
n releases the true laws P, Q and the truncated ones P', Q' satisfy P(S) <= P'(S) + n m and
Q(S) >= (1 - m)^n Q'(S), so the true delta at epsilon is at most the computed delta at
epsilon - n ln(1/(1 - m)) plus n m: a change of ~1e-27 for n = 1000, below double precision of
any delta in use; (3) the sampler is exact (see ``noise.py``), so the mechanism analysed is the
mechanism run.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from scipy import optimize, special

from pe_core.errors import PrivevoError

Mechanism = Literal["discrete_gaussian"]


class BudgetError(PrivevoError, ValueError):
    """An impossible privacy budget (epsilon, delta or release count); the message says why."""


ACCOUNTANT = f"dp_accounting PLD {importlib.metadata.version('dp-accounting')}"

# The PLD rounds every privacy loss UP to a multiple of this interval (pessimistic), which adds
# at most n * interval to the loss of n composed releases. Tying the interval to the composed
# Gaussian scale mu = sqrt(sum count * (sensitivity / sigma)^2) keeps that bias at most
# _RELATIVE_DISCRETIZATION * mu, under 1% of epsilon since epsilon >~ mu whenever delta < mu / 4
# (so for every useful target), while the number of buckets stays ~23 sqrt(n) / 5e-3 per release
# whatever sigma is: a fixed interval would be far too coarse for large sigma and needlessly fine
# for small sigma. Measured: epsilon 0.06-0.1% above that of a 20x finer grid.
_RELATIVE_DISCRETIZATION = 5e-3
# The composed PLD holds ~2 * 12 mu / interval buckets, i.e. ~4800 n at that interval: 4,000
# releases took 13 s and 1 GiB, and 64,000 (T 1000 with k 64, the largest job PeJob allows) ran
# out of memory. Beyond this many releases the interval stops shrinking, so the bucket count
# (and the time and memory of a calibration: 9-23 s and 0.8 GiB at 64,000 releases, eps 0.01-30,
# delta 1e-12-1e-5) stays bounded, and the bias grows to _RELATIVE_DISCRETIZATION * mu * n / 2048
# (16% of mu at 64,000): still an upper bound on epsilon, only a looser one.
_FINE_RELEASES = 2048

# Calibration stops when its bracket [lo, hi] has hi / lo <= 1 + _SIGMA_RTOL.
_SIGMA_RTOL = 1e-3
# dp_accounting builds the discrete Gaussian PLD point by point over about 23 sigma integers in
# Python (~22 us per sigma unit on one core), so sigma is capped where one evaluation would take
# ~20 s. Such a sigma means noise of a million votes per bin: the request is meaningless for PE.
MAX_CALIBRATED_SIGMA = 1e6


@dataclass(frozen=True)
class DpEvent:
    """One kind of noisy release, repeated ``count`` times with independent noise.

    Attributes:
        mechanism: only "discrete_gaussian": integer values plus N_Z(0, sigma^2) noise.
        sigma: the discrete Gaussian scale parameter (same units as the released counts); 0 means
            no noise at all, i.e. no privacy.
        sensitivity: the most one added or removed record changes each released integer.
        count: how many independent releases of this event (e.g. k for one k-NN vote vector).
        description: free text for humans ("iteration 3 votes"); ignored by the accountant.
    """

    mechanism: Mechanism
    sigma: float
    sensitivity: int = 1
    count: int = 1
    description: str = ""

    def __post_init__(self) -> None:
        if self.mechanism != "discrete_gaussian":
            raise ValueError(f"unsupported mechanism {self.mechanism!r}; use 'discrete_gaussian'")
        if not _is_real(self.sigma) or not 0 <= self.sigma < math.inf:
            raise ValueError(f"sigma must be a finite number >= 0, got {self.sigma!r}")
        if not _is_int(self.sensitivity) or self.sensitivity < 1:
            raise ValueError(f"sensitivity must be an integer >= 1, got {self.sensitivity!r}")
        if not _is_int(self.count) or self.count < 1:
            raise ValueError(f"count must be an integer >= 1, got {self.count!r}")
        object.__setattr__(self, "sigma", float(self.sigma))
        object.__setattr__(self, "sensitivity", int(self.sensitivity))
        object.__setattr__(self, "count", int(self.count))


@dataclass(frozen=True)
class Calibration:
    """The noise scale for a target (epsilon, delta), as returned by :func:`calibrate_sigma`.

    Attributes:
        sigma: discrete Gaussian scale for every release; 0 means NOT PRIVATE (epsilon = inf).
        epsilon: the epsilon the accountant certifies at ``sigma`` (<= the target).
        delta: the target delta.
        releases: number of sensitivity-1 releases composed.
        mechanism: the mechanism calibrated for.
        accountant: the accountant and its version.
    """

    sigma: float
    epsilon: float
    delta: float
    releases: int
    mechanism: Mechanism = "discrete_gaussian"
    accountant: str = ACCOUNTANT


def epsilon_for(events: Iterable[DpEvent], delta: float) -> float:
    """The smallest epsilon for which the composed events are (epsilon, delta)-DP.

    Args:
        events: the releases to compose (empty: no release, epsilon 0).
        delta: in (0, 1).

    Returns:
        A pessimistic upper bound on epsilon; inf if any event has sigma 0.
    """
    _check_delta(delta)
    groups = _groups(events)
    if any(sigma == 0 for sigma, _, _ in groups):
        return math.inf
    return _epsilon(groups, float(delta))


def delta_for(events: Iterable[DpEvent], epsilon: float) -> float:
    """The smallest delta for which the composed events are (epsilon, delta)-DP.

    Args:
        events: the releases to compose (empty: no release, delta 0).
        epsilon: finite, >= 0.

    Returns:
        A pessimistic upper bound on delta; 1 if any event has sigma 0.
    """
    if not _is_real(epsilon) or not 0 <= epsilon < math.inf:
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    groups = _groups(events)
    if any(sigma == 0 for sigma, _, _ in groups):
        return 1.0
    return _delta(groups, float(epsilon))


def calibrate_sigma(epsilon: float, delta: float, releases: int) -> Calibration:
    """The smallest sigma (to ~0.1%) that makes ``releases`` sensitivity-1 releases (eps, delta)-DP.

    Bisection on sigma: the bracket starts at the continuous-Gaussian estimate (Gaussian DP,
    Dong, Roth & Su 2019, used only as a starting point), widens geometrically until the
    accountant confirms that epsilon(lo) > target >= epsilon(hi), and is halved (geometrically)
    until hi / lo <= 1.001. The upper end is returned, so ``epsilon_for`` at the returned sigma
    is <= the target by construction; the answer never rests on the estimate.

    Use the returned sigma EXACTLY. Below sigma ~ 2 the discrete Gaussian's epsilon is not
    monotone in sigma (the privacy loss lives on a lattice of spacing 1/sigma^2; e.g. 4
    releases at delta 9.137e-5: epsilon 9.93 at sigma 0.900 but 10.004 at 0.910), so rounding
    sigma up is not automatically safe there, and the bracket finds one crossing of the target,
    not necessarily the largest. Any other sigma must be re-checked with :func:`epsilon_for`.

    Args:
        epsilon: target epsilon > 0; inf returns sigma 0 (no noise: NOT PRIVATE).
        delta: target delta in (0, 1).
        releases: number of sensitivity-1 discrete Gaussian releases, >= 1 (for PE: T
            iterations x k votes, plus one if label counts are released).

    Returns:
        The calibration; ``epsilon`` is what the accountant certifies at ``sigma``.

    Raises:
        ValueError: epsilon <= 0 or NaN, delta outside (0, 1), releases < 1, or a sigma above
            :data:`MAX_CALIBRATED_SIGMA` would be needed.
    """
    if not _is_real(epsilon) or not epsilon > 0:
        raise BudgetError(f"epsilon must be > 0 (inf for no privacy), got {epsilon!r}")
    _check_delta(delta)
    if not _is_int(releases) or releases < 1:
        raise BudgetError(f"releases must be an integer >= 1, got {releases!r}")
    epsilon, delta, releases = float(epsilon), float(delta), int(releases)
    if epsilon == math.inf:
        return Calibration(sigma=0.0, epsilon=math.inf, delta=delta, releases=releases)

    def private_enough(sigma: float) -> bool:
        if sigma > MAX_CALIBRATED_SIGMA:
            raise BudgetError(
                f"epsilon={epsilon:g} with delta={delta:g} over {releases} releases needs "
                f"sigma > {MAX_CALIBRATED_SIGMA:g}; raise epsilon or delta"
            )
        return _epsilon(((sigma, 1, releases),), delta) <= epsilon

    guess = _continuous_gaussian_sigma(epsilon, delta, releases)
    # The pessimistic PLD typically lands 0.05-0.3% above the continuous estimate for sigma > 2;
    # a wrong start only costs a few more widening steps.
    lo, hi, step = guess, guess * 1.004, 1.004
    while not private_enough(hi):
        lo, hi, step = hi, hi * step, step * step
    while private_enough(lo):
        hi, lo, step = lo, lo / step, step * step
    while hi > lo * (1 + _SIGMA_RTOL):
        mid = math.sqrt(lo * hi)
        if private_enough(mid):
            hi = mid
        else:
            lo = mid
    return Calibration(
        sigma=hi, epsilon=_epsilon(((hi, 1, releases),), delta), delta=delta, releases=releases
    )


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_delta(delta: float) -> None:
    if not _is_real(delta) or not 0 < delta < 1:
        raise BudgetError(
            f"delta must lie strictly between 0 and 1, got {delta!r} (delta = 0 is impossible "
            "for Gaussian noise; delta = 1 promises nothing)"
        )


_Groups = tuple[tuple[float, int, int], ...]


def _groups(events: Iterable[DpEvent]) -> _Groups:
    """Merges events by (sigma, sensitivity) into a canonical, hashable (sigma, sens, count)."""
    counts: dict[tuple[float, int], int] = {}
    for event in events:
        if not isinstance(event, DpEvent):
            raise TypeError(f"expected DpEvent, got {type(event).__name__}")
        key = (event.sigma, event.sensitivity)
        counts[key] = counts.get(key, 0) + event.count
    return tuple((sigma, sens, count) for (sigma, sens), count in sorted(counts.items()))


def _composed_pld(groups: _Groups) -> pld_lib.PrivacyLossDistribution:
    total_count = sum(count for _, _, count in groups)
    mu = math.sqrt(sum(count * (sens / sigma) ** 2 for sigma, sens, count in groups))
    interval = _RELATIVE_DISCRETIZATION * mu / min(total_count, _FINE_RELEASES)
    plds = []
    for sigma, sens, count in groups:
        pld = pld_lib.from_discrete_gaussian_mechanism(
            sigma, sensitivity=sens, value_discretization_interval=interval
        )
        plds.append(pld.self_compose(count) if count > 1 else pld)
    composed = plds[0]
    for pld in plds[1:]:
        composed = composed.compose(pld)
    return composed


# Calibration and its checks evaluate the same few points repeatedly; values are cheap to keep.
@functools.lru_cache(maxsize=4096)
def _epsilon(groups: _Groups, delta: float) -> float:
    if not groups:
        return 0.0
    return float(_composed_pld(groups).get_epsilon_for_delta(delta))


@functools.lru_cache(maxsize=4096)
def _delta(groups: _Groups, epsilon: float) -> float:
    if not groups:
        return 0.0
    return float(_composed_pld(groups).get_delta_for_epsilon(epsilon))


def _continuous_gaussian_sigma(epsilon: float, delta: float, releases: int) -> float:
    """Starting point for calibration: sigma of ``releases`` continuous Gaussians (GDP).

    mu-GDP gives delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2) (Cor. 2.13 of
    Dong, Roth & Su, arXiv:1905.02383), increasing in mu; composition gives mu = sqrt(T) / sigma.
    Computed in log space so that large epsilon does not overflow.
    """

    def excess(log_mu: float) -> float:
        mu = math.exp(log_mu)
        first = special.ndtr(-epsilon / mu + mu / 2)
        second = np.exp(epsilon + special.log_ndtr(-epsilon / mu - mu / 2))
        return float(first - second - delta)

    lo, hi = math.log(1e-12), math.log(1e6)
    # excess(hi) > 0 always (delta(1e6) rounds to 1); excess(lo) >= 0 means even mu = 1e-12 is
    # not private enough, so sigma would be absurdly large: start there and let the cap refuse.
    if excess(lo) >= 0:
        return math.sqrt(releases) / math.exp(lo)
    return math.sqrt(releases) / math.exp(optimize.brentq(excess, lo, hi))
