"""Measures the constants of the per-iteration cost model in docs/scaling.md, then predicts with it.

One PE iteration with the vote fanned out over S shards costs (docs/scaling.md defines each
term):

    T = T_gen + T_embed + T_transfer + T_latency + T_vote + T_noise

Measured here, on this machine's CPU, in this run:

- the exact vote's throughput, 2 n m d flops per second, through the backend ``auto`` picks
  (``pe_core.nn.resolve_backend``) and through ``numpy-blocked`` where ``auto`` picks another,
  at a probe size (k 1, random unit vectors);
- the production noise sampler (``DiscreteGaussianSampler``, OS entropy), seconds per count;
- npz serialise and deserialise throughput (``np.savez`` to memory, ``np.load`` without
  pickle) of an (rows, d) float32 block, and the time of one (m,) int64 partial histogram;
- seconds per sample of the embedders that run offline here (``raw-pixels``, ``inception``,
  ``minilm``; two CPU threads), and Inception-v3's flops per image, counted by torch's
  ``FlopCounterMode``.

Taken from earlier GPU runs (benchmarks/results/h200-2026-11-29.md and -30.md) or assumed, and
labelled so in the output: the GPU vote rate, host-to-device copy rate and host re-rank, the
generator's rate (the shipped MNIST DDPM on an H200), the GPU embedding rate (the H100's
published TF32 peak times an assumed efficiency), network and object-store bandwidths, and the
per-task latency.

It prints the machine, every constant (value, unit, source) and the predicted seconds per
iteration for (n, m, d) on 1, 8 and 64 GPUs, as markdown tables, with the dominant term; then
what two assumptions change (a store without a bandwidth limit, a slower generator).

Usage:
    python benchmarks/cost_model.py                  # about a minute on 2 cores
    python benchmarks/cost_model.py --quick          # smaller probes, no model-based embedders
    python benchmarks/cost_model.py --n 1e6 --m 1e5 --dim 2048 --lookahead 8 --gpus 1 8 64
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

# The vote benchmark's helpers: random unit vectors, best-of timing, the 2 n m d flop count,
# the BLAS fp32 GEMM rate and the load average.
from nn_histogram import _best_of, _cpu_gemm_rate, _embeddings, _flops, _load

import pe_kernels
from pe_core.embedders import create_embedder
from pe_core.nn import resolve_backend
from pe_core.privacy import DiscreteGaussianSampler
from pe_core.samples import Samples
from pe_kernels.dispatch import CPU_BACKEND

TERMS = ("generation", "embedding", "transfer", "latency", "vote", "noise")


@dataclass(frozen=True)
class Constant:
    """One constant of the model: its value in SI-like units and where it comes from."""

    value: float
    unit: str
    source: str


@dataclass(frozen=True)
class Shape:
    """The problem: n private records, m synthetic samples, d dimensions, k votes per record,
    lookahead L and C labels (votes stay within a label)."""

    n: int
    m: int
    d: int
    k: int
    lookahead: int
    labels: int


# --- constants from earlier GPU runs, and assumptions ------------------------------------------

H200_NOV30 = "measured, H200, benchmarks/results/h200-2026-11-30.md"
H200_NOV29 = "measured, H200, benchmarks/results/h200-2026-11-29.md"


def gpu_constants(inception_flops: float, embed_efficiency: float) -> dict[str, Constant]:
    """The GPU-side constants. The H100 SXM and the H200 are the same GH100 chip with the same
    published compute peaks (the H200 has more and faster memory), so the compute-bound rates
    measured on the H200 are used for both; that transfer is itself an assumption."""
    tf32_peak = 494.7e12  # NVIDIA H100 SXM datasheet, TF32 tensor core, dense (989 is sparse)
    return {
        "R_vote": Constant(
            65.2e12,
            "flop/s",
            f"{H200_NOV30}: Triton bfloat16x3 kernel + fp32 pass, device only, (1e4, 1e4, 2048)",
        ),
        "B_h2d": Constant(
            2.05e9 / 0.268,
            "B/s",
            f"{H200_NOV30}: the kernel path's host-to-device copies, 1.91 GiB in 0.268 s",
        ),
        "f_unsettled": Constant(
            22_075 / 1e6,
            "share of rows",
            f"{H200_NOV30}: rows left to the host re-rank at (1e6, 1e4, 512), random unit rows",
        ),
        "c_rerank": Constant(
            0.17 / 22_075,
            "s/row at d 512",
            f"{H200_NOV30} (host re-rank 0.17 s); scaled by d/512: assumed",
        ),
        "r_vary": Constant(
            3888.0,
            "samples/s",
            f"{H200_NOV29}: shipped MNIST DDPM, fp16, SDEdit at degree 0.5, 2048 images",
        ),
        "r_random": Constant(
            1433.0,
            "samples/s",
            f"{H200_NOV29}: same DDPM, 20 DDIM steps (population 0 only)",
        ),
        "r_embed_gpu": Constant(
            embed_efficiency * tf32_peak / inception_flops,
            "samples/s",
            f"ASSUMED: {embed_efficiency:.0%} of the H100's 494.7 TFLOP/s dense TF32 peak / "
            "Inception-v3 flops per image (counted here)",
        ),
        "B_net": Constant(1.25e9, "B/s", "ASSUMED: 10 Gbit/s between a worker and the store"),
        "B_store": Constant(
            3.125e9,
            "B/s",
            "ASSUMED: 25 Gbit/s out of one object store (docker/compose.yaml runs one MinIO)",
        ),
        "c_task": Constant(
            0.07,
            "s/iteration",
            "measured on this CPU by benchmarks/fanout.py (results/fanout-2026-12-07.md): 4 "
            "shards of tiny votes on 2 Celery workers through Redis and SQLite, over the "
            "in-process vote",
        ),
    }


# --- measurements on this CPU -----------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, load {_load()}"


def measure_votes(size: tuple[int, int, int], repeats: int) -> tuple[dict[str, Constant], float]:
    """CPU vote rates in flop/s: the backend ``auto`` picks here, and ``numpy-blocked`` (the
    fp32 path) where ``auto`` picks another; then the BLAS fp32 GEMM rate."""
    n, m, d = size
    rng = np.random.default_rng(0)
    private, synthetic = _embeddings(rng, n, d), _embeddings(rng, m, d)
    auto = resolve_backend("auto", n, m, d, device="cpu")
    chosen = {auto.name: auto}
    if auto.name != CPU_BACKEND:
        chosen[CPU_BACKEND] = resolve_backend(CPU_BACKEND, n, m, d, device="cpu")
    rates = {}
    for name, resolved in chosen.items():
        pe_kernels.vote_histogram(resolved.backend, private[:64], synthetic, 1)  # warm-up
        vote = partial(pe_kernels.vote_histogram, resolved.backend, private, synthetic, 1)
        seconds = _best_of(repeats, vote)
        pick = " (auto's pick)" if name == auto.name else ""
        rates[f"R_vote_cpu {name}"] = Constant(
            _flops(size) / seconds,
            "flop/s",
            f"measured here{pick}: ({n}, {m}, {d}), k 1, best of {repeats}",
        )
    return rates, _cpu_gemm_rate()


def measure_noise(m: int, sigma: float, repeats: int) -> Constant:
    sampler = DiscreteGaussianSampler()
    sampler.sample(sigma, 1_000)
    seconds = _best_of(repeats, lambda: sampler.sample(sigma, m))
    return Constant(
        seconds / m, "s/count", f"measured here: DiscreteGaussianSampler, sigma {sigma:g}, {m}"
    )


def _npz_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=array)
    return buffer.getvalue()


def _npz_array(data: bytes) -> np.ndarray:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return np.asarray(npz["x"])


def measure_npz(rows: int, d: int, m: int, repeats: int) -> dict[str, Constant]:
    """npz throughput of a float32 embedding block, and the time of one int64 partial."""
    block = _embeddings(np.random.default_rng(1), rows, d)
    data = _npz_bytes(block)
    write = _best_of(repeats, lambda: _npz_bytes(block))
    read = _best_of(repeats, lambda: _npz_array(data))
    partial = np.arange(m, dtype=np.int64)
    partial_data = _npz_bytes(partial)
    partial_s = _best_of(repeats, lambda: _npz_array(_npz_bytes(partial)))
    where = f"measured here: np.savez / np.load in memory, ({rows}, {d}) float32"
    return {
        "R_ser": Constant(len(data) / write, "B/s", where),
        "R_deser": Constant(len(data) / read, "B/s", where),
        "c_partial": Constant(
            partial_s,
            "s/partial",
            f"measured here: one ({m},) int64 partial written and read ({len(partial_data)} B)",
        ),
    }


def _texts(count: int, rng: np.random.Generator) -> list[str]:
    words = ("data", "private", "sample", "model", "vote", "noise", "label", "text", "the", "a")
    return [" ".join(rng.choice(words, size=24)) for _ in range(count)]


def measure_embedders(count: int, names: list[str]) -> dict[str, tuple[float, float]]:
    """Seconds per sample and load seconds of each named embedder, on this CPU."""
    rng = np.random.default_rng(2)
    images = Samples(
        ids=np.array([f"i{i}" for i in range(count)]),
        labels=np.zeros(count, dtype=np.int64),
        label_names=("x",),
        images=rng.integers(0, 256, size=(count, 28, 28, 1), dtype=np.uint8),
    )
    texts = Samples(
        ids=np.array([f"t{i}" for i in range(count)]),
        labels=np.zeros(count, dtype=np.int64),
        label_names=("x",),
        texts=tuple(_texts(count, rng)),
    )
    out = {}
    for name in names:
        embedder = create_embedder(name)
        samples = texts if name == "minilm" else images
        start = time.perf_counter()
        embedder.embed(samples.take(np.arange(min(2, count))))  # loads the model
        load = time.perf_counter() - start
        start = time.perf_counter()
        embedder.embed(samples)
        out[name] = ((time.perf_counter() - start) / count, load)
    return out


def inception_flops() -> float:
    """Flops of one Inception-v3 forward pass at 299 x 299 (2 per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pe_core.embedders.inception import INPUT_SIZE, default_model_path

    model = torch.jit.load(str(default_model_path()), map_location="cpu").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE))
    return float(counter.get_total_flops())


