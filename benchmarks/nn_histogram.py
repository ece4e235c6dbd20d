"""Benchmarks the exact nearest-neighbour vote histogram against named peers, on CPU or CUDA.

CPU (default). Each backend runs ``pe_kernels.vote_histogram`` in its own child process, so its peak
memory is measured cleanly: the child resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``) after building its data and reads ``VmHWM`` after the call; the
difference counts BLAS and OpenMP buffers that ``tracemalloc`` cannot see. The named peer is plain
FAISS ``IndexFlatL2`` (index build plus search, no exact re-rank) measured in the same run.

CUDA (``--device cuda``). Everything runs in this process on the device; the named peer is a
plain torch blocked GEMM + argmin (fp32, not exact), with FAISS-GPU ``IndexFlatL2`` where that is
installed. Paths run twice: end to end (host arrays in, counts out, as the PE loop calls them)
and device only (the Triton kernel on resident tensors, against the peer's device loop; per
precision also the kernel followed by an fp32 GEMM + argmin of the rows it left unsettled, the
device's whole share of an exact vote). Peak memory is the torch allocator's peak above what the
inputs hold. ``--check`` first compares every Triton precision with
``pe_kernels.reference.reference_search`` on awkward shapes with duplicates and ties, and exits 1
with "EXACTNESS FAILURE" on any difference (``scripts/gpu_check.sh``). Under
``TRITON_INTERPRET=1`` ``--device cpu --tiny`` runs the same code on the CPU (a dry run).

Every table gives each path's median and best time over the rounds; "x peer", the median over
rounds of (the path's time / the peer's time in the same round), and "worst x", the largest of
those per-round ratios; achieved GFLOP/s as 2 n m d / best time, that rate as a percentage of
the fp32 GEMM rate measured in the same run (numpy sgemm on CPU, IEEE-fp32 ``torch.mm`` on
CUDA; a bfloat16 GEMM shortlist can exceed 100%), and peak memory; then every round's times and
the 1-minute load average before it. "x peer" is not best over best: rounds interleave the
paths, so a busy moment slows a path and its peer in the same round, and the ratio of the two
keeps its meaning where the times alone do not. So 0.83 beside best times of 5.20 s and 5.65 s
(0.92) says that in the typical round the path took 0.83 of the peer's time in that round, while
the two best times came from different rounds.

Usage:
    python benchmarks/nn_histogram.py                  # (1e5, 1e4, 512), (1e4, 1e4, 2048), scaling
    python benchmarks/nn_histogram.py --quick          # (1e4, 2e3, 256) and a small series
    python benchmarks/nn_histogram.py --device cuda --check
    python benchmarks/nn_histogram.py --device cuda --sweep bfloat16x3  # one precision's tiles
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

PEER = "faiss-IndexFlatL2"
BACKENDS = ("numpy-blocked", "numpy-blocked-bf16", "torch-blocked", "faiss")
TORCH_PEER = "torch-argmin"

Size = tuple[int, int, int]
# (n_private, n_synthetic, dim): the headline sizes, then a scaling series in n.
SIZES: dict[str, list[Size]] = {
    "full": [
        (100_000, 10_000, 512),
        (10_000, 10_000, 2048),
        (10_000, 10_000, 512),
        (30_000, 10_000, 512),
    ],
    "quick": [(10_000, 2_000, 256), (2_500, 2_000, 256), (5_000, 2_000, 256)],
    "tiny": [(64, 48, 40), (33, 17, 20)],
}


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


def _flops(size: Size) -> float:
    n, m, dim = size
    return 2.0 * n * m * dim


def _load() -> str:
    """The 1-minute load average (other processes share this machine's cores)."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def _table(
    title: str,
    size: Size,
    rounds: list[dict[str, dict[str, Any]]],
    peer: str,
    gemm_rate: float,
    notes: dict[str, str],
    loads: list[str] | None = None,
) -> None:
    """Prints one size's rows (see the module docstring), then every round's times."""
    flops = _flops(size)
    print(
        f"\n{title}: n_private={size[0]} n_synthetic={size[1]} dim={size[2]} "
        f"({flops / 1e12:.3f} TFLOP, fp32 GEMM bound {flops / gemm_rate:.3f} s)"
    )
    header = (
        f"{'path':<30}{'median s':>9}{'best s':>9}{'x peer':>8}{'worst x':>8}{'GFLOP/s':>9}"
        f"{'% GEMM':>8}{'peak +MiB':>11}  votes"
    )
    print(header)
    print("-" * len(header))
    for name in rounds[0]:
        times = [r[name]["seconds"] for r in rounds]
        ratios = [r[name]["seconds"] / r[peer]["seconds"] for r in rounds]
        peak = max(r[name]["peak_extra_mib"] for r in rounds)
        rate = flops / min(times)
        print(
            f"{name:<30}{np.median(times):>9.3f}{min(times):>9.3f}{np.median(ratios):>8.2f}"
            f"{max(ratios):>8.2f}{rate / 1e9:>9.1f}{100 * rate / gemm_rate:>8.1f}{peak:>11.1f}"
            f"  {notes.get(name, '')}"
        )
    print(
        "rounds (seconds; x peer in brackets)" + (", load before each: " if loads else ""), end=""
    )
    print(" ".join(loads or []))
    for name in rounds[0]:
        cells = [
            f"{r[name]['seconds']:.3f} [{r[name]['seconds'] / r[peer]['seconds']:.2f}]"
            for r in rounds
        ]
        print(f"  {name:<28}" + "  ".join(cells))


