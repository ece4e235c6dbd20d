"""The exact discrete Gaussian sampler: distribution, fast path = reference, entropy, registry."""

from __future__ import annotations

import math
import os
import random
from fractions import Fraction

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
    noise,
)
from pe_core.privacy.noise import (
    _FACTORIAL_FLOOR,
    _WORD,
    _bernoulli_exp_fraction,
    _exp1_coin,
    _exp1_run,
    _first_digits,
    _OsWords,
    _reference_sample,
    _Scale,
    _vector_sample,
)
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


class InjectedWords:
    """Lane i reads row i of ``words``: a lane's stream is fixed, whatever order it is read in.

    Built from injected bytes (``from_bytes``) or from chosen words, to force ties.
    """

    addressed = True

    def __init__(self, words: np.ndarray) -> None:
        self.table = np.asarray(words, dtype=np.int64)
        self.reads = 0

    @classmethod
    def from_bytes(cls, data: bytes, depth: int) -> InjectedWords:
        return cls(np.frombuffer(data, dtype="<u4").reshape(-1, depth))

    def take(self, lanes, positions):
        self.reads += len(lanes)
        return self.table[lanes, positions]

    def word(self, lane, position):
        self.reads += 1
        return int(self.table[lane, position])


def injected(seed: int, lanes: int, depth: int = 256) -> InjectedWords:
    return InjectedWords.from_bytes(random.Random(seed).randbytes(4 * lanes * depth), depth)


def lanes_for(sigma: float, size: int) -> int:
    """More lanes than the fast path can ask for while drawing ``size`` values."""
    return math.ceil(size / _Scale.of(sigma).acceptance_estimate() * 1.5) + 500


@pytest.fixture
def scalar_steps(monkeypatch):
    """Records the name of every step the fast path hands to the scalar code."""
    names: list[str] = []
    original = noise._Lanes.scalar

    def scalar(self, lane, step):
        names.append(step.func.__name__)
        return original(self, lane, step)

    monkeypatch.setattr(noise._Lanes, "scalar", scalar)
    return names


# --- the distribution -------------------------------------------------------------------------


# 2.7 and 6.416 are not dyadic: sigma^2 has a 2^100-ish denominator (the big-integer tables).
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.7, 3.0, 6.416, 20.0, 50.0, 1000.0])
def test_seeded_sampler_matches_exact_pmf(sigma):
    samples = InsecureSeededSampler(seed=12345).sample(sigma, N_DRAWS)
    assert samples.dtype == np.int64 and samples.shape == (N_DRAWS,)
    assert chi_square_pvalue(samples, sigma) > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("sigma", [0.3, 1.0, 1.5, 6.416, 13.26, 50.0])
def test_million_draws_match_exact_pmf(sigma):
    samples = InsecureSeededSampler(seed=777).sample(sigma, 1_000_000)
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


def test_huge_sigma_takes_the_scalar_path_and_stays_centred():
    # t > 2^31: (U, sign) needs two words, and the fast path is not used.
    sigma, n = 3e9, 2_000
    assert _Scale.of(sigma).t > noise._VECTOR_MAX_T and _Scale.of(sigma).uniform_words() == 2
    samples = DiscreteGaussianSampler().sample(sigma, n).astype(float)
    assert abs(samples.mean()) < 5 * sigma / math.sqrt(n)
    assert 0.9 < samples.std() / sigma < 1.1


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


# --- the coins --------------------------------------------------------------------------------


def reader(seed: int):
    rng = random.Random(seed)
    return lambda: rng.getrandbits(32)


@pytest.mark.parametrize(("num", "den"), [(0, 1), (3, 10), (1, 1), (999, 1000), (2, 7)])
def test_exact_bernoulli_exp_fraction(num, den):
    read, n = reader(31), 20_000
    hits = sum(_bernoulli_exp_fraction(read, num, den) for _ in range(n))
    assert stats.binomtest(hits, n, math.exp(-num / den)).pvalue > 1e-4


def test_exp1_coin_and_run_follow_exp_minus_one():
    read, n = reader(41), 40_000
    hits = sum(_exp1_coin(read) for _ in range(n))
    assert stats.binomtest(hits, n, math.exp(-1)).pvalue > 1e-4
    # The run without a limit is CKS's Geometric: P[V >= v] = e^-v; with a limit, min(V, limit).
    runs = np.array([_exp1_run(read, None) for _ in range(n)])
    for v in (1, 2, 3):
        assert stats.binomtest(int((runs >= v).sum()), n, math.exp(-v)).pvalue > 1e-4
    assert max(_exp1_run(read, 2) for _ in range(2_000)) == 2
    assert _exp1_run(read, 0) == 0


