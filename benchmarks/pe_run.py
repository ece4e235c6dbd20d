"""Seconds per PE iteration on the demo setting (drawtext, MNIST test split, raw pixels).

Prints wall time per phase and per iteration with lookahead 8 (PE-NOTES: the reference library
spends ~110 s on 4 such iterations, almost all rendering). Needs `make data` first.

    .venv/bin/python benchmarks/pe_run.py [--lookahead 8] [--num-samples 2000] [--iterations 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from pe_core.apis import create_api
from pe_core.config import PeJob
from pe_core.datasets import load_dataset
from pe_core.embedders import create_embedder
from pe_core.privacy import DiscreteGaussianSampler
from pe_core.runner import PrivateEvolution


class PhaseTimer:
    def __init__(self) -> None:
        self.seconds: dict[tuple[int, str], float] = defaultdict(float)
        self.current: tuple[int, str] | None = None
        self.since = time.perf_counter()

    def on_phase(self, iteration: int, phase: str) -> None:
        now = time.perf_counter()
        if self.current is not None:
            self.seconds[self.current] += now - self.since
        self.current, self.since = (iteration, phase), now

    def on_iteration(self, report) -> None:
        self.on_phase(report.iteration, "done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/mnist/test.npz"))
    parser.add_argument("--lookahead", type=int, default=8)
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--iterations", type=int, default=4)
    args = parser.parse_args()
    private = load_dataset(args.data, modality="image")
    job = PeJob(
        epsilon=1.0,
        iterations=args.iterations,
        num_samples=args.num_samples,
        lookahead=args.lookahead,
    )
    sampler = DiscreteGaussianSampler()
    timer = PhaseTimer()
    with tempfile.TemporaryDirectory() as state:
        engine = PrivateEvolution(
            job,
            api=create_api("drawtext", label_names=private.label_names),
            embedder=create_embedder("raw-pixels"),
            noise=lambda key: sampler,
            state_dir=Path(state),
            seed=0,
        )
        started = time.perf_counter()
        engine.run(private, callbacks=timer)
        total = time.perf_counter() - started
    phases = sorted({phase for _, phase in timer.seconds if phase != "done"})
    print(
        f"PE on {len(private)} private records, {job.num_samples} samples, "
        f"lookahead {job.lookahead}, backend {engine.backend.name if engine.backend else '-'}"
    )
    print(f"{'iteration':>9} " + " ".join(f"{p:>13}" for p in phases) + f" {'total s':>9}")
    for t in range(job.iterations + 1):
        row = [timer.seconds.get((t, p), 0.0) for p in phases]
        print(f"{t:>9} " + " ".join(f"{s:>13.2f}" for s in row) + f" {sum(row):>9.2f}")
    per_iteration = (
        sum(s for (t, p), s in timer.seconds.items() if t >= 1 and p != "done") / job.iterations
    )
    print(f"seconds per iteration: {per_iteration:.2f}  (whole run {total:.1f} s)")


if __name__ == "__main__":
    main()
