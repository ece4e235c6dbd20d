"""The exact discrete Gaussian sampler: distribution, determinism, input checks, registry."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import stats

from pe_core.privacy import (
    MAX_SIGMA,
    NOISE_REGISTRY,
    DiscreteGaussianSampler,
    InsecureSeededSampler,
    NoiseSampler,
    create_noise_sampler,
)
from pe_core.privacy.noise import _ExactDiscreteGaussian, _OsEntropy
from pe_core.registry import UnknownNameError

N_DRAWS = 50_000


def exact_pmf(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Support [-m, m] holding all but ~e^-200 of the mass, and N_Z(0, sigma^2) on it."""
    m = math.ceil(20 * sigma) + 2
    support = np.arange(-m, m + 1)
    weights = np.exp(-(support.astype(float) ** 2) / (2 * sigma**2))
    return support, weights / weights.sum()


def binned(samples: np.ndarray, support: np.ndarray, expected: np.ndarray, min_expected=5.0):
    """Observed and expected counts on [-k, k] with the tails folded into the end bins.

    k is the largest value whose expected count is >= min_expected, as chi-square needs.
    """
    n = len(samples)
    center = len(support) // 2
    k = int(np.max(np.abs(support[n * expected >= min_expected])))
    exp = n * expected[center - k : center + k + 1].copy()
    exp[0] += n * expected[: center - k].sum()
    exp[-1] += n * expected[center + k + 1 :].sum()
    obs = np.bincount(np.clip(samples, -k, k) + k, minlength=2 * k + 1).astype(float)
    return obs, exp


def chi_square_pvalue(samples: np.ndarray, sigma: float) -> float:
    support, pmf = exact_pmf(sigma)
    obs, exp = binned(samples, support, pmf)
    exp *= obs.sum() / exp.sum()  # removes the ~1e-16 rounding that chisquare rejects
    return float(stats.chisquare(obs, exp).pvalue)


# 2.7 is not a dyadic rational: sigma^2 has a 2^100-ish denominator (big-integer path).
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.7, 3.0, 20.0])
def test_seeded_sampler_matches_exact_pmf(sigma):
    samples = InsecureSeededSampler(seed=12345).sample(sigma, N_DRAWS)
    assert samples.dtype == np.int64 and samples.shape == (N_DRAWS,)
    assert chi_square_pvalue(samples, sigma) > 1e-4


@pytest.mark.parametrize("sigma", [0.5, 3.0, 20.0])
def test_mean_zero_and_variance_slightly_below_sigma_squared(sigma):
    support, pmf = exact_pmf(sigma)
    variance = float(np.sum(support.astype(float) ** 2 * pmf))
    fourth = float(np.sum(support.astype(float) ** 4 * pmf))
    # Canonne, Kamath & Steinke show Var < sigma^2, with a gap that vanishes like
    # exp(-2 pi^2 sigma^2): invisible in floating point from sigma ~ 2 on.
    assert variance <= sigma**2
    samples = InsecureSeededSampler(seed=99).sample(sigma, N_DRAWS).astype(float)
    assert abs(samples.mean()) < 5 * math.sqrt(variance / N_DRAWS)
    assert abs(samples.var() - variance) < 5 * math.sqrt((fourth - variance**2) / N_DRAWS)


def test_variance_gap_is_visible_at_small_sigma():
    # At sigma 0.5 the exact variance is ~0.213, well below sigma^2 = 0.25.
    samples = InsecureSeededSampler(seed=5).sample(0.5, N_DRAWS).astype(float)
    assert 0.20 < samples.var() < 0.23


def test_os_entropy_sampler_matches_exact_pmf():
    # Unseeded: a correct sampler fails this with probability 1e-6.
    samples = DiscreteGaussianSampler().sample(3.0, N_DRAWS)
    assert chi_square_pvalue(samples, 3.0) > 1e-6


def test_os_entropy_sampler_calls_differ():
    sampler = DiscreteGaussianSampler()
    assert not np.array_equal(sampler.sample(10.0, 100), sampler.sample(10.0, 100))


def test_matches_opendp_discrete_gaussian():
    dp = pytest.importorskip("opendp.prelude")
    dp.enable_features("contrib")
    sigma, n = 3.0, 20_000
    space = dp.vector_domain(dp.atom_domain(T=int)), dp.l2_distance(T=int)
    theirs = np.asarray(dp.m.make_gaussian(*space, scale=sigma)([0] * n), dtype=np.int64)
    ours = InsecureSeededSampler(seed=2024).sample(sigma, n)
    support, pmf = exact_pmf(sigma)
    obs_ours, _ = binned(ours, support, pmf)
    obs_theirs, _ = binned(theirs, support, pmf)
    # OpenDP is unseeded, so a loose alpha.
    assert stats.chi2_contingency(np.stack([obs_ours, obs_theirs])).pvalue > 1e-6


def test_seeded_sampler_is_deterministic():
    first = InsecureSeededSampler(seed=7).sample(6.416, 500)
    assert np.array_equal(first, InsecureSeededSampler(seed=7).sample(6.416, 500))
    assert not np.array_equal(first, InsecureSeededSampler(seed=8).sample(6.416, 500))


@pytest.mark.parametrize(("num", "den"), [(0, 1), (3, 10), (1, 1), (5, 2), (7, 3)])
def test_exact_bernoulli_exp(num, den):
    rng = random.Random(31)
    exact = _ExactDiscreteGaussian(rng.getrandbits)
    n = 20_000
    hits = sum(exact._bernoulli_exp(num, den) for _ in range(n))
    assert stats.binomtest(hits, n, math.exp(-num / den)).pvalue > 1e-4


@pytest.mark.parametrize("bits", [1, 7, 8, 9, 64, 40_000])
def test_os_entropy_bits_are_in_range(bits):
    entropy = _OsEntropy()
    draws = [entropy.getrandbits(bits) for _ in range(50)]
    assert all(0 <= d < 2**bits for d in draws)
    assert len(set(draws)) > 1


@pytest.mark.parametrize("sampler", [DiscreteGaussianSampler(), InsecureSeededSampler(0)])
def test_sigma_zero_gives_zeros_and_bad_input_is_refused(sampler):
    zeros = sampler.sample(0.0, 5)
    assert zeros.dtype == np.int64 and np.array_equal(zeros, np.zeros(5, dtype=np.int64))
    assert sampler.sample(2.0, 0).shape == (0,)
    assert sampler.sample(2, 3).shape == (3,)
    for sigma in (-1.0, math.nan, math.inf, MAX_SIGMA * 2, True, "1"):
        with pytest.raises(ValueError, match="sigma"):
            sampler.sample(sigma, 3)
    for size in (-1, 2.5):
        with pytest.raises(ValueError, match="size"):
            sampler.sample(1.0, size)


def test_registry_and_protocol():
    secure = create_noise_sampler("discrete-gaussian")
    insecure = create_noise_sampler("insecure-seeded-discrete-gaussian", seed=3)
    assert isinstance(secure, NoiseSampler) and isinstance(insecure, NoiseSampler)
    assert (secure.name, secure.secure) == ("discrete-gaussian", True)
    assert (insecure.name, insecure.secure) == ("insecure-seeded-discrete-gaussian", False)
    assert NOISE_REGISTRY.names() == sorted([secure.name, insecure.name])
    with pytest.raises(UnknownNameError, match="discrete-gaussian"):
        create_noise_sampler("gaussian")


def test_insecure_sampler_says_it_is_not_private():
    assert "NOT PRIVATE" in (InsecureSeededSampler.__doc__ or "")
