"""The fan-out's overhead per iteration, against doing the same work in one process.

``--part vote`` (the default): one iteration's vote of n private records (random 28 x 28
images, 10 labels, raw pixels) among m random synthetic embeddings, counted three ways in each
round, in turn:

* ``local``: :class:`pe_core.votes.LocalVotes`, the single-worker path (the peer);
* ``shards here``: :class:`workers.fanout.ShardedVotes` in S shards, all counted by the
  coordinator itself (no worker takes them): the fan-out's own cost, the storage round trips
  of the synthetic set and the partials, the database rows and the exact sum, without any
  parallel gain;
* ``shards on N workers``: the same with N real ``celery worker`` processes taking the shard
  tasks through Redis (skipped when none answers at ``--broker-url``): adds the dispatch and
  the claims, and whatever parallelism the machine's cores allow.

``--part generation``: one iteration's generation of m drawtext samples (the lookahead: L
variations of each sample, embedded and averaged; then one variation of each label's samples),
made three ways in each round: ``direct`` (:class:`pe_core.generation.Direct`, the
single-worker path: the peer), ``chunks here`` (:class:`workers.chunks.ShardedGeneration` in
chunks of ``--chunk`` samples, all made by the coordinator: storage, database rows, no
parallel gain) and ``chunks on N workers`` (with N real workers taking chunk tasks beside the
coordinator). drawtext is fast, so the overhead shows; a diffusion model's chunks take seconds.

The shards' private embeddings are cached before the rounds, as after a job's first
iteration. Each round is timed end to end, partial deletion included, on a SQLite database and
a local storage folder in a temporary directory. The table gives each way's median seconds per
iteration, its median per-round ratio to ``local`` in the same round, and the difference of the
medians: the overhead per iteration.

Usage:
    python benchmarks/fanout.py                      # n 20,000, m 2,000, 4 shards, 2 workers
    python benchmarks/fanout.py --records 100000 --shards 8 --workers 2 --rounds 5
    python benchmarks/fanout.py --part generation  # m 2,000, L 2, chunks of 500, 2 workers
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import redis

from pe_core.config import PeJob
from pe_core.generation import Direct, Generation
from pe_core.samples import Samples
from pe_core.votes import LocalVotes, prepare_private
from service.broker import make_celery
from service.db import (
    JobMessage,
    create_dataset,
    create_tenant,
    make_engine,
    make_session_factory,
    reserve,
    update_progress,
    write_transaction,
)
from service.db import upgrade as upgrade_database
from service.settings import Settings
from service.storage import LocalStorage
from workers import fanout, jobs
from workers.chunks import ShardedGeneration

REPO = Path(__file__).resolve().parents[1]
LABELS = tuple(str(digit) for digit in range(10))


def private_records(n: int, rng: np.random.Generator) -> Samples:
    return Samples(
        ids=np.array([f"r{i}" for i in range(n)]),
        labels=rng.integers(0, len(LABELS), n),
        label_names=LABELS,
        images=rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
    )


def make_home(root: Path, private: Samples, broker_url: str) -> tuple[jobs.JobContext, str]:
    """A service home with the records as a dataset and one queued job on it."""
    url = f"sqlite:///{root / 'privevo.sqlite3'}"
    upgrade_database(url)
    sessions = make_session_factory(make_engine(url))
    storage = LocalStorage(root / "storage")
    assert private.images is not None
    buffer = io.BytesIO()
    np.savez(buffer, images=private.images, labels=private.labels, label_names=np.array(LABELS))
    key = "uploads/benchmark.npz"
    with storage.open_write(key) as handle:
        handle.write(buffer.getvalue())
    # One backend on both sides (auto chooses by the sizes, which shards change).
    spec = PeJob(
        iterations=1, num_samples=2, epsilon=1.0, delta=1e-5, k=1, nn_backend="numpy-blocked"
    )
    with sessions() as session:
        tenant = create_tenant(session, "bench").id
        dataset = create_dataset(
            session, tenant, name="records.npz", modality="image", record_count=len(private),
            labels=list(LABELS), sha256="0" * 64, storage_path=key, epsilon_cap=10.0,
            delta_cap=1e-3,
        )  # fmt: skip
        body = {**spec.model_dump(mode="json"), "dataset_id": dataset.id}
        job_id = reserve(session, tenant, dataset.id, 1.0, 1e-5, None, body, iterations=1).id
        # Running, and its message void: no worker's sweeper or courier sends the job itself
        # (a run of it would end by deleting its votes' files under the benchmark).
        update_progress(session, job_id, iteration=0, phase="benchmark")
        with write_transaction(session):
            session.get_one(JobMessage, job_id).state = "void"
    context = jobs.JobContext(sessions, storage, time_limit_s=3600.0, heartbeat_s=30.0)
    return context, job_id


def counter(
    context: jobs.JobContext, job_id: str, private: Samples, shards: int, send: fanout.Send | None
) -> fanout.ShardedVotes:
    """The coordinator's counter: ``send`` None leaves every shard to the coordinator at once;
    otherwise shards wait up to a minute for the workers."""
    plan = fanout.Fanout(
        shard_records=-(-len(private) // shards),
        claim_after_s=0.0 if send is None else 60.0,
        stale_after_s=600.0,
        renew_s=30.0,
        send=send or (lambda *message: None),
    )
    job = jobs.load_job(context.sessions, job_id)
    assert job is not None
    made = plan.counter(context, job, jobs.job_spec(job), private, check=lambda: None)
    assert made is not None and made.shards == shards
    return made


def start_workers(root: Path, count: int, broker_url: str) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "PRIVEVO_HOME": str(root),
        "PRIVEVO_DATABASE_URL": f"sqlite:///{root / 'privevo.sqlite3'}",
        "PRIVEVO_STORAGE_ROOT": str(root / "storage"),
        "PRIVEVO_BROKER_URL": broker_url,
        "PRIVEVO_STALE_AFTER_S": str(24 * 3600),  # the job's heartbeat is not renewed here
    }
    command = [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-P", "solo",
        "-Q", "cpu", "--loglevel", "warning", "--without-mingle", "--without-gossip",
        "--without-heartbeat",
    ]  # fmt: skip
    log = (root / "workers.log").open("ab")
    return [
        subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        for _ in range(count)
    ]


def vote(
    counter: fanout.ShardedVotes,
    synthetic: np.ndarray,
    labels: np.ndarray,
    iteration: int,
) -> None:
    """One iteration's vote as the engine makes it: counted, then dropped once released."""
    counter.counts(iteration, synthetic, labels)
    counter.released(iteration)


