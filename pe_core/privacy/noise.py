"""Exact discrete Gaussian noise for integer vote counts.

The sampler is Algorithm 3 of Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential
Privacy" (arXiv:2004.00010): rejection sampling from a discrete Laplace proposal (their
Algorithm 2), with every coin an exact Bernoulli(exp(-gamma)) for a rational gamma (their
Algorithm 1). No floating-point number takes part in any decision, so the output law is exactly
N_Z(0, sigma^2), P[X = x] proportional to exp(-x^2 / (2 sigma^2)) on the integers, for the sigma
given, taken as the exact rational value of its IEEE double. Nothing is rounded: the accountant
certifies the very sigma that is sampled. A floating-point sampler would leak through rounding
artefacts (Mironov, CCS 2012) and would not be the mechanism the accountant analyses.

How randomness is consumed (identical in the fast path and in the scalar reference):

- Candidates are numbered 0, 1, 2, ... ("lanes"). A lane makes ONE attempt of CKS with every
  rejection loop flattened into one accept/reject of the whole attempt: draw U and a sign, keep
  with probability exp(-U/t), add t * Geometric, drop "-0", keep with probability
  exp(-gamma(|Y|)). Attempts are i.i.d. and a rejection anywhere only rescales
  P[attempt yields y] by a constant, so an accepted attempt has exactly the law of CKS's nested
  loops. The output is the values of the first ``size`` accepted lanes, in lane order.
- Lane i reads its own stream of uniform 32-bit words, word j being (i, j). A coin
  Bernoulli(a/b), a/b rational, compares a uniform real V in [0, 1) with a/b one 32-bit digit at
  a time: with W the next word and h = floor(a 2^32 / b), W < h means V < a/b, W > h means
  V > a/b, and W == h (probability 2^-32) moves on to the next digit of both. A coin of
  probability 0 or 1 draws nothing. The sub-coins Bernoulli(1/k) of Algorithm 1 at gamma = 1
  (the Geometric and the integer part of gamma) are read off ONE uniform, coin k succeeding iff
  V < 1/k! (:func:`_exp1_coin`). (U, sign) is W mod 2t for one word W (two above
  t = 2^31) below the largest multiple L of 2t that fits; W >= L rejects the attempt.

The fast path (:func:`_vector_sample`) runs many lanes at once in numpy int64, one round of
draws per coin over the lanes still undecided, and hands a lane to the scalar code for one step
only where int64 would not hold the numbers or the first digits tie. The reference
(:func:`_reference_sample`) runs the lanes one after another with Python integers. Given the same
words per lane both return the same integers; the tests check this on injected words, including
words chosen to tie. In production nothing records a lane's words: each request is served fresh
OS-CSPRNG words, so every lane sees i.i.d. uniform words independent of all other lanes, which
is all the argument above needs.

Entropy: production reads ``os.urandom`` in 1 MiB blocks into a buffer owned by one ``sample``
call and dropped when it returns. A buffer that outlived a call (module or instance level) would
be copied into every process forked from its owner, and the children would emit identical noise.
"""

from __future__ import annotations

import math
import numbers
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from pe_core.registry import Registry

# Noise is returned as int64; a sample exceeds 40 sigma with probability below exp(-800), so this
# cap keeps every value far inside the int64 range (about 9.2e18).
MAX_SIGMA = 1e15

WORD_BITS = 32
_WORD = 1 << WORD_BITS

# The fast path computes floor(a 2^32 / b) and a 2^32 mod b in int64, so it needs b < 2^31; a
# lane whose next coin has a larger b takes that coin in the scalar code. Tests lower it.
_VECTOR_DEN_LIMIT = 1 << 31
# Laplace scales t up to this run vectorised (sigma up to ~1.7e7, beyond MAX_CALIBRATED_SIGMA);
# larger ones take the scalar reference, which handles any t with Python integers.
_VECTOR_MAX_T = 1 << 24
# floor(gamma) is held in int64 up to this; a lane past it finishes in the scalar code.
_WHOLE_CLIP = 1 << 62
# Lanes per batch: bounds memory (a few int64 arrays of this length) for any size.
_MAX_BATCH = 1 << 20

Words = NDArray[np.int64]
Flags = NDArray[np.bool_]
Read = Callable[[], int]
T = TypeVar("T")


