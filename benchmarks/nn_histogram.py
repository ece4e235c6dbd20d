"""Benchmarks the exact nearest-neighbour vote histogram of every CPU backend against FAISS.

Each backend runs ``kernels.vote_histogram`` in its own child process, so its peak memory is
measured cleanly: the child resets the kernel's peak-RSS counter (``/proc/self/clear_refs``)
after building its data and reads ``VmHWM`` after the call; the difference counts BLAS and
OpenMP buffers that ``tracemalloc`` cannot see. The named peer is plain FAISS ``IndexFlatL2``
(index build plus search, no exact re-rank) measured in the same run; every row of the table
gives its time as a ratio to that peer (median over interleaved rounds, which keeps the ratio
meaningful on a shared machine), its best time, and achieved GFLOP/s as 2 n m d / best time.

Usage:
    python benchmarks/nn_histogram.py            # n 1e5, m 1e4, d 512, k 1 (about a minute each)
    python benchmarks/nn_histogram.py --quick    # n 1e4, m 2e3, d 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PEER = "faiss-IndexFlatL2"
BACKENDS = ("numpy-blocked", "torch-blocked", "faiss")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _embeddings(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    """Unit-norm Gaussian vectors, the shape of normalised sentence or image embeddings."""
    data = rng.standard_normal((rows, dim), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    return data


def _peer_votes(private: np.ndarray, synthetic: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatL2(synthetic.shape[1])
    index.add(synthetic)
    _, neighbours = index.search(private, k)
    return np.bincount(neighbours[neighbours >= 0], minlength=len(synthetic))


def _worker(args: argparse.Namespace) -> None:
    """Child process: one timed call; the result is one JSON line on stdout."""
    import kernels

    rng = np.random.default_rng(args.seed)
    private = _embeddings(rng, args.n_private, args.dim)
    synthetic = _embeddings(rng, args.n_synthetic, args.dim)
    backend = None if args.worker == PEER else kernels.create_backend(args.worker)

    def run(rows: np.ndarray) -> np.ndarray:
        if backend is None:
            return _peer_votes(rows, synthetic, args.k)
        return kernels.vote_histogram(backend, rows, synthetic, args.k)

    # Warm up thread pools and library state on a slice, outside the measured window.
    run(private[:64])
    rss_before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    votes = run(private).astype(np.int64)
    seconds = time.perf_counter() - start
    peak_extra = _status_kib("VmHWM") - rss_before
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_extra_mib": peak_extra / 1024,
                "votes": votes.tolist(),
            }
        )
    )


def _run_child(name: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--n-private",
        str(args.n_private),
        "--n-synthetic",
        str(args.n_synthetic),
        "--dim",
        str(args.dim),
        "--k",
        str(args.k),
        "--seed",
        str(args.seed),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="n 1e4, m 2e3, d 256")
    parser.add_argument("--n-private", type=int, default=None)
    parser.add_argument("--n-synthetic", type=int, default=None)
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds over all backends; each keeps its best"
    )
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = (10_000, 2_000, 256) if args.quick else (100_000, 10_000, 512)
    args.n_private = args.n_private or sizes[0]
    args.n_synthetic = args.n_synthetic or sizes[1]
    args.dim = args.dim or sizes[2]
    if args.worker:
        _worker(args)
        return

    flops = 2.0 * args.n_private * args.n_synthetic * args.dim
    print(
        f"exact NN vote histogram: n_private={args.n_private} n_synthetic={args.n_synthetic} "
        f"dim={args.dim} k={args.k} ({flops / 1e12:.3f} TFLOP), {os.cpu_count()} CPUs, "
        f"{args.repeats} interleaved round(s)"
    )
    # Rounds interleave the backends, so load from other processes hits them all alike; the
    # ratio column is the median over rounds of each round's time over the peer's.
    names = [PEER, *args.backends]
    rounds = [{name: _run_child(name, args) for name in names} for _ in range(args.repeats)]
    votes = {name: np.array(rounds[0][name]["votes"]) for name in args.backends}
    first = next(iter(votes.values()), None)
    agree = all(np.array_equal(v, first) for v in votes.values())
    peer_votes = np.array(rounds[0][PEER]["votes"])
    moved = "" if first is None else f", {np.abs(peer_votes - first).sum() // 2} votes off exact"

    header = f"{'backend':<20}{'best s':>8}{'x peer':>8}{'GFLOP/s':>9}{'peak +MiB':>11}  votes"
    print(header)
    print("-" * len(header))
    for name in names:
        best = min(r[name]["seconds"] for r in rounds)
        ratio = float(np.median([r[name]["seconds"] / r[PEER]["seconds"] for r in rounds]))
        peak = max(r[name]["peak_extra_mib"] for r in rounds)
        if name == PEER:
            note = "plain fp32" + moved
        else:
            note = "exact, identical" if agree else "DIFFERENT from the other backends"
        print(f"{name:<20}{best:>8.2f}{ratio:>8.2f}{flops / best / 1e9:>9.1f}{peak:>11.1f}  {note}")
    if not agree:
        sys.exit("backends disagree on the vote histogram")


if __name__ == "__main__":
    main()