# --- the model --------------------------------------------------------------------------------


def iteration_terms(
    shape: Shape, c: dict[str, Constant], shards: int, *, fan_out: bool, shard_generation: bool
) -> dict[str, float]:
    """Predicted seconds of each term of one iteration (docs/scaling.md gives the formulas).

    Args:
        shape: the problem.
        c: the constants, by symbol.
        shards: S, one GPU each; the private records are split evenly.
        fan_out: False models today's in-process loop (one GPU, no storage, no tasks).
        shard_generation: each shard also generates and embeds m/S of the population; the
            shards then exchange embedding slices through the store (an all-gather).
    """
    v = {name: constant.value for name, constant in c.items()}
    n, m, d = shape.n, shape.m, shape.d
    generators = shards if shard_generation else 1
    rows = n / shards
    # Per iteration: L lookahead variations of each of m samples, and about m variations for the
    # next population (folds x ceil(m / folds), pe_core/population.py); with L > 0 only the
    # lookahead variations are embedded (pe_core/histogram.py).
    generated = (shape.lookahead + 1) * m
    embedded = max(shape.lookahead, 1) * m
    vote = (
        2 * rows * m * d / shape.labels / v["R_vote"]
        + (rows + m) * d * 4 / v["B_h2d"]
        + v["f_unsettled"] * rows * v["c_rerank"] * d / 512
    )
    terms = {
        "generation": generated / generators / v["r_vary"],
        "embedding": embedded / generators / v["r_embed_gpu"],
        "vote": vote,
        "noise": m * v["c_noise"],
        "transfer": 0.0,
        "latency": 0.0,
    }
    if fan_out:
        synthetic = m * d * 4.0  # W: the float32 embeddings, in bytes
        partial = m * 8.0
        written = synthetic / generators  # the coordinator's W, or each shard's slice of it
        terms["transfer"] = (
            written / v["R_ser"]
            + written / v["B_net"]
            + max(synthetic / v["B_net"], shards * synthetic / v["B_store"])
            + synthetic / v["R_deser"]
            + partial / v["B_net"]
            + shards * (partial / v["B_net"] + v["c_partial"])
        )
        terms["latency"] = v["c_task"]
    return terms