def _agreement(
    rounds: list[dict[str, dict[str, Any]]], exact: list[str], peers: list[str]
) -> tuple[bool, dict[str, str]]:
    """Whether the exact paths agree, and a note per path for the table."""
    votes = {name: np.asarray(rounds[0][name]["votes"]) for name in exact}
    first = next(iter(votes.values()))
    agree = all(np.array_equal(v, first) for v in votes.values())
    notes = {
        name: "exact, identical" if agree else "DIFFERENT from the other exact paths"
        for name in exact
    }
    for name in peers:
        moved = np.abs(np.asarray(rounds[0][name]["votes"]) - first).sum() // 2
        notes[name] = f"plain fp32, {moved} votes off exact"
    return agree, notes


# --- CPU: one child process per backend and size ------------------------------------------------


def _peer_votes(private: np.ndarray, synthetic: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatL2(synthetic.shape[1])
    index.add(synthetic)
    _, neighbours = index.search(private, k)
    return np.bincount(neighbours[neighbours >= 0], minlength=len(synthetic))


def _worker(args: argparse.Namespace) -> None:
    """Child process: one timed call; the result is one JSON line on stdout."""
    import pe_kernels
    from pe_core.nn import create_backend

    rng = np.random.default_rng(args.seed)
    private = _embeddings(rng, args.n_private, args.dim)
    synthetic = _embeddings(rng, args.n_synthetic, args.dim)
    backend = None if args.worker == PEER else create_backend(args.worker)

    def run(rows: np.ndarray) -> np.ndarray:
        if backend is None:
            return _peer_votes(rows, synthetic, args.k)
        return pe_kernels.vote_histogram(backend, rows, synthetic, args.k)

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
            {"seconds": seconds, "peak_extra_mib": peak_extra / 1024, "votes": votes.tolist()}
        )
    )


def _openblas_coretype() -> str | None:
    """An OpenBLAS core type this CPU runs, for FAISS's bundled OpenBLAS, or None.

    faiss-cpu wheels (1.12 to 1.15 at least) bundle OpenBLAS 0.3.15, which does not recognise
    CPUs newer than 2021 (Sapphire and Emerald Rapids among them) and falls back to generic SSE3
    kernels: seen here, plain FAISS ran (1e4, 1e4, 512) in 3.5 s instead of 0.63 s. Naming the
    newest core type the CPU's flags support gives the peer its real speed. numpy's own OpenBLAS
    is newer and detects the CPU, so the numpy and torch paths are left as they are.
    """
    if "OPENBLAS_CORETYPE" in os.environ:
        return os.environ["OPENBLAS_CORETYPE"]
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return None
    if "avx512f" in flags and "avx512bw" in flags:
        return "SkylakeX"
    if "avx2" in flags:
        return "Haswell"
    return None


