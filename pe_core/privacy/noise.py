"""Exact discrete Gaussian noise for integer vote counts.

The sampler is Algorithm 3 of Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential
Privacy" (arXiv:2004.00010): rejection sampling from a discrete Laplace proposal (their
Algorithm 2), with every coin an exact Bernoulli(exp(-gamma)) for a rational gamma (their
Algorithm 1). All sampling decisions compare integers drawn uniformly at random with exact
rational thresholds; no floating-point number is ever involved, so the output distribution is
exactly N_Z(0, sigma^2), the law with P[X = x] proportional to exp(-x^2 / (2 sigma^2)) on the
integers, for the sigma given (taken as the exact rational value of its IEEE double). A
floating-point sampler would leak through rounding artefacts (Mironov, CCS 2012) and would not be
the mechanism the accountant analyses.

The algorithm is written once and parameterised by an entropy source. Production uses the
operating system's CSPRNG (:class:`DiscreteGaussianSampler`); a seeded Mersenne Twister variant
(:class:`InsecureSeededSampler`) exists only so that tests and experiments are reproducible.
"""

from __future__ import annotations

import math
import numbers
import random
import secrets
from collections.abc import Callable
from fractions import Fraction
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from pe_core.registry import Registry

# Noise is returned as int64; a sample exceeds 40 sigma with probability below exp(-800), so this
# cap keeps every value far inside the int64 range (about 9.2e18).
MAX_SIGMA = 1e15


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


class _ExactDiscreteGaussian:
    """CKS Algorithms 1-3 on an entropy source that yields uniform random bits.

    Args:
        getrandbits: returns a uniformly random integer in [0, 2^k) for k >= 1 bits, like
            ``random.Random.getrandbits``.
    """

    def __init__(self, getrandbits: Callable[[int], int]) -> None:
        self._getrandbits = getrandbits

    def _randbelow(self, n: int) -> int:
        """Uniform integer in [0, n), by rejection on ceil(log2 n) random bits (exact)."""
        if n == 1:
            return 0
        k = n.bit_length()
        r = self._getrandbits(k)
        while r >= n:
            r = self._getrandbits(k)
        return r

    def _bernoulli_exp_fraction(self, num: int, den: int) -> bool:
        """Bernoulli(exp(-num/den)) for 0 <= num <= den (CKS Algorithm 1, gamma in [0, 1]).

        Draws A_k ~ Bernoulli(gamma / k) for k = 1, 2, ... until the first failure; the index of
        that failure is odd with probability exactly exp(-gamma) (alternating Taylor series).
        """
        if num == 0:
            return True
        k = 1
        while self._randbelow(den * k) < num:
            k += 1
        return k % 2 == 1

    def _bernoulli_exp(self, num: int, den: int) -> bool:
        """Bernoulli(exp(-num/den)) for any num >= 0, den >= 1 (CKS Algorithm 1)."""
        whole, rest = divmod(num, den)
        # exp(-gamma) = exp(-1)^floor(gamma) * exp(-frac(gamma)): independent coins, all must hit.
        for _ in range(whole):
            if not self._bernoulli_exp_fraction(1, 1):
                return False
        return self._bernoulli_exp_fraction(rest, den)

    def _discrete_laplace(self, t: int) -> int:
        """One draw of the discrete Laplace law P[Y = y] ~ exp(-|y| / t) (CKS Algorithm 2)."""
        while True:
            # One uniform draw on [0, 2t) gives U uniform on [0, t) and an independent sign bit.
            draw = self._randbelow(2 * t)
            u, negative = draw >> 1, draw & 1
            if not self._bernoulli_exp_fraction(u, t):
                continue
            v = 0
            while self._bernoulli_exp_fraction(1, 1):
                v += 1
            magnitude = u + t * v
            # Reject -0 so that 0 is not counted twice.
            if negative and magnitude == 0:
                continue
            return -magnitude if negative else magnitude

    def sample(self, sigma: float, size: int) -> NDArray[np.int64]:
        """``size`` draws of N_Z(0, sigma^2) (CKS Algorithm 3), as :meth:`NoiseSampler.sample`."""
        _check_request(sigma, size)
        out = np.zeros(int(size), dtype=np.int64)
        if sigma == 0 or size == 0:
            return out
        # sigma^2 = p^2 / q^2 exactly; t = floor(sigma) + 1 is CKS's choice of Laplace scale.
        exact = Fraction(float(sigma))
        p, q = exact.numerator, exact.denominator
        p2, q2 = p * p, q * q
        t = math.floor(exact) + 1
        # Accept y with probability exp(-(|y| - sigma^2/t)^2 / (2 sigma^2)); over integers that is
        # exp(-(|y| t q^2 - p^2)^2 / (2 p^2 q^2 t^2)).
        scale = t * q2
        den = 2 * p2 * q2 * t * t
        laplace, accept = self._discrete_laplace, self._bernoulli_exp
        for i in range(len(out)):
            while True:
                y = laplace(t)
                gap = abs(y) * scale - p2
                if accept(gap * gap, den):
                    out[i] = y
                    break
        return out