def timed(count: Callable[[int], object], iteration: int) -> float:
    started = time.perf_counter()
    count(iteration)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("vote", "generation"), default="vote")
    parser.add_argument("--records", type=int, default=20_000, help="private records n")
    parser.add_argument("--synthetic", type=int, default=2_000, help="synthetic samples m")
    parser.add_argument("--shards", type=int, default=4, help="shards S")
    parser.add_argument("--chunk", type=int, default=500, help="samples per generation chunk")
    parser.add_argument("--lookahead", type=int, default=2, help="lookahead L (generation)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (0: none)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/8")
    args = parser.parse_args()
    if args.part == "generation":
        generation(args)
        return

    rng = np.random.default_rng(0)
    private = private_records(args.records, rng)
    synthetic = rng.random((args.synthetic, 28 * 28), dtype=np.float32)
    labels = np.arange(args.synthetic, dtype=np.int64) % len(LABELS)
    with tempfile.TemporaryDirectory(prefix="privevo-fanout-") as scratch:
        root = Path(scratch)
        context, job_id = make_home(root, private, args.broker_url)
        job = jobs.load_job(context.sessions, job_id)
        assert job is not None
        spec = jobs.job_spec(job)
        embed = jobs.cached_embedder(spec.embedding, spec.embedding_config).embed
        prepared = prepare_private(private, embed, metric="l2", privacy_unit="record")
        local = LocalVotes(spec, prepared)
        here = counter(context, job_id, private, args.shards, None)
        ways: dict[str, Callable[[int], object]] = {
            "local": lambda t: local.counts(t, synthetic, labels),
            f"{args.shards} shards here": partial(vote, here, synthetic, labels),
        }
        workers: list[subprocess.Popen[bytes]] = []
        if args.workers and _redis_answers(args.broker_url):
            remote = counter(context, job_id, private, args.shards, celery_send(root, args))
            ways[f"{args.shards} shards on {args.workers} workers"] = partial(
                vote, remote, synthetic, labels
            )
            workers = start_workers(root, args.workers, args.broker_url)
        elif args.workers:
            print(f"no Redis at {args.broker_url}: the workers' row is skipped")
        try:
            # Each vote is a new iteration (its own shard rows), as in a job.
            iterations = itertools.count(1)
            expected = local.counts(0, synthetic, labels)
            times = rounds(ways, args.rounds, iterations)
            # The fan-out must count what the single process does.
            assert np.array_equal(here.counts(next(iterations), synthetic, labels), expected)
        finally:
            for worker in workers:
                worker.terminate()
                worker.wait(timeout=30)
    print(
        f"\nn {args.records:,}, m {args.synthetic:,}, d 784, k 1, {args.rounds} rounds, "
        f"{os.cpu_count()} CPUs\n"
    )
    table(times, "local")


