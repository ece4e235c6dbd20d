"""Request latency of job creation and status polling on a local `privevo serve` (embedded).

Starts the gateway (SQLite, filesystem broker, no worker, so jobs stay queued), uploads a
small dataset, then times N job creates and N status polls, and /healthz as the floor the
framework itself sets. Prints p50/p99 in milliseconds and the ratio to /healthz's p50.

    .venv/bin/python benchmarks/api_latency.py [--n 300]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.array(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="requests of each kind")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "PRIVEVO_HOME": home}
        cli = [sys.executable, "-m", "privevo.cli"]
        key = subprocess.run(
            [*cli, "keys", "create", "--tenant", "bench"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        port = _port()
        server = subprocess.Popen(
            [*cli, "serve", "--port", str(port), "--no-local-worker"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            ) as client:
                for _ in range(300):
                    try:
                        client.get("/healthz")
                        break
                    except httpx.TransportError:
                        time.sleep(0.1)
                rng = np.random.default_rng(0)
                buffer = io.BytesIO()
                np.savez(
                    buffer,
                    images=rng.integers(0, 255, (100, 28, 28), dtype=np.uint8),
                    labels=np.arange(100) % 10,
                )
                dataset = client.post(
                    "/v1/datasets",
                    files={"file": ("d.npz", buffer.getvalue())},
                    data={
                        "name": "bench",
                        "modality": "image",
                        "epsilon_cap": "100",
                        "delta_cap": "0.5",
                    },
                ).json()
                timings: dict[str, list[float]] = {"healthz": [], "create job": [], "poll": []}
                job_ids = []
                for i in range(args.n):
                    start = time.perf_counter()
                    client.get("/healthz")
                    timings["healthz"].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    response = client.post(
                        "/v1/jobs",
                        json={"dataset_id": dataset["id"], "epsilon": 0.01},
                        headers={"Idempotency-Key": f"bench-{i}"},
                    )
                    timings["create job"].append(time.perf_counter() - start)
                    assert response.status_code == 202, response.text
                    job_ids.append(response.json()["id"])
                for job_id in job_ids:
                    start = time.perf_counter()
                    client.get(f"/v1/jobs/{job_id}")
                    timings["poll"].append(time.perf_counter() - start)
        finally:
            server.terminate()
            server.wait(timeout=30)
    floor, _ = _percentiles(timings["healthz"])
    print(f"{'request':<12} {'p50 ms':>8} {'p99 ms':>8} {'x healthz p50':>14}   (n={args.n})")
    for name, seconds in timings.items():
        p50, p99 = _percentiles(seconds)
        print(f"{name:<12} {p50:>8.2f} {p99:>8.2f} {p50 / floor:>14.1f}")


if __name__ == "__main__":
    main()
