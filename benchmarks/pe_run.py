"""A whole `privevo run`, startup and imports included: wall time and peak memory against a peer.

The setting of the "Speed" issue: a 1,497-record MNIST subset as the private data (drawn here
from data/mnist/test.npz with a fixed seed; `make data` writes it), drawtext, raw pixels, 2,000
samples, lookahead 8, threshold 1, 4 releases, epsilon 10. Each round runs this tree's privevo
and the peer's, in turn (A B A B ...), so load on a shared machine falls on both alike, and
prints the median of each side, the median of the per-round ratios A/B, and the issue's own
figures for the reference PE library, quoted (it is not on PyPI, so it is not measured here).

The peer is another checkout of privevo, typically the commit before a change:

    git worktree add --detach /tmp/privevo-before HEAD~1
    .venv/bin/python benchmarks/pe_run.py --peer /tmp/privevo-before [--rounds 5]

Both sides run `privevo run` with this interpreter, from their own tree (their code is imported
from it), with production noise, as a user would; peak memory is the kernel's maximum resident
set size of that process (wait4's ru_maxrss).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SUBSET_SIZE = 1497
SUBSET_SEED = 20261206
SETTING = [
    "--num-samples", "2000", "--lookahead", "8", "--threshold", "1", "--iterations", "4",
    "--epsilon", "10", "--quiet",
]  # fmt: skip
REFERENCE = (
    "reference PE library (the issue's figures, quoted, not measured here): 37.9-49.1 s and "
    "503 MiB peak RSS on the same setting (1,497 held-out digits); privevo was then 12.5-14.4 s "
    "and 843 MiB. At least 5x faster than the reference is at most 7.5 s on this machine."
)
# The console script's entry point, run from a tree so that its packages are the ones imported.
MAIN = "import sys; from privevo.cli import main; sys.argv[0] = 'privevo'; sys.exit(main())"


def write_subset(source: Path, target: Path) -> None:
    """The 1,497 records, chosen without replacement by a fixed seed, in the source's format."""
    with np.load(source) as data:
        arrays = {key: data[key] for key in data.files}
    order = np.random.default_rng(SUBSET_SEED).permutation(len(arrays["labels"]))
    keep = np.sort(order[:SUBSET_SIZE])
    for key in ("images", "labels"):  # label_names, if present, stays whole
        arrays[key] = arrays[key][keep]
    np.savez(target, **arrays)


def one_run(tree: Path, data: Path, scratch: Path) -> tuple[float, float]:
    """Runs privevo from ``tree`` once; returns (wall seconds, peak RSS in MiB)."""
    out = scratch / f"out-{time.monotonic_ns()}"
    command = [sys.executable, "-c", MAIN, "run", "--data", str(data), "--out", str(out)]
    started = time.perf_counter()
    process = subprocess.Popen(
        [*command, *SETTING], cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    errors = process.stderr.read().decode() if process.stderr else ""
    if process.returncode != 0:
        raise SystemExit(f"privevo in {tree} failed ({process.returncode}):\n{errors}")
    shutil.rmtree(out, ignore_errors=True)
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", type=Path, required=True, help="another privevo checkout")
    parser.add_argument("--rounds", type=int, default=5, help="counted rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds first")
    parser.add_argument("--mnist", type=Path, default=REPO / "data" / "mnist" / "test.npz")
    args = parser.parse_args()
    if not (args.peer / "privevo" / "cli.py").is_file():
        raise SystemExit(f"--peer {args.peer} is not a privevo checkout")
    if not args.mnist.is_file():
        raise SystemExit(f"{args.mnist} is missing: run `make data` first")
    sides = {"privevo (this tree)": REPO, f"peer ({args.peer})": args.peer}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory(prefix="pe-run-") as folder:
        scratch = Path(folder)
        data = scratch / "mnist1497.npz"
        write_subset(args.mnist, data)
        for round_ in range(args.warmup + args.rounds):
            for name, tree in sides.items():
                wall, peak = one_run(tree, data, scratch)
                if round_ >= args.warmup:
                    results[name].append((wall, peak))
            print(
                f"round {round_ + 1}/{args.warmup + args.rounds} done", file=sys.stderr, flush=True
            )
    print(f"{args.rounds} rounds, A B A B ..., load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'':34s} {'wall s (min / median / max)':>30s} {'peak MiB (median)':>18s}")
    for name, rows in results.items():
        walls = sorted(wall for wall, _ in rows)
        peak = statistics.median(p for _, p in rows)
        line = f"{walls[0]:.2f} / {statistics.median(walls):.2f} / {walls[-1]:.2f}"
        print(f"{name:34s} {line:>30s} {peak:>18.0f}")
    a, b = results.values()
    ratios = [wa / wb for (wa, _), (wb, _) in zip(a, b, strict=True)]
    print(
        f"ratio A/B, wall (median of the rounds' ratios): {statistics.median(ratios):.3f}"
        f" (min {min(ratios):.3f}, max {max(ratios):.3f})"
    )
    print(REFERENCE)


if __name__ == "__main__":
    main()