def generation(args: argparse.Namespace) -> None:
    """The ``--part generation`` rounds (see the module)."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="privevo-fanout-") as scratch:
        root = Path(scratch)
        context, job_id = make_home(root, private_records(10, rng), args.broker_url)
        job = jobs.load_job(context.sessions, job_id)
        assert job is not None
        spec = jobs.job_spec(job)
        api = jobs.cached_api(spec.api, LABELS, spec.api_config)
        embed = jobs.cached_embedder(spec.embedding, spec.embedding_config).embed
        population = api.variation(
            Samples.concat([api.random(c, args.synthetic // 10, rng) for c in range(10)]),
            0.5,
            rng,
        )

        def iteration(made: Generation, seed: int) -> None:
            draws = np.random.default_rng(seed)
            made.lookahead(population, count=args.lookahead, degree=0.5, rng=draws, embed=embed)
            for c in range(len(LABELS)):
                made.variation(population.with_label(c), 0.5, draws)

        def chunked(send: fanout.Send | None) -> Callable[[int], None]:
            plan = fanout.Fanout(
                shard_records=0,
                claim_after_s=10.0,
                stale_after_s=600.0,
                renew_s=30.0,
                send=send or (lambda *message: None),
                chunk_samples=args.chunk,
            )
            coordinator = ShardedGeneration(context, plan, job, spec, api, check=lambda: None)

            def run(seed: int) -> None:
                coordinator.on_phase(seed, "embed")  # each round is an iteration of its own
                iteration(coordinator.generation(), seed)

            return run

        ways: dict[str, Callable[[int], object]] = {
            "direct": partial(iteration, Direct(api)),
            f"chunks of {args.chunk} here": chunked(None),
        }
        workers: list[subprocess.Popen[bytes]] = []
        if args.workers and _redis_answers(args.broker_url):
            ways[f"chunks of {args.chunk} on {args.workers} workers + here"] = chunked(
                celery_send(root, args)
            )
            workers = start_workers(root, args.workers, args.broker_url)
        elif args.workers:
            print(f"no Redis at {args.broker_url}: the workers' row is skipped")
        try:
            times = rounds(ways, args.rounds, itertools.count(1))
        finally:
            for worker in workers:
                worker.terminate()
                worker.wait(timeout=30)
    print(
        f"\nm {args.synthetic:,} drawtext samples, L {args.lookahead}, raw pixels, "
        f"{args.rounds} rounds, {os.cpu_count()} CPUs\n"
    )
    table(times, "direct")


def celery_send(root: Path, args: argparse.Namespace) -> fanout.Send:
    """Sends tasks through Redis at ``--broker-url``, as a worker's app does."""
    app = make_celery(Settings(home=root, broker_url=args.broker_url))

    def send(task: str, task_args: tuple[object, ...], queue: str) -> None:
        app.send_task(task, args=list(task_args), queue=queue)

    return send


def rounds(
    ways: dict[str, Callable[[int], object]], count: int, numbers: Iterator[int]
) -> dict[str, list[float]]:
    """A warm-up call of each way (models loaded, caches filled, workers ready), then ``count``
    rounds timing each way in turn; each call gets the next of ``numbers`` (an iteration or a
    seed of its own). Prints each round; returns every way's seconds."""
    for make in ways.values():
        make(next(numbers))
    times: dict[str, list[float]] = {name: [] for name in ways}
    for round_ in range(count):
        load = os.getloadavg()[0]
        for name, make in ways.items():
            times[name].append(timed(make, next(numbers)))
        print(f"round {round_ + 1}: load {load:.1f}, "
              + ", ".join(f"{n} {t[-1]:.3f} s" for n, t in times.items()))  # fmt: skip
    return times


def table(times: dict[str, list[float]], peer: str) -> None:
    """Each way's median seconds, median per-round ratio to ``peer``, and overhead."""
    base = statistics.median(times[peer])
    print(f"| way | median s / iteration | x {peer} (median of rounds) | overhead s / iteration |")
    print("| --- | --- | --- | --- |")
    for name, seconds in times.items():
        ratio = statistics.median(s / b for s, b in zip(seconds, times[peer], strict=True))
        median = statistics.median(seconds)
        print(f"| {name} | {median:.3f} | {ratio:.2f} | {median - base:+.3f} |")


def _redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1.0)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


if __name__ == "__main__":
    main()