def test_exp1_coin_reads_only_as_far_as_needed():
    # V >= 3/4 >= 1/2!: A_2 fails on the first word, K = 2.
    words = iter([3 << 30])
    assert _exp1_coin(lambda: next(words)) is False
    zeros = iter([0, 0, 1 << 31])
    # V in [2^-65, 2^-65 + 2^-96): below 1/k! up to k = 20 (20! < 2^64 < 21!), so K = 21.
    assert _exp1_coin(lambda: next(zeros)) is True


def no_more_words() -> int:
    raise AssertionError("read a word it did not need")


def test_exp1_block_table_agrees_with_the_exact_rule():
    # Every block's first and last word, plus random words: parity of K from the table when the
    # block is pure, and the block is marked mixed whenever a threshold D_k lies inside it.
    starts = np.arange(_WORD >> 16, dtype=np.int64) << 16
    words = np.concatenate(
        [starts, starts + 0xFFFF, np.random.default_rng(3).integers(0, _WORD, 10**5)]
    )
    table = noise._EXP1_BLOCKS[words >> 16]
    j = np.searchsorted(_FACTORIAL_FLOOR, words, side="right") - 1
    pure = table != 2
    assert np.array_equal(table[pure] == 1, (j % 2 == 0)[pure])
    ties = np.isin(words, _FACTORIAL_FLOOR)
    assert np.all(table[ties] == 2)
    for w in random.Random(5).sample(range(_WORD), 300) + _FACTORIAL_FLOOR.tolist():
        block = noise._EXP1_BLOCKS[w >> 16]
        if block != 2:
            assert _exp1_coin(no_more_words, w, _WORD) == (block == 1)