def _seconds(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def prediction_table(shape: Shape, c: dict[str, Constant], gpus: list[int]) -> list[str]:
    header = "| GPUs | setup | " + " | ".join(TERMS) + " | total s | dominant |"
    lines = [header, "|" + " --- |" * (len(TERMS) + 4)]
    rows: list[tuple[str, int, bool, bool]] = [("in-process loop (today)", 1, False, False)]
    rows += [("vote fanned out", g, True, False) for g in gpus]
    rows += [("generation + embedding sharded too", g, True, True) for g in gpus if g > 1]
    for setup, shards, fan_out, shard_generation in rows:
        terms = iteration_terms(
            shape, c, shards, fan_out=fan_out, shard_generation=shard_generation
        )
        total = sum(terms.values())
        top = max(terms, key=lambda t: terms[t])
        cells = " | ".join(_seconds(terms[t]) for t in TERMS)
        lines.append(
            f"| {shards} | {setup} | {cells} | {_seconds(total)} | {top} "
            f"({100 * terms[top] / total:.0f}%) |"
        )
    return lines


def what_if(shape: Shape, c: dict[str, Constant], gpus: int) -> list[str]:
    """Totals under changed assumptions, at 1 GPU and at ``gpus`` with everything sharded."""

    def totals(changed: dict[str, Constant]) -> str:
        one = sum(iteration_terms(shape, changed, 1, fan_out=True, shard_generation=False).values())
        many = iteration_terms(shape, changed, gpus, fan_out=True, shard_generation=True)
        return (
            f"1 GPU {_seconds(one)} s; {gpus} GPUs, all sharded {_seconds(sum(many.values()))} s "
            f"(transfer {_seconds(many['transfer'])} s)"
        )

    unlimited = Constant(float("inf"), "B/s", "what if")
    slow = Constant(100.0, "samples/s", "what if")
    return [
        f"- as above: {totals(c)}",
        f"- a store with no total bandwidth limit: {totals({**c, 'B_store': unlimited})}",
        f"- a generator of 100 variations/s per GPU: {totals({**c, 'r_vary': slow})}",
    ]


def constants_table(c: dict[str, Constant]) -> list[str]:
    lines = ["| symbol | value | unit | source |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {k.value:.4g} | {k.unit} | {k.source} |" for name, k in c.items()]
    return lines


def _count(text: str) -> int:
    return int(float(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=_count, default=1_000_000, help="private records (1e6)")
    parser.add_argument("--m", type=_count, default=100_000, help="synthetic samples (1e5)")
    parser.add_argument("--dim", type=int, default=2048, help="embedding dimension (2048)")
    parser.add_argument("--k", type=int, default=1, help="votes per record (1)")
    parser.add_argument("--lookahead", type=int, default=8, help="lookahead L (8)")
    parser.add_argument("--labels", type=int, default=1, help="labels C, balanced (1)")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--sigma", type=float, default=10.0, help="noise scale for the sampler")
    parser.add_argument(
        "--embed-efficiency",
        type=float,
        default=0.2,
        help="assumed share of the H100's TF32 peak that Inception-v3 reaches (0.2)",
    )
    parser.add_argument(
        "--vary-rate",
        type=float,
        default=None,
        help="the generator's variations per second on one GPU (default: the shipped DDPM's "
        "3888, measured on an H200)",
    )
    parser.add_argument(
        "--store-rate",
        type=float,
        default=None,
        help="the object store's total bandwidth in GB/s (default 3.125; 0: unlimited, a "
        "store that scales out)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="best of this many calls")
    parser.add_argument(
        "--quick", action="store_true", help="smaller vote probe, no model-based embedders"
    )
    args = parser.parse_args()
    if args.k != 1:
        sys.exit("the GPU vote rate was measured at k 1 only; the model has no k term yet")
    shape = Shape(args.n, args.m, args.dim, args.k, args.lookahead, args.labels)
    probe = (5_000, 5_000, args.dim) if args.quick else (10_000, 10_000, args.dim)

    print(f"# cost model constants, {time.strftime('%Y-%m-%d')}: {machine()}\n")
    started = time.perf_counter()
    cpu_votes, gemm_rate = measure_votes(probe, args.repeats)
    measured = {
        **cpu_votes,
        "c_noise": measure_noise(args.m, args.sigma, args.repeats),
        **measure_npz(probe[1], args.dim, args.m, args.repeats),
    }
    names = ["raw-pixels"] if args.quick else ["raw-pixels", "inception", "minilm"]
    embedders = measure_embedders(16 if args.quick else 64, names)
    flops = inception_flops()
    print(f"numpy fp32 GEMM rate here: {gemm_rate / 1e9:.0f} GFLOP/s")
    print(f"Inception-v3 at 299 x 299: {flops / 1e9:.2f} GFLOP per image (FlopCounterMode)")
    print("embedders on this CPU (seconds per sample; model load):")
    for name, (per_sample, load) in embedders.items():
        print(
            f"  {name:<11} {per_sample * 1e3:9.3f} ms/sample ({1 / per_sample:,.0f}/s); "
            f"load {load:.2f} s"
        )
    print(f"measurements took {time.perf_counter() - started:.0f} s\n")

    constants = {**measured, **gpu_constants(flops, args.embed_efficiency)}
    if args.vary_rate is not None:
        constants["r_vary"] = Constant(args.vary_rate, "samples/s", "ASSUMED: --vary-rate")
    if args.store_rate is not None:
        rate = args.store_rate * 1e9 if args.store_rate > 0 else float("inf")
        constants["B_store"] = Constant(rate, "B/s", "ASSUMED: --store-rate")
    print("\n".join(constants_table(constants)))
    print(
        f"\n# one iteration at n {shape.n:.0e}, m {shape.m:.0e}, d {shape.d}, k {shape.k}, "
        f"L {shape.lookahead}, {shape.labels} label(s); seconds\n"
    )
    print("\n".join(prediction_table(shape, constants, args.gpus)))
    print("\nwhat if (seconds per iteration):")
    print("\n".join(what_if(shape, constants, max(args.gpus))))
    print()
    for name, rate in cpu_votes.items():
        seconds = _flops((shape.n, shape.m, shape.d)) / shape.labels / rate.value
        print(f"the same vote on this CPU, {name.split()[-1]}: {seconds:,.0f} s")


if __name__ == "__main__":
    main()
