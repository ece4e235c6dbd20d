#!/usr/bin/env bash
# GPU checks for a CUDA machine with torch and triton (no network, no FAISS or diffusers needed),
# under five minutes in all. One section per subsystem; each prints a banner, runs, and stops the
# script with a nonzero status on failure, so the last banner names what failed.
#
#   bash scripts/gpu_check.sh                # on a CUDA machine
#   bash scripts/gpu_check.sh --cpu-dry-run  # the same Python on CPU under TRITON_INTERPRET=1, toy
#                                            # sizes (tests/pe_kernels/test_gpu_check.py runs this)
#
# Add a section: write a function `section_<name>` that uses $PY and $DRY_RUN and ends every
# command that can fail with `|| return 1` (set -e does not apply inside `if`), then append its
# name to SECTIONS.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[[ -x $PY ]] || PY=python3
# The repository's packages without installing them (GPU machines have torch and triton only).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DRY_RUN=0
case "${1:-}" in
  --cpu-dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "usage: $0 [--cpu-dry-run]" >&2; exit 2 ;;
esac
if ((DRY_RUN)); then
  # Read by triton when it is first imported, so it must be in the environment of each process.
  export TRITON_INTERPRET=1
else
  "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || { echo "FAILED: torch sees no CUDA device (use --cpu-dry-run off GPU machines)" >&2; exit 1; }
fi

# The Triton vote kernel: exactness against the float64 reference (fp32, bf16 and fp16 inputs,
# awkward shapes, duplicates, ties), then ratios to a plain torch GEMM + argmin and % of the
# measured fp32 GEMM rate at (1e5, 1e4, 512) and (1e4, 1e4, 2048).
section_nn_kernels() {
  if ((DRY_RUN)); then
    timeout 120 "$PY" benchmarks/nn_histogram.py --device cpu --tiny --check || return 1
    return 0
  fi
  timeout 240 "$PY" benchmarks/nn_histogram.py --device cuda --check --repeats 3 \
    --n-private 100000 --n-synthetic 10000 --dim 512 || return 1
  timeout 60 "$PY" benchmarks/nn_histogram.py --device cuda --repeats 3 \
    --n-private 10000 --n-synthetic 10000 --dim 2048 || return 1
}

# The diffusion API with the shipped MNIST DDPM: fp16 sampling and SDEdit on CUDA, throughput,
# and the distance to fp32 CPU samples from the same seeds. diffusers is pure Python: where the
# machine lacks it, bring its wheels (`pip download --no-deps -d .gpu-wheels diffusers==0.42.1`)
# and they are installed into .gpu-site, offline, before the check.
section_diffusion() {
  if ! "$PY" -c 'import diffusers' 2>/dev/null && compgen -G ".gpu-wheels/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --target .gpu-site .gpu-wheels/*.whl || return 1
    export PYTHONPATH="$PYTHONPATH:$PWD/.gpu-site"
  fi
  if ! "$PY" -c 'import diffusers' 2>/dev/null; then
    echo "diffusion: skipped: diffusers is not importable (see the comment above this section)"
    return 0
  fi
  local flags=()
  ((DRY_RUN)) && flags=(--cpu-dry-run)
  timeout 240 "$PY" scripts/gpu_check_diffusion.py "${flags[@]}" || return 1
}

# The llm API's vLLM backend, where vLLM is installed (it pins its own torch, so GPU images
# only): a few random samples from a local model folder named by PRIVEVO_VLLM_MODEL.
section_vllm() {
  if ((DRY_RUN)) || ! "$PY" -c 'import vllm' 2>/dev/null || [[ -z ${PRIVEVO_VLLM_MODEL:-} ]]; then
    echo "vllm: skipped: needs a CUDA machine with vllm installed and PRIVEVO_VLLM_MODEL set"
    return 0
  fi
  timeout 240 "$PY" - <<'PYTHON' || return 1
import os, time
import numpy as np
from pe_core.apis import create_api
api = create_api("llm", label_names=("sport", "tech"), backend="vllm",
                 backend_config={"model": os.environ["PRIVEVO_VLLM_MODEL"]})
start = time.perf_counter()
samples = api.random(0, 64, np.random.default_rng(0))
seconds = time.perf_counter() - start
assert len(samples) == 64 and all(samples.texts), "empty vLLM answers"
print(f"vllm: 64 random samples in {seconds:.1f} s ({api.usage.generated_tokens / seconds:.0f} tokens/s)")
print("vllm:", samples.texts[0][:120])
PYTHON
}

SECTIONS=(nn_kernels diffusion vllm)

for section in "${SECTIONS[@]}"; do
  echo "=== gpu_check: $section$( ((DRY_RUN)) && echo ' (CPU dry run)')"
  if ! "section_$section"; then
    echo "=== gpu_check: $section FAILED" >&2
    exit 1
  fi
  echo "=== gpu_check: $section ok"
done
echo "=== gpu_check: all sections passed"