def _check_request(sigma: float, size: int) -> None:
    if (
        not isinstance(sigma, numbers.Real)
        or isinstance(sigma, bool)
        or not 0 <= sigma <= MAX_SIGMA
    ):
        raise ValueError(f"sigma must be a finite number in [0, {MAX_SIGMA:g}], got {sigma!r}")
    if not isinstance(size, numbers.Integral) or isinstance(size, bool) or size < 0:
        raise ValueError(f"size must be an integer >= 0, got {size!r}")


class _OsEntropy:
    """Uniform random bits from the OS CSPRNG, read in blocks to save system calls.

    A draw of k bits consumes ceil(k / 8) fresh bytes (spare bits are dropped, never reused).
    An instance lives for one ``sample`` call only: bytes read ahead are never shared between
    calls, threads or forked processes, which a long-lived buffer would risk (two workers
    forked from one parent would emit the same noise).
    """

    _BLOCK_BYTES = 4096

    def __init__(self) -> None:
        self._buffer = b""
        self._position = 0

    def getrandbits(self, k: int) -> int:
        n_bytes = (k + 7) >> 3
        start = self._position
        if start + n_bytes > len(self._buffer):
            self._buffer = secrets.token_bytes(max(n_bytes, self._BLOCK_BYTES))
            start = 0
        self._position = start + n_bytes
        return int.from_bytes(self._buffer[start : start + n_bytes], "little") >> (8 * n_bytes - k)


class DiscreteGaussianSampler:
    """Exact discrete Gaussian noise from the operating system's CSPRNG.

    This is the only sampler that may be used for a private release: entropy comes from the
    ``secrets`` module (``os.urandom``, the source of ``secrets.SystemRandom``), so the noise is
    unpredictable even to someone who knows the code, every seed and every earlier output.
    """

    name = "discrete-gaussian"
    secure = True

    def sample(self, sigma: float, size: int) -> NDArray[np.int64]:
        """Draws ``size`` i.i.d. N_Z(0, sigma^2) integers; see :meth:`NoiseSampler.sample`."""
        return _ExactDiscreteGaussian(_OsEntropy().getrandbits).sample(sigma, size)


class InsecureSeededSampler:
    """NOT PRIVATE: the same exact algorithm driven by a seeded, predictable Mersenne Twister.

    Anyone who knows (or guesses) the seed can reproduce the noise and subtract it from a
    release, recovering the exact private counts. Use it ONLY in tests and experiments that need
    reproducible runs; a run that uses it must be reported as NOT PRIVATE (``secure`` is False).

    Args:
        seed: the integer seed of ``random.Random``.
    """

    name = "insecure-seeded-discrete-gaussian"
    secure = False

    def __init__(self, seed: int) -> None:
        self._exact = _ExactDiscreteGaussian(random.Random(seed).getrandbits)

    def sample(self, sigma: float, size: int) -> NDArray[np.int64]:
        """Draws ``size`` N_Z(0, sigma^2) integers, reproducible from the seed. NOT PRIVATE."""
        return self._exact.sample(sigma, size)


NOISE_REGISTRY: Registry[NoiseSampler] = Registry("noise sampler")


def register_noise_sampler(name: str, factory: Callable[..., NoiseSampler]) -> None:
    NOISE_REGISTRY.register(name, factory)


def create_noise_sampler(name: str, **config: Any) -> NoiseSampler:
    """Builds a registered sampler ("discrete-gaussian" for private runs)."""
    return NOISE_REGISTRY.create(name, **config)


register_noise_sampler(DiscreteGaussianSampler.name, DiscreteGaussianSampler)
register_noise_sampler(InsecureSeededSampler.name, InsecureSeededSampler)
