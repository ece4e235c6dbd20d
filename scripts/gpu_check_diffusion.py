"""GPU check of the diffusion API: fp16 sampling and SDEdit on CUDA with the shipped model.

Run by ``scripts/gpu_check.sh`` (no network). Prints throughput and how far fp16 on the GPU
lands from fp32 on the CPU for the same seeds; exits nonzero when CUDA samples are broken
(NaN-black images, or far from the fp32 reference).
"""

from __future__ import annotations

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


def main() -> int:
    if not torch.cuda.is_available():
        print("diffusion: no CUDA device; skipped")
        return 0
    gpu = DiffusionApi(DIGITS, num_inference_steps=20, batch_size=512, device="cuda")
    cpu = DiffusionApi(DIGITS, num_inference_steps=20, batch_size=64, device="cpu")
    gpu.random(0, 64, np.random.default_rng(0))  # warm-up: kernels, allocator
    samples, seconds = timed(lambda: gpu.random(3, 2048, np.random.default_rng(1)))
    print(f"diffusion: fp16 random, 2048 images x 20 DDIM steps: {2048 / seconds:.0f} images/s")
    varied, seconds = timed(lambda: gpu.variation(samples, 0.5, np.random.default_rng(2)))
    print(f"diffusion: fp16 SDEdit at degree 0.5, 2048 images: {2048 / seconds:.0f} images/s")
    reference, seconds = timed(lambda: cpu.random(3, 32, np.random.default_rng(1)))
    print(f"diffusion: fp32 CPU reference, 32 images: {32 / seconds:.1f} images/s")
    assert samples.images is not None and reference.images is not None
    diff = np.abs(samples.images[:32].astype(float) - reference.images).mean()
    ink = samples.images.mean()
    print(f"diffusion: fp16 GPU vs fp32 CPU, same seeds: mean |diff| {diff:.2f} grey levels")
    ok = diff <= MAX_MEAN_GREY_DIFF and 5 < ink < 250 and varied.images is not None
    print("diffusion: OK" if ok else "diffusion: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