def _run_child(name: str, size: Size, args: argparse.Namespace) -> dict[str, Any]:
    n, m, dim = size
    command = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--n-private",
        str(n),
        "--n-synthetic",
        str(m),
        "--dim",
        str(dim),
        "--k",
        str(args.k),
        "--seed",
        str(args.seed),
    ]
    env = dict(os.environ)
    coretype = _openblas_coretype()
    if coretype and name in (PEER, "faiss"):
        env["OPENBLAS_CORETYPE"] = coretype
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cpu_gemm_rate() -> float:
    """Best-of-5 numpy (BLAS) fp32 GEMM rate in FLOP/s, at 2048^3."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2048, 2048), dtype=np.float32)
    b = rng.standard_normal((2048, 2048), dtype=np.float32)
    out = np.empty_like(a)
    return 2.0 * 2048**3 / _best_of(5, lambda: np.matmul(a, b, out=out))


def _best_of(repeats: int, call: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def _cpu_main(args: argparse.Namespace, sizes: list[Size]) -> bool:
    print(
        f"exact NN vote histogram, CPU: k={args.k}, {os.cpu_count()} CPUs, {args.repeats} "
        "interleaved round(s); the fp32 GEMM rate is the best measured before any round so far"
    )
    print(f"FAISS's bundled OpenBLAS runs with OPENBLAS_CORETYPE={_openblas_coretype()}")
    ok = True
    summary = []
    gemm_rate = 0.0
    for size in sizes:
        # Rounds interleave the backends, so load from other processes hits them all alike; the
        # ratio column is the median over rounds of each round's time over the peer's.
        rounds = []
        loads = []
        for _ in range(args.repeats):
            gemm_rate = max(gemm_rate, _cpu_gemm_rate())
            loads.append(_load())
            rounds.append({name: _run_child(name, size, args) for name in [PEER, *args.backends]})
        agree, notes = _agreement(rounds, args.backends, [PEER])
        ok &= agree
        _table(
            f"CPU, fp32 GEMM rate {gemm_rate / 1e9:.0f} GFLOP/s",
            size,
            rounds,
            PEER,
            gemm_rate,
            notes,
            loads,
        )
        summary.append(
            (
                size,
                {
                    name: float(
                        np.median([r[name]["seconds"] / r[PEER]["seconds"] for r in rounds])
                    )
                    for name in args.backends
                },
            )
        )
    print("\nscaling (time / plain FAISS):")
    widths = {name: max(16, len(name) + 2) for name in args.backends}
    print(f"{'n, m, d':<22}" + "".join(f"{name:>{widths[name]}}" for name in args.backends))
    for size, ratios in summary:
        print(
            f"{size!s:<22}"
            + "".join(f"{ratios[name]:>{widths[name]}.2f}" for name in args.backends)
        )
    return ok


# --- CUDA (or the interpreter on CPU): everything in this process --------------------------------


def _torch_argmin_votes(torch: Any, x: Any, y: Any, rows_per_block: int) -> Any:
    """The device peer: blocked fp32 GEMM + argmin + bincount on resident tensors (not exact)."""
    y_sq = (y * y).sum(dim=1)
    counts = torch.zeros(y.shape[0], dtype=torch.int64, device=y.device)
    for start in range(0, x.shape[0], rows_per_block):
        dist = torch.addmm(y_sq, x[start : start + rows_per_block], y.T, alpha=-2.0)
        counts += torch.bincount(dist.argmin(dim=1), minlength=y.shape[0])
    return counts


def _kernel_votes(torch: Any, x: Any, y: Any, y_sq: Any, window: Any, tiles: Any) -> Any:
    """One launch of the fused kernel (k = 1, shortlist 4) on resident kernel inputs."""
    from pe_kernels import triton_impl

    counts = torch.zeros(y.shape[0], dtype=torch.int32, device=y.device)
    triton_impl.shortlists(x, y, y_sq, window, 1, 4, counts, tiles)
    return counts


def _kernel_then_gemm_votes(
    torch: Any, x_in: Any, y_in: Any, x: Any, y: Any, y_sq: Any, window: Any, tiles: Any
) -> Any:
    """The kernel, then the peer's fp32 GEMM + argmin over the rows it left unsettled.

    This is the device's share of an exact vote at a rounded precision: the backend's exact pass
    runs the same GEMM on those rows (plus a certified selection and a host re-rank, not timed
    here), so votes are those of settled rows plus the plain fp32 argmin of the rest.
    """
    from pe_kernels import triton_impl

    counts = torch.zeros(y.shape[0], dtype=torch.int32, device=y.device)
    _, _, settled = triton_impl.shortlists(x_in, y_in, y_sq, window, 1, 4, counts, tiles)
    open_rows = (~settled).nonzero().squeeze(1)
    return counts + _torch_argmin_votes(torch, x[open_rows], y, max(1, len(open_rows)))


def _tile_alternatives(sweep: list[str] | None) -> dict[str, list[Any]]:
    """Tile sizes timed beside each precision's default: a few, or a broad sweep of some."""
    from pe_kernels.triton_impl import Tiles

    if sweep is None:
        return {
            "float32": [Tiles(64, 64, 32, 4), Tiles(128, 128, 16, 8)],
            "bfloat16": [Tiles(128, 64, 64, 8), Tiles(128, 128, 64, 8)],
            "float16": [Tiles(128, 128, 64, 8)],
            "bfloat16x3": [Tiles(64, 128, 16, 4), Tiles(128, 128, 32, 8)],
        }
    # (block_m, block_n, block_d, warps, stages). fp32 dots run on CUDA cores (register-blocked
    # FMA): wide tiles, short depth slices.
    fp32 = [
        (128, 64, 32, 8, 3),
        (64, 128, 32, 4, 3),
        (128, 128, 32, 8, 3),
        (128, 128, 16, 8, 3),
        (128, 128, 16, 8, 4),
        (128, 128, 32, 4, 2),
        (256, 64, 16, 8, 3),
        (64, 256, 16, 8, 3),
        (128, 64, 16, 4, 4),
        (64, 64, 64, 4, 2),
        (32, 64, 32, 4, 3),
    ]
    # Low precision runs on tensor cores: deeper slices, more warps, more stages.
    half = [
        (128, 128, 64, 8, 3),
        (64, 64, 64, 4, 3),
        (64, 128, 64, 4, 3),
        (128, 128, 32, 8, 4),
        (128, 256, 64, 8, 3),
        (256, 128, 64, 8, 3),
        (128, 64, 128, 8, 2),
    ]
    # The split runs the same bf16 dots over 3 d columns: three times the dot work per shortlist
    # update, so deeper slices; no 128x256 tiles, whose shortlist code compiles for minutes.
    split = [
        (128, 128, 64, 8, 3),
        (64, 64, 64, 4, 3),
        (128, 128, 32, 8, 4),
        (128, 64, 128, 8, 2),
        (64, 128, 128, 4, 2),
        (128, 128, 128, 8, 2),
    ]
    return {
        name: [Tiles(*shape) for shape in shapes] if not sweep or name in sweep else []
        for name, shapes in [
            ("float32", fp32),
            ("bfloat16", half),
            ("float16", half[:1]),
            ("bfloat16x3", split),
        ]
    }