@runtime_checkable
class NoiseSampler(Protocol):
    """A source of i.i.d. discrete Gaussian noise.

    Attributes:
        name: the registry name, recorded with every run.
        secure: True only when the entropy is cryptographically secure, i.e. the noise may be
            used for a real privacy guarantee.
    """

    name: str
    secure: bool

    def sample(self, sigma: float, size: int) -> NDArray[np.int64]:
        """Draws ``size`` i.i.d. samples of N_Z(0, sigma^2).

        Args:
            sigma: the scale parameter (not exactly the standard deviation, which is slightly
                below sigma); 0 gives zeros.
            size: number of samples.

        Returns:
            A (size,) int64 array.

        Raises:
            ValueError: sigma is negative, NaN, infinite or above :data:`MAX_SIGMA`, or size < 0.
        """
        ...


class WordSource(Protocol):
    """Uniform 32-bit words addressed by (lane, position in that lane's stream).

    Attributes:
        addressed: whether the words depend on the address. Fresh-entropy sources do not
            (any word is as good as any other), which spares the fast path its bookkeeping.
    """

    addressed: bool

    def take(self, lanes: Words, positions: Words | None) -> Words:
        """Word ``positions[k]`` of lane ``lanes[k]`` for every k, as int64 in [0, 2^32).

        ``positions`` is None exactly when ``addressed`` is False.
        """
        ...

    def word(self, lane: int, position: int) -> int:
        """One word, for the scalar code."""
        ...


# --- the scalar reference: CKS Algorithms 1-3 on one lane, Python integers ---------------------


def _lazy_compare(read: Read, num: int, den: int) -> bool:
    """True iff a uniform real V in [0, 1) is below num/den, digit by digit (0 <= num < den)."""
    while True:
        digit, num = divmod(num << WORD_BITS, den)
        word = read()
        if word != digit:
            return word < digit


def _bernoulli(read: Read, num: int, den: int) -> bool:
    """Bernoulli(num/den), exact; probability 0 or 1 draws nothing."""
    if num <= 0:
        return False
    if num >= den:
        return True
    return _lazy_compare(read, num, den)


def _bernoulli_exp_fraction(read: Read, num: int, den: int, k: int = 1) -> bool:
    """Bernoulli(exp(-num/den)) for 0 <= num < den (CKS Algorithm 1, gamma in [0, 1)).

    Draws A_k ~ Bernoulli(gamma / k) for k = 1, 2, ... until the first failure; the index of
    that failure is odd with probability exactly exp(-gamma) (alternating Taylor series).
    ``k`` > 1 resumes a run whose first k - 1 coins succeeded (the fast path's hand-over).
    """
    while _bernoulli(read, num, den * k):
        k += 1
    return k % 2 == 1


def _exp1_coin(read: Read, prefix: int = 0, scale: int = 1) -> bool:
    """Bernoulli(exp(-1)): CKS Algorithm 1 at gamma = 1 with its coins read off one uniform V.

    Algorithm 1 draws A_k ~ Bernoulli(1/k), k = 1, 2, ..., and returns whether the first
    failure K is odd. Letting A_k succeed iff V < 1/k! gives A_k exactly that law given the
    earlier successes (P[V < 1/k! | V < 1/(k-1)!] = 1/k), so K is the first k with V >= 1/k!.
    V is read 32 bits at a time, only until the comparison is decided; it is known to lie in
    [prefix / scale, (prefix + 1) / scale), which lets the fast path resume a coin it began.
    """
    k, factorial = 2, 2
    while True:
        if (prefix + 1) * factorial <= scale:  # V < 1/k!: A_k succeeds
            k += 1
            factorial *= k
        elif prefix * factorial >= scale:  # V >= 1/k!: A_k is the first failure
            return k % 2 == 1
        else:
            prefix = (prefix << WORD_BITS) | read()
            scale <<= WORD_BITS


def _exp1_run(read: Read, limit: int | None, successes: int = 0) -> int:
    """Successes of Bernoulli(exp(-1)) coins up to the first failure or ``limit`` of them.

    With no limit this is CKS's Geometric V (Algorithm 2); with ``limit`` = floor(gamma) it is
    the integer part of Bernoulli(exp(-gamma)) = exp(-1)^floor(gamma) * exp(-frac(gamma)), which
    fails as soon as one coin fails. ``successes`` resumes a run (the fast path's hand-over).
    """
    while limit is None or successes < limit:
        if not _exp1_coin(read):
            break
        successes += 1
    return successes


