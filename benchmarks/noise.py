"""Benchmarks exact discrete Gaussian noise against named peers, on one CPU core.

Times ``DiscreteGaussianSampler().sample(sigma, n)`` (the vectorised exact sampler on OS
entropy) against two peers measured in the same run, in interleaved rounds so that a shared
machine slows every path alike:

- ``old-scalar``: the exact scalar CKS sampler this one replaced (commit 90ee2fc), copied below;
- ``opendp``: OpenDP's ``make_gaussian`` on an int vector (exact, Rust, its own CSPRNG), when
  ``opendp`` is installed (it is in the lock).

For each sigma it prints the median wall and CPU (process) time of one call over the rounds, and
each peer's median as a ratio "ours / peer" (0.05x: ours takes 5% of the peer's time). CPU time
is steadier than wall time when other processes share the cores. Each path's sample standard
deviation is printed too, as a check that every path drew what it claims.

One core: the thread variables are set before numpy loads, and the process pins itself to one
CPU (``os.sched_setaffinity``; elsewhere run it under ``taskset -c 0``).

Usage:
    python benchmarks/noise.py                 # 1e5 draws, sigma 1, 6.4, 50, 1000, 5 rounds
    python benchmarks/noise.py --quick         # 1e4 draws, 3 rounds
    python benchmarks/noise.py --sigmas 13.26 --rounds 9 --json
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import secrets  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from fractions import Fraction  # noqa: E402

import numpy as np  # noqa: E402

from pe_core.privacy import DiscreteGaussianSampler  # noqa: E402

OURS = "privevo"
Sampler = Callable[[float, int], np.ndarray]


# Copied from pe_core/privacy/noise.py at 90ee2fc (_ExactDiscreteGaussian and _OsEntropy, the
# scalar sampler the vectorised one replaced), trimmed of input checks: the peer.
class _OldScalarSampler:
    def __init__(self) -> None:
        self._buffer = b""
        self._position = 0

    def _getrandbits(self, k: int) -> int:
        n_bytes = (k + 7) >> 3
        start = self._position
        if start + n_bytes > len(self._buffer):
            self._buffer = secrets.token_bytes(max(n_bytes, 4096))
            start = 0
        self._position = start + n_bytes
        return int.from_bytes(self._buffer[start : start + n_bytes], "little") >> (8 * n_bytes - k)

    def _randbelow(self, n: int) -> int:
        if n == 1:
            return 0
        k = n.bit_length()
        r = self._getrandbits(k)
        while r >= n:
            r = self._getrandbits(k)
        return r

    def _bernoulli_exp_fraction(self, num: int, den: int) -> bool:
        if num == 0:
            return True
        k = 1
        while self._randbelow(den * k) < num:
            k += 1
        return k % 2 == 1

    def _bernoulli_exp(self, num: int, den: int) -> bool:
        whole, rest = divmod(num, den)
        for _ in range(whole):
            if not self._bernoulli_exp_fraction(1, 1):
                return False
        return self._bernoulli_exp_fraction(rest, den)

    def _discrete_laplace(self, t: int) -> int:
        while True:
            draw = self._randbelow(2 * t)
            u, negative = draw >> 1, draw & 1
            if not self._bernoulli_exp_fraction(u, t):
                continue
            v = 0
            while self._bernoulli_exp_fraction(1, 1):
                v += 1
            magnitude = u + t * v
            if negative and magnitude == 0:
                continue
            return -magnitude if negative else magnitude

    def sample(self, sigma: float, size: int) -> np.ndarray:
        out = np.zeros(int(size), dtype=np.int64)
        exact = Fraction(float(sigma))
        p, q = exact.numerator, exact.denominator
        p2, q2 = p * p, q * q
        t = math.floor(exact) + 1
        scale, den = t * q2, 2 * p2 * q2 * t * t
        for i in range(len(out)):
            while True:
                y = self._discrete_laplace(t)
                gap = abs(y) * scale - p2
                if self._bernoulli_exp(gap * gap, den):
                    out[i] = y
                    break
        return out


def _old_scalar(sigma: float, size: int) -> np.ndarray:
    return _OldScalarSampler().sample(sigma, size)  # a fresh buffer per call, as it had


def _opendp() -> Callable[[float], Sampler] | None:
    if importlib.util.find_spec("opendp") is None:
        return None
    import opendp.prelude as dp

    dp.enable_features("contrib")
    space = dp.vector_domain(dp.atom_domain(T=int)), dp.l2_distance(T=int)

    def build(sigma: float) -> Sampler:
        measurement = dp.m.make_gaussian(*space, scale=sigma)
        return lambda _sigma, size: np.asarray(measurement([0] * size), dtype=np.int64)

    return build


def _pin_one_core() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (run under taskset -c 0)"
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu}"


def run(sigmas: list[float], draws: int, rounds: int, peers: bool) -> list[dict[str, object]]:
    ours = DiscreteGaussianSampler()
    opendp = _opendp() if peers else None
    paths: dict[float, dict[str, Sampler]] = {}
    for sigma in sigmas:
        paths[sigma] = {OURS: ours.sample}
        if peers:
            paths[sigma]["old-scalar"] = _old_scalar
            if opendp is not None:
                paths[sigma]["opendp"] = opendp(sigma)
    wall: dict[tuple[float, str], list[float]] = {}
    cpu: dict[tuple[float, str], list[float]] = {}
    spread: dict[tuple[float, str], float] = {}
    for sigma in sigmas:  # warm-up: imports, first allocations
        for sample in paths[sigma].values():
            sample(sigma, min(draws, 1_000))
    for _ in range(rounds):
        for sigma in sigmas:
            for name, sample in paths[sigma].items():
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                values = sample(sigma, draws)
                cpu.setdefault((sigma, name), []).append(time.process_time() - start_cpu)
                wall.setdefault((sigma, name), []).append(time.perf_counter() - start_wall)
                spread[(sigma, name)] = float(np.std(values))
    rows: list[dict[str, object]] = []
    for sigma in sigmas:
        row: dict[str, object] = {"sigma": sigma, "draws": draws, "rounds": rounds}
        base_wall = statistics.median(wall[(sigma, OURS)])
        base_cpu = statistics.median(cpu[(sigma, OURS)])
        for name in paths[sigma]:
            med_wall = statistics.median(wall[(sigma, name)])
            med_cpu = statistics.median(cpu[(sigma, name)])
            row[name] = {
                "wall_s": med_wall,
                "cpu_s": med_cpu,
                "best_wall_s": min(wall[(sigma, name)]),
                "std": spread[(sigma, name)],
                "ratio_wall": base_wall / med_wall,
                "ratio_cpu": base_cpu / med_cpu,
            }
        rows.append(row)
    return rows


def _print(rows: list[dict[str, object]], pinned: str) -> None:
    first = rows[0]
    print(f"{first['draws']:,} draws per call, median of {first['rounds']} rounds; {pinned}")
    header = (
        f"{'sigma':>8} {'path':>11} {'wall s':>8} {'cpu s':>8} {'best s':>8} {'us/draw':>8} "
        f"{'std':>9} {'ours/peer wall':>15} {'cpu':>7}"
    )
    print(header)
    for row in rows:
        for name, cell in row.items():
            if not isinstance(cell, dict):
                continue
            per_draw = cell["wall_s"] / float(row["draws"]) * 1e6  # type: ignore[operator]
            ratio = "" if name == OURS else f"{cell['ratio_wall']:.3f}x"
            ratio_cpu = "" if name == OURS else f"{cell['ratio_cpu']:.3f}x"
            print(
                f"{row['sigma']:>8g} {name:>11} {cell['wall_s']:8.4f} {cell['cpu_s']:8.4f} "
                f"{cell['best_wall_s']:8.4f} {per_draw:8.2f} {cell['std']:9.3f} "
                f"{ratio:>15} {ratio_cpu:>7}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[1.0, 6.4, 50.0, 1000.0])
    parser.add_argument("--draws", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1e4 draws, 3 rounds")
    parser.add_argument("--no-peers", action="store_true", help="time ours only")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if args.quick:
        args.draws, args.rounds = 10_000, 3
    pinned = "not pinned" if args.no_pin else _pin_one_core()
    rows = run(args.sigmas, args.draws, args.rounds, peers=not args.no_peers)
    if args.json:
        print(json.dumps({"pinned": pinned, "rows": rows}, indent=1))
    else:
        _print(rows, pinned)


if __name__ == "__main__":
    main()