def _faiss_gpu_votes(private: np.ndarray, synthetic: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), synthetic.shape[1])
    index.add(synthetic)
    _, neighbours = index.search(private, k)
    return np.bincount(neighbours[neighbours >= 0], minlength=len(synthetic))


def _device_gemm_rate(torch: Any, device: str, side: int) -> float:
    """Best-of-5 fp32 ``torch.mm`` rate in FLOP/s at side^3 (torch's default: IEEE, no TF32)."""
    a = torch.randn(side, side, device=device)
    b = torch.randn(side, side, device=device)
    out = torch.empty_like(a)
    torch.mm(a, b, out=out)
    return (
        2.0 * side**3 / _best_of(5, lambda: _synchronised(torch, device, torch.mm, a, b, out=out))
    )


def _synchronised(torch: Any, device: str, call: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    result = call(*args, **kw)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return result


def _measure(torch: Any, device: str, call: Callable[[], Any]) -> dict[str, Any]:
    """Times one call; peak device memory above the current allocation, 0 on the CPU."""
    on_cuda = device.startswith("cuda")
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    votes = _synchronised(torch, device, call)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if on_cuda else 0.0
    if not isinstance(votes, np.ndarray):
        votes = votes.cpu().numpy()
    return {"seconds": seconds, "peak_extra_mib": peak, "votes": votes.astype(np.int64)}


def _check_exact(device: str, precisions: list[str]) -> bool:
    """Triton search and votes against the float64 reference on awkward shapes; prints failures."""
    import pe_kernels
    from pe_kernels.reference import reference_search

    rng = np.random.default_rng(7)
    cases = []
    for n, m, dim in [(37, 41, 33), (19, 2, 5), (40, 3, 130)]:
        cases.append(
            (f"random {n}x{m}x{dim}", rng.standard_normal((n, dim)), rng.standard_normal((m, dim)))
        )
    base = rng.standard_normal((12, 17))
    duplicates = base[rng.integers(0, 12, size=40)]
    cases.append(("exact duplicates", np.concatenate([base, duplicates[:5]]), duplicates))
    axes = np.concatenate([np.eye(9), -np.eye(9)])
    cases.append(
        ("ties beyond the shortlist", np.concatenate([np.zeros((1, 9)), 3 * np.eye(9)]), axes[::-1])
    )
    grid = rng.integers(-2, 3, size=(50, 6)) / 4
    cases.append(("coarse grid ties", grid[:20], grid[20:]))
    ok = True
    for precision in precisions:
        backend = pe_kernels.TritonBackend(device=device, precision=precision)
        for label, private64, synthetic64 in cases:
            private = np.ascontiguousarray(private64, dtype=np.float32)
            synthetic = np.ascontiguousarray(synthetic64, dtype=np.float32)
            for k in (1, 3):
                expected = reference_search(private, synthetic, k)
                votes = np.bincount(expected[expected >= 0], minlength=len(synthetic))
                got = backend.search(private, synthetic, k)
                got_votes = pe_kernels.vote_histogram(backend, private, synthetic, k)
                if not (np.array_equal(got, expected) and np.array_equal(got_votes, votes)):
                    ok = False
                    wrong = int((got != expected).any(axis=1).sum())
                    print(
                        f"EXACTNESS FAILURE: triton {precision}, {label}, k={k}: {wrong} "
                        f"rows' neighbours and {int(np.abs(got_votes - votes).sum())} votes "
                        "differ from reference_search"
                    )
    print(
        f"exactness vs reference_search ({', '.join(precisions)}; {len(cases)} cases, k 1 and 3): "
        f"{'ok' if ok else 'FAILED'}"
    )
    return ok


def _device_main(args: argparse.Namespace, sizes: list[Size]) -> bool:
    import torch

    import pe_kernels
    from pe_kernels import triton_impl

    device = args.device
    on_cuda = device.startswith("cuda")
    if on_cuda and not torch.cuda.is_available():
        sys.exit("--device cuda needs a CUDA device; torch sees none")
    if not on_cuda and not triton_impl.INTERPRETING:
        sys.exit("--device cpu runs the Triton path only with TRITON_INTERPRET=1 set first")
    if args.check and not _check_exact(device, ["float32", "bfloat16x3", "bfloat16", "float16"]):
        return False  # timings of wrong answers mean nothing
    gemm_rate = _device_gemm_rate(torch, device, 8192 if on_cuda else 256)
    name = torch.cuda.get_device_name(device) if on_cuda else "CPU (TRITON_INTERPRET=1)"
    print(
        f"\nexact NN vote histogram on {name}: k={args.k}, {args.repeats} round(s); measured "
        f"fp32 GEMM rate {gemm_rate / 1e9:.0f} GFLOP/s"
    )
    faiss_gpu = on_cuda and importlib.util.find_spec("faiss") is not None
    if faiss_gpu:
        import faiss

        faiss_gpu = hasattr(faiss, "StandardGpuResources")
    if on_cuda and not faiss_gpu:
        print("FAISS-GPU is not installed: no faiss-gpu row")
    backends = {
        "triton-bf16x3": pe_kernels.TritonBackend(device=device),
        "triton-fp32": pe_kernels.TritonBackend(device=device, precision="float32"),
        "triton-bf16": pe_kernels.TritonBackend(device=device, precision="bfloat16"),
        "torch-blocked": pe_kernels.TorchBlockedBackend(device=device),
    }
    ok_sizes = [
        _device_size(torch, device, size, args, backends, gemm_rate, faiss_gpu) for size in sizes
    ]
    return all(ok_sizes)


def _device_size(
    torch: Any,
    device: str,
    size: Size,
    args: argparse.Namespace,
    backends: dict[str, Any],
    gemm_rate: float,
    faiss_gpu: bool,
) -> bool:
    """Times every device path at one size and prints both tables; True if exact paths agree."""
    import pe_kernels
    from pe_kernels.certify import sq_norms64, tiled_dot_error_bound
    from pe_kernels.triton_backend import PRECISIONS, kernel_inputs

    n, m, dim = size
    rng = np.random.default_rng(args.seed)
    private = _embeddings(rng, n, dim)
    synthetic = _embeddings(rng, m, dim)
    x = torch.from_numpy(private).to(device)
    y = torch.from_numpy(synthetic).to(device)
    block = max(1, 2**28 // (4 * m))  # 256 MiB of distances per peer block
    paths: dict[str, Callable[[], Any]] = {
        TORCH_PEER: lambda: _torch_argmin_votes(
            torch,
            torch.from_numpy(private).to(device),
            torch.from_numpy(synthetic).to(device),
            block,
        )
    }
    if faiss_gpu:
        paths["faiss-gpu"] = lambda: _faiss_gpu_votes(private, synthetic, args.k)
    for label, backend in backends.items():
        paths[label] = partial(pe_kernels.vote_histogram, backend, private, synthetic, args.k)
    # Device only: the fused kernel (k = 1, S = 4) on resident tensors, vs the peer's loop; on
    # CUDA also at other tile sizes, to show what tuning the untuned defaults could gain.
    private_sq_norms, synthetic_sq_norms = sq_norms64(private), sq_norms64(synthetic)
    y_sq = torch.from_numpy(synthetic_sq_norms.astype(np.float32)).to(device)
    device_paths: dict[str, Callable[[], Any]] = {
        TORCH_PEER: lambda: _torch_argmin_votes(torch, x, y, block)
    }

    def window(tiles: Any, rounding: Any) -> Any:
        tol = tiled_dot_error_bound(
            private_sq_norms, float(synthetic_sq_norms.max()), dim, tiles.block_d, rounding
        )
        return torch.from_numpy((3 * tol).astype(np.float32)).to(device)

    for label, backend in backends.items():
        if backend.name != "triton":
            continue
        rounding = PRECISIONS[backend.precision]
        x_in = kernel_inputs(torch, x, rounding, synthetic=False)
        y_in = kernel_inputs(torch, y, rounding, synthetic=True)
        tile_choices = [backend.tiles]
        if device.startswith("cuda"):
            tile_choices += _tile_alternatives(args.sweep)[rounding.name]
        for tiles in tile_choices:
            tag = f"{label} {tiles.block_m}x{tiles.block_n}x{tiles.block_d}/{tiles.num_warps}w"
            device_paths[tag] = partial(
                _kernel_votes, torch, x_in, y_in, y_sq, window(tiles, rounding), tiles
            )
        device_paths[f"{label} + GEMM pass"] = partial(
            _kernel_then_gemm_votes,
            torch,
            x_in,
            y_in,
            x,
            y,
            y_sq,
            window(backend.tiles, rounding),
            backend.tiles,
        )
    for group in (paths, device_paths):
        for call in group.values():
            _synchronised(torch, device, call)  # compile and warm up outside the timings
    end_to_end = [
        {label: _measure(torch, device, call) for label, call in paths.items()}
        for _ in range(args.repeats)
    ]
    device_only = [
        {label: _measure(torch, device, call) for label, call in device_paths.items()}
        for _ in range(args.repeats)
    ]
    exact = list(backends)
    agree, notes = _agreement(end_to_end, exact, [p for p in paths if p not in exact])
    _table(
        "end to end (host arrays in, counts out)", size, end_to_end, TORCH_PEER, gemm_rate, notes
    )
    _table(
        "device only (resident tensors; the kernel's counts are its settled rows')",
        size,
        device_only,
        TORCH_PEER,
        gemm_rate,
        {
            label: "both passes: kernel + fp32 GEMM + argmin of unsettled rows"
            if label.endswith("GEMM pass")
            else "kernel only: votes of settled rows"
            for label in device_paths
        }
        | {TORCH_PEER: "plain fp32"},
    )
    return agree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="(1e4, 2e3, 256) and a small series")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, for interpreter dry runs")
    parser.add_argument("--device", default="cpu", help="cpu (CPU backends vs FAISS) or cuda")
    parser.add_argument(
        "--check",
        action="store_true",
        help="device mode: first check Triton exactness; exit 1 on a failure",
    )
    parser.add_argument(
        "--sweep",
        nargs="*",
        metavar="PRECISION",
        help="device mode: time the kernel at many tile sizes (tuning the defaults), for the "
        "precisions named (float32 bfloat16 float16 bfloat16x3) or, with none named, all",
    )
    parser.add_argument("--n-private", type=int, default=None)
    parser.add_argument("--n-synthetic", type=int, default=None)
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds over all paths; each keeps its best"
    )
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    sizes = SIZES["tiny" if args.tiny else "quick" if args.quick else "full"]
    if args.n_private or args.n_synthetic or args.dim:
        n, m, dim = sizes[0]
        sizes = [(args.n_private or n, args.n_synthetic or m, args.dim or dim)]
    # Interpreted Triton programs run as numpy: the CPU-device mode is a dry run of the CUDA one.
    use_device_mode = args.device != "cpu" or os.environ.get("TRITON_INTERPRET") == "1"
    ok = _device_main(args, sizes) if use_device_mode else _cpu_main(args, sizes)
    if not ok:
        sys.exit("EXACTNESS FAILURE: exact paths disagree or differ from the reference (above)")


if __name__ == "__main__":
    main()