@dataclass(frozen=True)
class _Scale:
    """sigma^2 = num / den exactly, and the Laplace scale t, the integer nearest sigma (>= 1).

    CKS set t = floor(sigma) + 1, but Algorithm 3 is exact for every t >= 1: the proposal
    times the acceptance is exp(-|y|/t - (|y| - sigma^2/t)^2 / (2 sigma^2)) =
    exp(-y^2 / (2 sigma^2) - sigma^2 / (2 t^2)), proportional to the target for any t. The
    nearest integer accepts more often below sigma ~ 3 (0.48 instead of 0.35 at sigma 1).
    """

    num: int
    den: int
    t: int

    @classmethod
    def of(cls, sigma: float) -> _Scale:
        exact = Fraction(float(sigma))
        p, q = exact.numerator, exact.denominator
        return cls(p * p, q * q, max(1, math.floor(exact + Fraction(1, 2))))

    @property
    def gamma_den(self) -> int:
        """The denominator 2 num den t^2 of every gamma."""
        return 2 * self.num * self.den * self.t * self.t

    def gamma(self, y: int) -> tuple[int, int]:
        """floor and remainder of gamma(y) * gamma_den for the Gaussian coin of |Y| = y.

        CKS keep y with probability exp(-(y - sigma^2/t)^2 / (2 sigma^2)); over the integers
        that exponent is (y den t - num)^2 / (2 num den t^2).
        """
        gap = y * self.den * self.t - self.num
        return divmod(gap * gap, self.gamma_den)

    def uniform_words(self) -> int:
        """Words per draw of (U, sign) uniform on [0, 2t): one for t < 2^31."""
        return -(-(2 * self.t - 1).bit_length() // WORD_BITS)

    def acceptance_estimate(self) -> float:
        """P[an attempt is accepted], roughly (floats here only size the batches)."""
        t, sigma2 = self.t, self.num / self.den
        # P[attempt yields y] = (1 - e^-1) / (2t) e^(-|y|/t) exp(-gamma(|y|)), for both signs.
        ys = np.arange(0.0, 40.0 * t + 1) if t <= 500 else np.linspace(0.0, 40.0 * t, 20_001)
        mass = np.exp(-ys / t - (ys - sigma2 / t) ** 2 / (2 * sigma2))
        total = 2 * mass.sum() - mass[0] if t <= 500 else 2 * np.trapezoid(mass, ys)
        return max(float((1 - math.exp(-1)) / (2 * t) * total), 1e-3)


def _reference_attempt(scale: _Scale, read: Read) -> int | None:
    """One flattened CKS attempt on one lane: the value, or None when it is rejected."""
    t = scale.t
    n_words = scale.uniform_words()
    span = 1 << (WORD_BITS * n_words)
    draw = 0
    for _ in range(n_words):
        draw = (draw << WORD_BITS) | read()
    if draw >= span - span % (2 * t):
        return None
    u, negative = divmod(draw % (2 * t), 2)
    # Discrete Laplace (CKS Algorithm 2): keep U with probability exp(-U/t), add t Geometric.
    if not _bernoulli_exp_fraction(read, u, t):
        return None
    magnitude = u + t * _exp1_run(read, None)
    if negative and magnitude == 0:  # -0 would count 0 twice
        return None
    # CKS Algorithm 3: keep with probability exp(-gamma), integer part first.
    whole, rest = scale.gamma(magnitude)
    if _exp1_run(read, whole) < whole:
        return None
    if not _bernoulli_exp_fraction(read, rest, scale.gamma_den):
        return None
    return -magnitude if negative else magnitude


def _lane_reader(words: WordSource, lane: int, position: int = 0) -> tuple[Read, list[int]]:
    """A scalar reader of lane ``lane`` from ``position``, and a cell holding its next position."""
    cell = [position]

    def read() -> int:
        word = words.word(lane, cell[0])
        cell[0] += 1
        return word

    return read, cell


def _reference_sample(scale: _Scale, size: int, words: WordSource) -> NDArray[np.int64]:
    """The scalar reference: lanes 0, 1, ... one at a time until ``size`` are accepted."""
    out = np.zeros(size, dtype=np.int64)
    lane = filled = 0
    while filled < size:
        value = _reference_attempt(scale, _lane_reader(words, lane)[0])
        lane += 1
        if value is not None:
            out[filled] = value
            filled += 1
    return out


# --- the fast path: the same attempts for many lanes at once, int64 numpy ---------------------


class _Lanes:
    """The lanes of one batch: global ids and, for addressed sources, each one's next position."""

    def __init__(self, words: WordSource, first: int, count: int) -> None:
        self.words = words
        self.first = first
        self.positions = np.zeros(count, dtype=np.int64) if words.addressed else None

    def draw(self, who: Words) -> Words:
        """The next word of each lane in ``who`` (local indices, each at most once)."""
        if self.positions is None:
            return self.words.take(who, None)
        positions = self.positions[who]
        self.positions[who] = positions + 1
        return self.words.take(who + self.first, positions)

    def scalar(self, lane: int, step: Callable[[Read], T]) -> T:
        """Runs ``step`` with a scalar reader of local lane ``lane``, keeping its position."""
        start = 0 if self.positions is None else int(self.positions[lane])
        read, cell = _lane_reader(self.words, self.first + lane, start)
        result = step(read)
        if self.positions is not None:
            self.positions[lane] = cell[0]
        return result


def _coins(lanes: _Lanes, who: Words, shifted: Words, den: int) -> Flags:
    """Bernoulli(num/den) for the lanes ``who``, given num * 2^32; 0 < num < den < 2^31."""
    digit = shifted // den
    word = lanes.draw(who)
    hit = word < digit
    tied = np.flatnonzero(word == digit)
    if tied.size:
        _next_digits(lanes, who[tied], shifted[tied] - digit[tied] * den, den, hit, tied)
    return hit


def _next_digits(lanes: _Lanes, who: Words, rest: Words, den: int, hit: Flags, at: Words) -> None:
    """Settles tied coins (first digits equal) digit by digit, as _lazy_compare: hit[at]."""
    while at.size:
        digit = (rest << WORD_BITS) // den
        word = lanes.draw(who)
        hit[at] = word < digit
        again = np.flatnonzero(word == digit)
        who, at, rest = who[again], at[again], (rest[again] << WORD_BITS) - digit[again] * den


def _exp_fraction_small(lanes: _Lanes, who: Words, u: Words, t: int) -> Flags:
    """Bernoulli(exp(-u/t)) for the lanes ``who`` (0 <= u < t), as _bernoulli_exp_fraction."""
    result = np.ones(len(who), dtype=bool)
    active = np.flatnonzero(u)
    shifted = u[active] << WORD_BITS
    k = 1
    while active.size:
        if t * k >= _VECTOR_DEN_LIMIT:
            for i in active.tolist():
                ui = int(u[i])
                step = partial(_bernoulli_exp_fraction, num=ui, den=t, k=k)
                result[i] = lanes.scalar(int(who[i]), step)
            break
        hit = _coins(lanes, who[active], shifted, t * k)
        result[active[np.flatnonzero(~hit)]] = k % 2 == 1
        going = np.flatnonzero(hit)
        active, shifted = active[going], shifted[going]
        k += 1
    return result


# D_k = floor(2^32 / k!) and C_k = ceil(2^32 / k!) for k = 13, 12, ..., 2 (13! > 2^32 > 12!).
_FACTORIAL_FLOOR = np.array([_WORD // math.factorial(k) for k in range(13, 1, -1)])
_FACTORIAL_CEIL = np.array([-(-_WORD // math.factorial(k)) for k in range(13, 1, -1)])
_BLOCK_BITS = 16


def _exp1_blocks() -> NDArray[np.int8]:
    """Per block of 2^16 first words: 1 if every W in it gives K odd, 0 if even, 2 if mixed.

    K = the first k with D_k <= W is constant on a block holding no D_k, and no W there ties
    (W == D_K); the 8 blocks holding a D_k (0.01% of words) take the exact path.
    """
    size = 1 << _BLOCK_BITS
    starts = np.arange(_WORD >> _BLOCK_BITS, dtype=np.int64) << _BLOCK_BITS
    j = np.searchsorted(_FACTORIAL_FLOOR, starts, side="right") - 1  # K = 13 - j
    blocks = (j % 2 == 0).astype(np.int8)
    blocks[np.unique(_FACTORIAL_FLOOR // size)] = 2
    return blocks


_EXP1_BLOCKS = _exp1_blocks()


def _exp1_coins(lanes: _Lanes, who: Words) -> Flags:
    """:func:`_exp1_coin` for the lanes ``who``, decided by the first word but for ~3e-9.

    With V's first word W, A_k succeeds for sure iff W < D_k, so K is the first k with
    D_k <= W; A_K then fails for sure iff W >= C_K, else (W == D_K < C_K) the scalar code reads
    on. A table over W's top 16 bits gives K's parity for all but a few blocks.
    """
    word = lanes.draw(who)
    block = _EXP1_BLOCKS[word >> _BLOCK_BITS]
    result: Flags = block == 1
    mixed = np.flatnonzero(block == 2)
    if mixed.size:
        j = np.searchsorted(_FACTORIAL_FLOOR, word[mixed], side="right") - 1
        result[mixed] = j % 2 == 0
        for i in mixed[word[mixed] < _FACTORIAL_CEIL[j]].tolist():
            step = partial(_exp1_coin, prefix=int(word[i]), scale=_WORD)
            result[i] = lanes.scalar(int(who[i]), step)
    return result


def _exp1_runs(lanes: _Lanes, who: Words, limit: Words | None) -> Words:
    """:func:`_exp1_run` for the lanes ``who``: successes, at most ``limit`` (None: no limit)."""
    successes = np.zeros(len(who), dtype=np.int64)
    active = np.arange(len(who)) if limit is None else np.flatnonzero(limit > 0)
    cap = None if limit is None else limit[active]
    count = np.zeros(active.size, dtype=np.int64)
    while active.size:
        won = _exp1_coins(lanes, who[active])
        count += won
        if cap is not None:
            won &= count < cap
        lost, won_at = np.flatnonzero(~won), np.flatnonzero(won)
        successes[active[lost]] = count[lost]
        active, count = active[won_at], count[won_at]
        cap = None if cap is None else cap[won_at]
    return successes


def _first_digits(rest: Words, mod: int) -> Words:
    """floor(rest 2^32 / mod) for 0 <= rest < mod < 2^61, by long division in safe chunks."""
    chunk = 62 - mod.bit_length()
    digits = np.zeros_like(rest)
    done = 0
    while done < WORD_BITS:
        bits = min(chunk, WORD_BITS - done)
        shifted = rest << bits
        quotient = shifted // mod
        rest = shifted - quotient * mod
        digits = (digits << bits) | quotient
        done += bits
    return digits


@dataclass(frozen=True)
class _GaussianCoins:
    """The Gaussian coin of each lane, gamma = whole + rest / gamma_den.

    Attributes:
        whole: floor(gamma), at most _WHOLE_CLIP (``clipped`` marks the lanes above it).
        digit: floor(rest 2^32 / gamma_den), the first digit of frac(gamma).
        positive: rest > 0.
        value: each lane's index into ``rests``.
        wholes, rests: the exact floor(gamma) and rest per distinct |Y| (Python integers).
    """

    whole: Words
    clipped: Flags
    digit: Words
    positive: Flags
    value: Words
    wholes: list[int]
    rests: list[int]

    @classmethod
    def of(cls, scale: _Scale, magnitudes: Words) -> _GaussianCoins:
        """gamma depends on |Y| only and lanes share few values, so it is computed per value:
        in int64 where every number fits, else with Python integers."""
        values, inverse = _distinct(magnitudes)
        mod = scale.gamma_den
        top = max(int(values[-1]) if values.size else 0, 1) * scale.den * scale.t
        if mod < 1 << 60 and max(top, scale.num) < 1 << 30:
            gap = values * (scale.den * scale.t) - scale.num
            square = gap * gap
            whole = square // mod
            rest = square - whole * mod
            digit = _first_digits(rest, mod)
            wholes, rests = whole.tolist(), rest.tolist()
        else:
            pairs = [scale.gamma(y) for y in values.tolist()]
            wholes, rests = [w for w, _ in pairs], [r for _, r in pairs]
            digit = np.array([(r << WORD_BITS) // mod for r in rests], dtype=np.int64)
        exact_whole = np.array([min(w, _WHOLE_CLIP) for w in wholes], dtype=np.int64)
        clipped = np.array([w > _WHOLE_CLIP for w in wholes], dtype=bool)
        positive = np.array([r > 0 for r in rests], dtype=bool)
        return cls(
            exact_whole[inverse], clipped[inverse], digit[inverse], positive[inverse], inverse,
            wholes, rests,
        )  # fmt: skip


def _distinct(values: Words) -> tuple[Words, Words]:
    """Sorted distinct values and each entry's index among them (a dense table when small)."""
    top = int(values.max()) if values.size else 0
    if top > 4 * values.size + 1024:
        distinct, inverse = np.unique(values, return_inverse=True)
        return distinct, inverse
    present = np.zeros(top + 1, dtype=bool)
    present[values] = True
    distinct = np.flatnonzero(present)
    index = np.zeros(top + 1, dtype=np.int64)
    index[distinct] = np.arange(distinct.size)
    return distinct, index[values]


def _gaussian_keep(lanes: _Lanes, who: Words, coins: _GaussianCoins, mod: int) -> Flags:
    """Bernoulli(exp(-gamma)) for the lanes ``who``: floor(gamma) exp(-1) coins, then
    Algorithm 1 on frac(gamma) = rest/mod, whose coin k has first digit floor(digit / k)
    (floor(floor(x) / k) = floor(x / k)), so only a tie needs the big integers."""
    keep = _exp1_runs(lanes, who, coins.whole) == coins.whole
    for i in np.flatnonzero(keep & coins.clipped).tolist():
        whole = coins.wholes[int(coins.value[i])]
        run = partial(_exp1_run, limit=whole, successes=_WHOLE_CLIP)
        keep[i] = lanes.scalar(int(who[i]), run) == whole
    active = np.flatnonzero(keep & coins.positive)
    k = 1
    while active.size:
        digit = coins.digit[active] // k
        word = lanes.draw(who[active])
        hit = word < digit
        for j in np.flatnonzero(word == digit).tolist():
            rest = coins.rests[int(coins.value[active[j]])]
            tail = (rest << WORD_BITS) - int(digit[j]) * mod * k
            step = partial(_lazy_compare, num=tail, den=mod * k)
            hit[j] = lanes.scalar(int(who[active[j]]), step)
        keep[active[np.flatnonzero(~hit)]] = k % 2 == 1
        active = active[np.flatnonzero(hit)]
        k += 1
    return keep


def _vector_attempts(
    scale: _Scale, words: WordSource, first: int, count: int
) -> tuple[Words, Flags]:
    """Lanes first .. first + count - 1, all at once: their values and which were accepted.

    ``who`` holds the lanes still in the running; the other arrays are indexed by lane.
    """
    t = scale.t
    lanes = _Lanes(words, first, count)
    draw = lanes.draw(np.arange(count, dtype=np.int64))
    who = np.flatnonzero(draw < _WORD - _WORD % (2 * t))
    draw = draw - draw // (2 * t) * (2 * t)  # draw % 2t, cheaper in numpy
    u, negative = draw >> 1, draw & 1
    who = who[np.flatnonzero(_exp_fraction_small(lanes, who, u[who], t))]
    magnitude = u
    magnitude[who] += t * _exp1_runs(lanes, who, None)
    who = who[np.flatnonzero((negative[who] == 0) | (magnitude[who] != 0))]
    coins = _GaussianCoins.of(scale, magnitude[who])
    who = who[np.flatnonzero(_gaussian_keep(lanes, who, coins, scale.gamma_den))]
    accepted = np.zeros(count, dtype=bool)
    accepted[who] = True
    return np.where(negative == 1, -magnitude, magnitude), accepted


def _vector_sample(scale: _Scale, size: int, words: WordSource) -> NDArray[np.int64]:
    """The fast path: batches of lanes until ``size`` are accepted; equal to the reference."""
    rate = scale.acceptance_estimate()
    parts: list[Words] = []
    filled = first = 0
    while filled < size:
        count = min(math.ceil((size - filled) / rate * 1.02) + 64, _MAX_BATCH)
        values, accepted = _vector_attempts(scale, words, first, count)
        parts.append(values[accepted])
        filled += int(accepted.sum())
        first += count
    return np.concatenate(parts)[:size]


def _sample(sigma: float, size: int, words: WordSource) -> NDArray[np.int64]:
    _check_request(sigma, size)
    if sigma == 0 or size == 0:
        return np.zeros(int(size), dtype=np.int64)
    scale = _Scale.of(sigma)
    if scale.t > _VECTOR_MAX_T:
        return _reference_sample(scale, int(size), words)
    return _vector_sample(scale, int(size), words)


def _check_request(sigma: float, size: int) -> None:
    if (
        not isinstance(sigma, numbers.Real)
        or isinstance(sigma, bool)
        or not 0 <= sigma <= MAX_SIGMA
    ):
        raise ValueError(f"sigma must be a finite number in [0, {MAX_SIGMA:g}], got {sigma!r}")
    if not isinstance(size, numbers.Integral) or isinstance(size, bool) or size < 0:
        raise ValueError(f"size must be an integer >= 0, got {size!r}")


# --- entropy ----------------------------------------------------------------------------------


class _OsWords:
    """Fresh OS-CSPRNG words for every request, read ahead in blocks; one per ``sample`` call.

    Every word handed out is read from new bytes, once; lanes and positions only label the
    request, since any assignment of fresh uniform words to requests gives i.i.d. streams.

    Args:
        read_bytes: the byte source, ``os.urandom``; tests inject one to check the layout.
    """

    BLOCK_WORDS = 1 << 18  # 1 MiB per read
    addressed = False

    def __init__(self, read_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self._read_bytes = read_bytes
        self._buffer = np.zeros(0, dtype=np.uint32)
        self._next = 0

    def _words(self, n: int) -> NDArray[np.uint32]:
        start, left = self._next, len(self._buffer) - self._next
        if n <= left:
            self._next = start + n
            return self._buffer[start : start + n]
        fresh = np.frombuffer(self._read_bytes(4 * max(n - left, self.BLOCK_WORDS)), dtype="<u4")
        head = self._buffer[start:]
        self._buffer, self._next = fresh, n - left
        return np.concatenate([head, fresh[: n - left]]) if left else fresh[:n]

    def take(self, lanes: Words, positions: Words | None) -> Words:
        return self._words(len(lanes)).astype(np.int64)

    def word(self, lane: int, position: int) -> int:
        return int(self._words(1)[0])


class _SeededWords:
    """NOT PRIVATE: words from a seeded Mersenne Twister, in request order (reproducible)."""

    addressed = False

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def take(self, lanes: Words, positions: Words | None) -> Words:
        n = len(lanes)
        raw = self._rng.getrandbits(WORD_BITS * n).to_bytes(4 * n, "little") if n else b""
        return np.frombuffer(raw, dtype="<u4").astype(np.int64)

    def word(self, lane: int, position: int) -> int:
        return self._rng.getrandbits(WORD_BITS)


class DiscreteGaussianSampler:
    """Exact discrete Gaussian noise from the operating system's CSPRNG.

    This is the only sampler that may be used for a private release: entropy comes from
    ``os.urandom`` (the source of ``secrets``), so the noise is unpredictable even to someone who
    knows the code, every seed and every earlier output. Each call reads its own bytes.
    """

    name = "discrete-gaussian"
    secure = True

    def sample(self, sigma: float, size: int) -> NDArray[np.int64]:
        """Draws ``size`` i.i.d. N_Z(0, sigma^2) integers; see :meth:`NoiseSampler.sample`."""
        return _sample(sigma, size, _OsWords())


class InsecureSeededSampler:
    """NOT PRIVATE: the same exact algorithm driven by a seeded, predictable PCG64 stream.

    Anyone who knows (or guesses) the seed can reproduce the noise and subtract it from a
    release, recovering the exact private counts. Use it ONLY in tests and experiments that need
    reproducible runs; a run that uses it must be reported as NOT PRIVATE (``secure`` is False).

    Args:
        seed: the integer seed of the stream (successive calls continue it).
    """

    name = "insecure-seeded-discrete-gaussian"
    secure = False

    def __init__(self, seed: int) -> None:
        self._words = _SeededWords(seed)

    def sample(self, sigma: float, size: int) -> NDArray[np.int64]:
        """Draws ``size`` N_Z(0, sigma^2) integers, reproducible from the seed. NOT PRIVATE."""
        return _sample(sigma, size, self._words)


NOISE_REGISTRY: Registry[NoiseSampler] = Registry("noise sampler")


def register_noise_sampler(name: str, factory: Callable[..., NoiseSampler]) -> None:
    NOISE_REGISTRY.register(name, factory)


def create_noise_sampler(name: str, **config: Any) -> NoiseSampler:
    """Builds a registered sampler ("discrete-gaussian" for private runs)."""
    return NOISE_REGISTRY.create(name, **config)


register_noise_sampler(DiscreteGaussianSampler.name, DiscreteGaussianSampler)
register_noise_sampler(InsecureSeededSampler.name, InsecureSeededSampler)
