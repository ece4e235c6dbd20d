"""GPU check of the diffusion API: fp16 sampling and SDEdit on CUDA with the shipped model.

Run by ``scripts/gpu_check.sh`` (no network; diffusers must be importable). Prints throughput
and how far fp16 on the GPU lands from fp32 on the CPU for the same seeds; exits nonzero when
the GPU samples are broken (NaN-black images, or far from the fp32 reference).
``--cpu-dry-run`` runs the same steps on the CPU at toy sizes.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from pe_core.apis.diffusion import DiffusionApi

DIGITS = [str(d) for d in range(10)]
MAX_MEAN_GREY_DIFF = 12.0
"""fp16 and fp32 DDIM from the same noise differ by a few grey levels; more means a bug."""


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cpu-dry-run", action="store_true", help="the same steps on the CPU at toy sizes"
    )
    args = parser.parse_args(argv)
    if args.cpu_dry_run:
        device, n, steps = "cpu", 8, 2
    elif torch.cuda.is_available():
        device, n, steps = "cuda", 2048, 20
    else:
        print("diffusion: FAILED: torch sees no CUDA device")
        return 1
    api = DiffusionApi(DIGITS, num_inference_steps=steps, batch_size=512, device=device)
    cpu = DiffusionApi(DIGITS, num_inference_steps=steps, batch_size=64, device="cpu")
    api.random(0, 8, np.random.default_rng(0))  # warm-up: kernels, allocator
    dtype = "fp16" if device == "cuda" else "fp32"
    samples, seconds = timed(lambda: api.random(3, n, np.random.default_rng(1)))
    print(f"diffusion: {dtype} random, {n} images x {steps} DDIM steps: {n / seconds:.0f} images/s")
    varied, seconds = timed(lambda: api.variation(samples, 0.5, np.random.default_rng(2)))
    print(f"diffusion: {dtype} SDEdit at degree 0.5, {n} images: {n / seconds:.0f} images/s")
    m = min(n, 32)
    reference, seconds = timed(lambda: cpu.random(3, m, np.random.default_rng(1)))
    print(f"diffusion: fp32 CPU reference, {m} images: {m / seconds:.1f} images/s")
    assert samples.images is not None and reference.images is not None
    diff = np.abs(samples.images[:m].astype(float) - reference.images).mean()
    ink = samples.images.mean()
    print(f"diffusion: {dtype} {device} vs fp32 CPU, same seeds: mean |diff| {diff:.2f} grey")
    ok = diff <= MAX_MEAN_GREY_DIFF and 5 < ink < 250 and len(varied) == n
    print("diffusion: OK" if ok else "diffusion: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