def test_first_digits_are_exact():
    rng = random.Random(9)
    for bits in (1, 20, 33, 45, 59, 60):
        mod = rng.getrandbits(bits) | (1 << (bits - 1)) | 1
        rests = [rng.randrange(mod) for _ in range(200)] + [0, mod - 1]
        got = _first_digits(np.array(rests, dtype=np.int64), mod)
        assert got.tolist() == [(r << 32) // mod for r in rests]


def test_scale_is_the_exact_rational_and_gamma_is_cks_exponent():
    for sigma in (0.3, 1.0, 2.7, 6.416, 1000.5):
        scale = _Scale.of(sigma)
        exact = Fraction(sigma)
        assert Fraction(scale.num, scale.den) == exact * exact
        assert scale.t == max(1, math.floor(exact + Fraction(1, 2)))  # nearest, halves up
        for y in (0, 1, 7, 3 * scale.t):
            whole, rest = scale.gamma(y)
            gamma = (y - exact * exact / scale.t) ** 2 / (2 * exact * exact)
            assert Fraction(whole) + Fraction(rest, scale.gamma_den) == gamma
            assert 0 <= rest < scale.gamma_den


# --- the fast path returns the reference's integers -------------------------------------------


# 1e-3 and 0.3 (t = 1, mostly zeros), integers (int64 tables), non-dyadic values (big-integer
# tables, many distinct |Y| at 12345.678), 1e6 (the largest sigma the accountant calibrates).
@pytest.mark.parametrize("sigma", [1e-3, 0.3, 1.0, 2.7, 6.416, 50.0, 1000.0, 12345.678, 1e6])
def test_fast_path_equals_scalar_reference_on_injected_bytes(sigma):
    size = 1_500
    words = injected(seed=int(sigma * 1000) % 2**31, lanes=lanes_for(sigma, size))
    fast = _vector_sample(_Scale.of(sigma), size, words)
    reference = _reference_sample(_Scale.of(sigma), size, words)
    assert fast.dtype == np.int64 and fast.shape == (size,)
    assert np.array_equal(fast, reference)
    if sigma >= 1:
        assert np.count_nonzero(fast) > size // 2


def tie_words(sigma: float, lanes: int, depth: int = 256) -> InjectedWords:
    """Words that are three times in four some coin's first digit, to force ties.

    The digits: Bernoulli(u / (t k)) of exp(-U/t), D_k of the exp(-1) coins, and the first
    digits of the Gaussian coins of |Y| < 6t, each group drawn equally often.
    """
    scale = _Scale.of(sigma)
    t, mod = scale.t, scale.gamma_den
    small = sorted({(u << 32) // (t * k) for u in range(1, t) for k in range(1, 4)})
    gaussian = sorted(
        {(scale.gamma(y)[1] << 32) // (mod * k) for y in range(6 * t) for k in (1, 2)}
    )
    groups = [np.array(small), _FACTORIAL_FLOOR, np.array(gaussian)]
    rng = np.random.default_rng(int(sigma * 10))
    table = rng.integers(0, _WORD, size=(lanes, depth))
    group = rng.integers(0, 4, size=(lanes, depth))  # 3: a uniform word
    for g, values in enumerate(groups):
        at = group == g
        table[at] = rng.choice(values, size=int(at.sum()))
    return InjectedWords(table)


@pytest.mark.parametrize("sigma", [1.5, 2.7, 4.0])
def test_fast_path_equals_reference_when_first_digits_tie(sigma, scalar_steps, monkeypatch):
    ties: list[int] = []
    original = noise._next_digits

    def next_digits(lanes, who, *rest):
        ties.append(len(who))
        return original(lanes, who, *rest)

    monkeypatch.setattr(noise, "_next_digits", next_digits)
    size = 1_000
    words = tie_words(sigma, lanes_for(sigma, size))
    fast = _vector_sample(_Scale.of(sigma), size, words)
    assert np.array_equal(fast, _reference_sample(_Scale.of(sigma), size, words))
    # Every kind of tie happened: small coins (vectorised), exp(-1) coins and Gaussian coins
    # (handed to the scalar code).
    assert sum(ties) > 20, ties
    assert {"_exp1_coin", "_lazy_compare"} <= set(scalar_steps)


def test_fast_path_equals_reference_when_numbers_outgrow_int64(scalar_steps, monkeypatch):
    # Lowered limits stand in for the int64 bounds, which real sigmas almost never reach.
    monkeypatch.setattr(noise, "_VECTOR_DEN_LIMIT", 64)
    monkeypatch.setattr(noise, "_WHOLE_CLIP", 1)
    sigma, size = 20.0, 1_000
    words = injected(seed=11, lanes=lanes_for(sigma, size))
    fast = _vector_sample(_Scale.of(sigma), size, words)
    assert np.array_equal(fast, _reference_sample(_Scale.of(sigma), size, words))
    assert {"_bernoulli_exp_fraction", "_exp1_run"} <= set(scalar_steps)


def test_fast_path_equals_reference_across_batches(monkeypatch):
    # Small batches: later batches number their lanes after the earlier ones' lanes.
    monkeypatch.setattr(noise, "_MAX_BATCH", 300)
    sigma, size = 6.416, 1_000
    words = injected(seed=12, lanes=lanes_for(sigma, size))
    fast = _vector_sample(_Scale.of(sigma), size, words)
    assert np.array_equal(fast, _reference_sample(_Scale.of(sigma), size, words))


@pytest.mark.slow
@pytest.mark.parametrize("sigma", [0.7, 3.3, 100.0, 777.77])
def test_fast_path_equals_reference_on_many_draws(sigma):
    size = 20_000
    words = injected(seed=5, lanes=lanes_for(sigma, size))
    fast = _vector_sample(_Scale.of(sigma), size, words)
    assert np.array_equal(fast, _reference_sample(_Scale.of(sigma), size, words))


# --- entropy ----------------------------------------------------------------------------------


def test_os_words_hand_out_each_injected_word_once_in_order():
    reads: list[int] = []

    def counting_bytes(n: int) -> bytes:
        start = sum(reads) // 4
        reads.append(n)
        return np.arange(start, start + n // 4, dtype="<u4").tobytes()

    source = _OsWords(counting_bytes)
    got = [source.take(np.zeros(3), None), [source.word(0, 0)]]
    got += [source.take(np.zeros(n), None) for n in (5, _OsWords.BLOCK_WORDS, 7, 0, 2)]
    words = np.concatenate(got)
    assert words.dtype == np.int64
    assert np.array_equal(words, np.arange(len(words)))
    # Large reads only: a refill reads at least a block, and only what the request lacks.
    assert reads[0] == 4 * _OsWords.BLOCK_WORDS and len(reads) == 2


def test_os_entropy_sampler_calls_differ():
    sampler = DiscreteGaussianSampler()
    assert not np.array_equal(sampler.sample(10.0, 100), sampler.sample(10.0, 100))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_children_draw_different_noise():
    # A read-ahead buffer kept beyond one call would be copied into both children, which would
    # then emit the same noise.
    sampler = DiscreteGaussianSampler()
    sampler.sample(10.0, 100)
    outputs = []
    for _ in range(2):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            try:
                os.close(read_end)
                os.write(write_end, sampler.sample(10.0, 64).tobytes())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            outputs.append(np.frombuffer(pipe.read(), dtype=np.int64))
        os.waitpid(pid, 0)
    outputs.append(sampler.sample(10.0, 64))
    assert all(len(o) == 64 for o in outputs)
    assert not np.array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2])


# --- interface --------------------------------------------------------------------------------


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
