"""The ``privevo`` command line: run PE locally, audit a run, calibrate noise."""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError

# The registries, for the help texts: every registered name (no engine loads with them).
from pe_core.apis import API_REGISTRY
from pe_core.embedders import EMBEDDER_REGISTRY
from pe_core.errors import PrivevoError
from pe_core.nn import backend_names
from pe_core.registry import Registry

app = typer.Typer(
    help="privevo: differentially private synthetic data with Private Evolution.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
privacy_app = typer.Typer(help="Privacy accounting tools.", no_args_is_help=True)
app.add_typer(privacy_app, name="privacy")
keys_app = typer.Typer(help="API keys of the service.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
tenants_app = typer.Typer(help="Tenants of the service: their own limits.", no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")
master_key_app = typer.Typer(
    help="The master key of encryption at rest (docs/storage.md).", no_args_is_help=True
)
app.add_typer(master_key_app, name="master-key")


def _names(registry: Registry[Any]) -> str:
    return " | ".join(registry.names())


def fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


def _validation_message(what: str, exc: ValidationError) -> str:
    lines = [f"  {'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()]
    return f"{what}:\n" + "\n".join(lines)


# The options `run` and `audit` share, declared once.
IterationsOption = Annotated[
    int | None, typer.Option("--iterations", "-T", help="Noisy releases T [default: 4]")
]
NumSamplesOption = Annotated[
    int | None, typer.Option(help="Synthetic samples in all [default: 2000]")
]
LookaheadOption = Annotated[int | None, typer.Option(help="Lookahead L [default: 0]")]
KOption = Annotated[int | None, typer.Option(help="Neighbours per record [default: 1]")]
EmbeddingOption = Annotated[
    str | None,
    typer.Option(help=f"Embedder: {_names(EMBEDDER_REGISTRY)} [default: raw-pixels]"),
]
NnBackendOption = Annotated[
    str | None,
    typer.Option(help=f"{' | '.join(backend_names())} (triton: CUDA only) [default: auto]"),
]


def _parse_fractions(value: str) -> str | dict[str, float]:
    if value in ("uniform", "dp"):
        return value
    fractions: dict[str, float] = {}
    for item in value.split(","):
        name, sep, number = item.partition("=")
        try:
            if not sep:
                raise ValueError
            fractions[name.strip()] = float(number)
        except ValueError:
            raise fail(
                f"--label-fractions {value!r}: use 'uniform', 'dp' or 'cat=0.7,dog=0.3'"
            ) from None
    return fractions


def _parse_mapping(flag: str, value: str) -> dict[str, Any]:
    """A flag's parameters: a JSON object, or ``key=value`` pairs separated by commas, each
    value read as JSON where it parses (numbers, true, null, [lists]) and as text otherwise."""
    if value.lstrip().startswith("{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise fail(f"{flag}: not a JSON object ({exc.msg}): {value!r}") from None
        if not isinstance(parsed, dict):
            raise fail(f"{flag}: give a JSON object, got {value!r}")
        return parsed
    mapping: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise fail(f"{flag} {value!r}: use key=value pairs, e.g. size=14,grayscale=true")
        try:
            mapping[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            mapping[key.strip()] = text
    return mapping


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML file with any of these options")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Private data: image folder/zip, npz, jsonl/csv/parquet")
    ] = None,
    eval_data: Annotated[
        Path | None, typer.Option(help="Held-out real data for NOT-DP evaluation in OUT/eval")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output directory [default: privevo-out]")
    ] = None,
    api: Annotated[
        str | None, typer.Option(help=f"Variation API: {_names(API_REGISTRY)} [default: drawtext]")
    ] = None,
    api_config: Annotated[
        str | None,
        typer.Option(help="API parameters: JSON or key=value,... (over the config file's)"),
    ] = None,
    embedding: EmbeddingOption = None,
    embedding_config: Annotated[
        str | None,
        typer.Option(help="Embedder parameters: JSON or key=value,... (e.g. size=14)"),
    ] = None,
    epsilon: Annotated[float | None, typer.Option(help="Target epsilon [default: 1]")] = None,
    delta: Annotated[float | None, typer.Option(help="Target delta [default: 1e-6]")] = None,
    iterations: IterationsOption = None,
    num_samples: NumSamplesOption = None,
    candidates: Annotated[
        int | None,
        typer.Option(help="Samples voted on per iteration, in all [default: --num-samples]"),
    ] = None,
    lookahead: LookaheadOption = None,
    threshold: Annotated[
        float | None, typer.Option(help="Vote threshold H [default: 2 sigma; strokes 1 sigma]")
    ] = None,
    k: KOption = None,
    selection: Annotated[
        str | None, typer.Option(help="sample | systematic | rank [default: sample]")
    ] = None,
    folds: Annotated[int | None, typer.Option(help="Variations per selected sample")] = None,
    keep_selected: Annotated[
        bool | None, typer.Option("--keep-selected/--no-keep-selected")
    ] = None,
    vary_last: Annotated[
        bool | None,
        typer.Option(
            "--vary-last/--no-vary-last",
            help="--no-vary-last: output the last vote's best --num-samples of --candidates "
            "(needs more candidates than samples) instead of their variations",
        ),
    ] = None,
    metric: Annotated[str | None, typer.Option(help="l2 | cosine [default: l2]")] = None,
    labels: Annotated[
        str | None, typer.Option(help="Public label set, comma-separated [default: from data]")
    ] = None,
    label_fractions: Annotated[
        str | None,
        typer.Option(help="'uniform' (default), 'dp' (estimated, charged) or 'a=0.6,b=0.4'"),
    ] = None,
    text_column: Annotated[str | None, typer.Option(help="Text column [default: text]")] = None,
    label_column: Annotated[str | None, typer.Option(help="Label column [default: label]")] = None,
    user_column: Annotated[
        str | None,
        typer.Option(
            help="Column (or npz array) naming each record's user: protects one user's records "
            "(privacy unit 'user') instead of one record"
        ),
    ] = None,
    votes_per_user: Annotated[
        int | None,
        typer.Option(help="User unit: distinct samples one user votes for per iteration [1]"),
    ] = None,
    labels_per_user: Annotated[
        int | None,
        typer.Option(help="User unit: labels one user is counted in by dp fractions [1]"),
    ] = None,
    nn_backend: NnBackendOption = None,
    seed: Annotated[int | None, typer.Option(help="Seed of generation and selection")] = None,
    insecure_test_noise: Annotated[
        bool,
        typer.Option("--insecure-test-noise", help="Seeded noise for tests: NOT PRIVATE result"),
    ] = False,
    no_privacy: Annotated[
        bool, typer.Option("--no-privacy", help="No noise (a baseline): NOT PRIVATE result")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out with its recorded settings")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar")] = False,
) -> None:
    """Run Private Evolution on a private dataset and write a DP synthetic one to --out."""
    # The engine (torch, scipy, matplotlib) loads only for `run`: `serve` runs without it.
    from pe_core.apis.llm_backends import register_openai_backend
    from pe_core.apis.llm_backends.openai_backend import API_KEY_SETTING, BASE_URL_SETTING
    from pe_core.checks import JobRefused
    from privevo.local import RunSpec, recorded_settings, run_local

    settings: dict[str, Any] = {}
    if resume:
        if out is None:
            raise fail("--resume needs --out, the directory of the run to continue")
        try:
            settings.update(recorded_settings(out))
        except PrivevoError as exc:
            raise fail(str(exc)) from None
    if config is not None:
        try:
            loaded = yaml.safe_load(config.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise fail(f"cannot read config {config}: {exc}") from None
        if not isinstance(loaded, dict):
            raise fail(f"config {config} must be a YAML mapping of options")
        settings.update(loaded)
    flags: dict[str, Any] = {
        "data": data,
        "eval_data": eval_data,
        "out": out,
        "api": api,
        "embedding": embedding,
        "epsilon": epsilon,
        "delta": delta,
        "iterations": iterations,
        "num_samples": num_samples,
        "candidates": candidates,
        "lookahead": lookahead,
        "threshold": threshold,
        "k": k,
        "selection": selection,
        "folds": folds,
        "keep_selected": keep_selected,
        "vary_last": vary_last,
        "metric": metric,
        "labels": None if labels is None else [s.strip() for s in labels.split(",") if s.strip()],
        "label_fractions": None if label_fractions is None else _parse_fractions(label_fractions),
        "text_column": text_column,
        "label_column": label_column,
        "user_column": user_column,
        "votes_per_user": votes_per_user,
        "labels_per_user": labels_per_user,
        "nn_backend": nn_backend,
        "seed": seed,
    }
    settings.update({key: value for key, value in flags.items() if value is not None})
    # Parameter flags add to (and override keys of) the config file's parameters.
    for key, flag, value in (
        ("api_config", "--api-config", api_config),
        ("embedding_config", "--embedding-config", embedding_config),
    ):
        if value is not None:
            settings[key] = {**settings.get(key, {}), **_parse_mapping(flag, value)}
    if insecure_test_noise:
        settings["insecure_test_noise"] = True
    if no_privacy:
        settings["no_privacy"] = True
        settings["epsilon"] = math.inf
    try:
        spec = RunSpec.model_validate(settings)
    except ValidationError as exc:
        raise fail(_validation_message("invalid run settings", exc)) from None
    # The openai backend's key and allowed server come from this edge's environment only.
    register_openai_backend(
        api_key=os.environ.get(API_KEY_SETTING), allowed_base_url=os.environ.get(BASE_URL_SETTING)
    )
    try:
        done = run_local(spec, policy=_local_policy(), resume=resume, progress=not quiet)
    except JobRefused as exc:
        problems = "\n".join(f"  {problem}" for problem in exc.problems)
        raise fail(f"the job cannot run on this data:\n{problems}") from None
    except PrivevoError as exc:
        raise fail(str(exc)) from None
    typer.echo(done.summary())


@app.command()
def audit(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="A run's YAML config (its eval_data is not used)"),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Data the audited run uses [default: data/mnist/test.npz, the public MNIST "
            "stand-in from `make data`]. On private data the audit spends its budget."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="New folder for audit.json and the run's state [default: privevo-audit]"),
    ] = None,
    epsilon: Annotated[float | None, typer.Option(help="Claimed epsilon [default: 1]")] = None,
    delta: Annotated[float | None, typer.Option(help="Claimed delta [default: 1e-6]")] = None,
    iterations: IterationsOption = None,
    num_samples: NumSamplesOption = None,
    lookahead: LookaheadOption = None,
    k: KOption = None,
    embedding: EmbeddingOption = None,
    nn_backend: NnBackendOption = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the run's generation")] = None,
    canaries: Annotated[
        int, typer.Option("--canaries", "-m", help="m: canary records, each in with prob. 1/2")
    ] = 2000,
    guesses: Annotated[
        int,
        typer.Option(
            "--guesses", "-r", help="r: guesses (half 'in' on top scores, half 'out'); rest abstain"
        ),
    ] = 200,
    mode: Annotated[
        str,
        typer.Option(
            help="white-box: score each canary by the noisy counts of its own pinned candidate; "
            "black-box: by its distance to the synthetic data (little power for PE)"
        ),
    ] = "white-box",
    canary_seed: Annotated[
        int | None,
        typer.Option(help="Seed of the canaries and their coins [default: fresh, reported]"),
    ] = None,
    confidence: Annotated[float, typer.Option(help="Confidence of the bound")] = 0.95,
    insecure_test_noise: Annotated[
        bool,
        typer.Option("--insecure-test-noise", help="Seeded noise, reproducible: NOT PRIVATE"),
    ] = False,
    no_privacy: Annotated[
        bool, typer.Option("--no-privacy", help="No noise: shows what the audit can see")
    ] = False,
    inject_bug_sigma_divisor: Annotated[
        float | None,
        typer.Option(hidden=True, help="NOT PRIVATE: draw the noise at sigma / this"),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar")] = False,
) -> None:
    """Measure a lower bound on the epsilon a PE run actually leaks, and print it as JSON.

    Adds m canary records (drawtext digits, small and turned: legal for the generator, unlike
    real digits), each independently with probability 1/2, runs the job once, scores each
    canary from the released output alone, guesses "in" for the r/2 top scores and "out" for
    the r/2 lowest, and turns the correct guesses into the largest epsilon they refute at the
    chosen confidence, 95% by default (one-run method of Steinke, Nasr & Jagielski 2023). A
    bound above the claimed epsilon means the run leaks more than it claims; one at or below
    it is consistent with the claim. The report (also OUT/audit.json) holds the bound, its
    confidence, m, r, the canaries' design and seed, next to the claimed epsilon.

    The audit is a run on its data: on private data it spends that dataset's budget like any
    run. The default data is the MNIST stand-in, which is public: audit there.

    Example (a row of the README's table, about 20 s on 2 cores):
    privevo audit --config configs/mnist-drawtext.yaml --epsilon 4 --out runs/audit-eps4
    """
    from pe_core.audit import AuditPlan
    from pe_core.checks import JobRefused
    from privevo.audit import STAND_IN, audit_local, summary
    from privevo.local import RunSpec

    settings: dict[str, Any] = {}
    if config is not None:
        try:
            loaded = yaml.safe_load(config.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise fail(f"cannot read config {config}: {exc}") from None
        if not isinstance(loaded, dict):
            raise fail(f"config {config} must be a YAML mapping of options")
        settings.update({key: value for key, value in loaded.items() if key != "eval_data"})
    flags: dict[str, Any] = {
        "data": data,
        "out": out,
        "epsilon": epsilon,
        "delta": delta,
        "iterations": iterations,
        "num_samples": num_samples,
        "lookahead": lookahead,
        "k": k,
        "embedding": embedding,
        "nn_backend": nn_backend,
        "seed": seed,
    }
    settings.update({key: value for key, value in flags.items() if value is not None})
    settings.setdefault("data", STAND_IN)
    settings.setdefault("out", Path("privevo-audit"))
    if insecure_test_noise:
        settings["insecure_test_noise"] = True
    if no_privacy:
        settings["no_privacy"] = True
        settings["epsilon"] = math.inf
    try:
        spec = RunSpec.model_validate(settings)
    except ValidationError as exc:
        raise fail(_validation_message("invalid audit settings", exc)) from None
    plan = AuditPlan(
        canaries=canaries,
        guesses=guesses,
        mode=mode,  # type: ignore[arg-type]  # checked by plan.problems()
        seed=secrets.randbits(32) if canary_seed is None else canary_seed,
        confidence=confidence,
    )
    try:
        report = audit_local(
            spec,
            plan,
            policy=_local_policy(),
            sigma_divisor=inject_bug_sigma_divisor,
            progress=not quiet,
        )
    except JobRefused as exc:
        problems = "\n".join(f"  {problem}" for problem in exc.problems)
        raise fail(f"the job cannot run on this data:\n{problems}") from None
    except PrivevoError as exc:
        raise fail(str(exc)) from None
    typer.echo(summary(report), err=True)
    typer.echo(json.dumps(report, indent=2))


def _local_policy() -> Any:
    """The privacy policy of a local run, from this edge's environment."""
    from privevo.local import local_policy

    try:
        return local_policy(os.environ)
    except PrivevoError as exc:
        raise fail(str(exc)) from None


@privacy_app.command()
def calibrate(
    epsilon: Annotated[float, typer.Option(help="Target epsilon")],
    iterations: Annotated[int, typer.Option("--iterations", "-T", help="Noisy releases T")],
    delta: Annotated[float, typer.Option(help="Target delta")] = 1e-6,
    k: Annotated[int, typer.Option(help="Neighbours per record (k releases per iteration)")] = 1,
    dp_label_fractions: Annotated[
        bool,
        typer.Option("--dp-label-fractions", help="Add one release for DP label fractions"),
    ] = False,
) -> None:
    """Print the noise sigma that meets (epsilon, delta) for T iterations, as JSON."""
    from privevo.api import calibrate as calibrate_job

    try:
        # The job model's own count of releases, as a run with these settings makes them.
        result = calibrate_job(
            epsilon,
            delta,
            iterations,
            k=k,
            label_fractions="dp" if dp_label_fractions else "uniform",
        )
    except ValidationError as exc:
        raise fail(_validation_message("invalid calibration settings", exc)) from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    record: dict[str, Any] = {
        "sigma": result.sigma,
        "epsilon": result.epsilon,
        "epsilon_target": epsilon,
        "delta": delta,
        "iterations": iterations,
        "k": k,
        "releases": result.releases,
        "mechanism": result.mechanism,
        "accountant": result.accountant,
    }
    typer.echo(json.dumps(record, indent=2))


def _service_settings() -> Any:
    from service.db import upgrade
    from service.settings import Settings

    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    return settings


def _worker_command(queues: str, concurrency: int) -> list[str]:
    pool = "solo" if concurrency == 1 else "prefork"
    return [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
        "--queues", queues, "--concurrency", str(concurrency), "--pool", pool,
        "--loglevel", "warning",
    ]  # fmt: skip


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    local_worker: Annotated[
        bool,
        typer.Option("--local-worker/--no-local-worker", help="Also run one worker process"),
    ] = True,
) -> None:
    """Start the REST gateway and, by default, one local worker.

    With no PRIVEVO_* settings this is the embedded single-machine setup: SQLite, local storage
    and a broker on the file system under ./privevo-data (no Redis needed). A job whose worker
    died, or whose message was lost, is sent again by a running worker's sweeper (see `privevo
    worker --help`); each run of a job is limited to PRIVEVO_TASK_TIME_LIMIT_S. Production sets
    PRIVEVO_DATABASE_URL and PRIVEVO_BROKER_URL and starts workers with `privevo worker` on as
    many machines as needed.
    """
    import uvicorn

    from service.app import create_app

    settings = _service_settings()
    worker = _start_owned(_worker_command("cpu,gpu", 1)) if local_worker else None
    # uvicorn re-raises the signal that stopped it once it has shut down. Turned into an
    # exception, SIGTERM then reaches the `finally` below (its default action would end the
    # process at once and leave the worker running).
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.run(
            create_app(settings), host=host, port=port, log_level="info", **settings.uvicorn_options
        )
    finally:
        if worker is not None:
            _stop_owned(worker)


WORKER_STOP_S = 15
"""How long ``serve`` waits for its worker's warm shutdown before killing it (a killed job
resumes from its checkpoint and reuses its recorded releases)."""


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _start_owned(command: list[str]) -> subprocess.Popen[bytes]:
    """Starts a child process that the kernel kills if this process dies without stopping it."""

    def die_with_parent() -> None:
        if sys.platform == "linux":
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return subprocess.Popen(command, preexec_fn=die_with_parent)


def _stop_owned(child: subprocess.Popen[bytes]) -> None:
    """A warm shutdown of a child, then a kill after ``WORKER_STOP_S``."""
    child.terminate()
    try:
        child.wait(timeout=WORKER_STOP_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="Queues to consume: cpu, gpu or cpu,gpu")] = "cpu",
    concurrency: Annotated[int, typer.Option(help="Jobs run at once")] = 1,
) -> None:
    """Start a worker that runs PE jobs from the broker (PRIVEVO_BROKER_URL).

    Every PRIVEVO_SWEEP_INTERVAL_S it also sends the jobs' messages still pending in the
    database (a create while the broker was down), and sends again the message of a job that
    has none: lost with a Redis restarted without persistence, or held by a worker that died
    (no heartbeat for PRIVEVO_STALE_AFTER_S). A job waiting in a busy queue gets no second one.
    """
    _service_settings()
    command = _worker_command(queues, concurrency)
    os.execv(command[0], command)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _parse_duration(value: str) -> int:
    """Seconds in a duration such as ``90m``, ``12h``, ``30d`` or ``2w``."""
    number, unit = value[:-1], value[-1:].lower()
    if unit not in _DURATION_UNITS or not number.isdigit() or int(number) == 0:
        raise fail(
            f"--expires-in {value!r}: give a whole number and a unit, one of "
            f"{', '.join(_DURATION_UNITS)} (e.g. 30d, 12h)"
        )
    return int(number) * _DURATION_UNITS[unit]


def _key_sessions() -> Any:
    from service import db

    settings = _service_settings()
    return db.make_session_factory(db.make_engine(settings.resolved_database_url))


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant name; created when new")],
    expires_in: Annotated[
        str | None,
        typer.Option(help="The key stops working after this long: 90m, 12h, 30d, 2w"),
    ] = None,
) -> None:
    """Create an API key for a tenant and print it (only its hash is stored)."""
    from datetime import UTC, datetime, timedelta

    from service import db

    expires_at = None
    if expires_in is not None:
        expires_at = datetime.now(UTC) + timedelta(seconds=_parse_duration(expires_in))
    with _key_sessions()() as session:
        owner = db.tenant_named(session, tenant)
        _, key = db.create_api_key(session, owner.id, expires_at=expires_at)
    typer.echo(key)


@keys_app.command("list")
def keys_list(tenant: Annotated[str, typer.Option(help="Tenant name")]) -> None:
    """List a tenant's keys: prefix, created, expires, revoked (never the keys)."""
    from sqlalchemy import select

    from service import db

    with _key_sessions()() as session:
        with db.read_transaction(session):
            statement = select(db.Tenant.id).where(db.Tenant.name == tenant)
            owners = list(session.scalars(statement))
        if not owners:
            raise fail(f"no tenant is called {tenant!r}")
        keys = [key for owner in owners for key in db.list_api_keys(session, owner)]

    def when(moment: Any) -> str:
        return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%SZ")

    typer.echo(f"{'prefix':<14}{'created':<22}{'expires':<22}revoked")
    for key in keys:
        typer.echo(
            f"{key.prefix:<14}{when(key.created_at):<22}{when(key.expires_at):<22}"
            f"{when(key.revoked_at)}"
        )


@keys_app.command("revoke")
def keys_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix, as `keys list` shows it")],
) -> None:
    """Revoke a key: the API and the console refuse it (401) from the next request on."""
    from service import db

    with _key_sessions()() as session:
        try:
            row = db.revoke_api_key_by_prefix(session, prefix)
        except (db.NotFound, ValueError) as exc:
            raise fail(str(exc)) from None
    typer.echo(f"revoked {row.prefix}")


_LIMITS = {
    "max_epsilon_cap": ("PRIVEVO_MAX_EPSILON_CAP", float),
    "max_delta_cap": ("PRIVEVO_MAX_DELTA_CAP", float),
    "max_queued_jobs": ("PRIVEVO_MAX_QUEUED_JOBS", int),
    "max_stored_bytes": ("PRIVEVO_MAX_STORED_BYTES", int),
}
_LIMIT_HELP = 'a number, or "default" for the server\'s setting'


@tenants_app.command("limits")
def tenants_limits(
    tenant: Annotated[str, typer.Option(help="Tenant name")],
    max_epsilon_cap: Annotated[
        str | None, typer.Option(help=f"Largest epsilon cap of an upload: {_LIMIT_HELP}")
    ] = None,
    max_delta_cap: Annotated[
        str | None, typer.Option(help=f"Largest delta cap of an upload: {_LIMIT_HELP}")
    ] = None,
    max_queued_jobs: Annotated[
        str | None, typer.Option(help=f"Most jobs queued or running at once: {_LIMIT_HELP}")
    ] = None,
    max_stored_bytes: Annotated[
        str | None, typer.Option(help=f"Most bytes of uploads kept: {_LIMIT_HELP}")
    ] = None,
) -> None:
    """Show a tenant's limits, after changing those given (the others keep their value)."""
    from sqlalchemy import select

    from service import db

    given = {
        "max_epsilon_cap": max_epsilon_cap,
        "max_delta_cap": max_delta_cap,
        "max_queued_jobs": max_queued_jobs,
        "max_stored_bytes": max_stored_bytes,
    }
    changes: dict[str, float | int | None] = {}
    for name, value in given.items():
        if value is None:
            continue
        kind = _LIMITS[name][1]
        try:
            changes[name] = None if value == "default" else kind(value)
        except ValueError:
            flag = "--" + name.replace("_", "-")
            raise fail(f"{flag} {value!r}: give {_LIMIT_HELP}") from None
    with _key_sessions()() as session:
        with db.read_transaction(session):
            statement = select(db.Tenant).where(db.Tenant.name == tenant)
            owners = list(session.scalars(statement.order_by(db.Tenant.created_at)))
        if not owners:
            raise fail(f"no tenant is called {tenant!r} (privevo keys create makes one)")
        owner = owners[0]
        limits = {name: getattr(owner, name) for name in _LIMITS} | changes
        try:
            if {"max_epsilon_cap", "max_delta_cap"} & changes.keys():
                owner = db.set_tenant_limits(
                    session,
                    owner.id,
                    max_epsilon_cap=limits["max_epsilon_cap"],
                    max_delta_cap=limits["max_delta_cap"],
                )
            if {"max_queued_jobs", "max_stored_bytes"} & changes.keys():
                queued, stored = limits["max_queued_jobs"], limits["max_stored_bytes"]
                owner = db.set_tenant_quotas(
                    session,
                    owner.id,
                    max_queued_jobs=None if queued is None else int(queued),
                    max_stored_bytes=None if stored is None else int(stored),
                )
        except ValueError as exc:
            raise fail(str(exc)) from None
    for name, (setting, _) in _LIMITS.items():
        value = limits[name]
        if value is None:
            shown = f"{setting} (the server's setting)"
        else:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
        typer.echo(f"{name:<18}{shown}")


@master_key_app.command("rotate")
def master_key_rotate() -> None:
    """Wrap every data key with a new master key, in one transaction (the stored objects do
    not change).

    The key in use comes from PRIVEVO_MASTER_KEY, the new one from PRIVEVO_NEW_MASTER_KEY
    (environment variables, never arguments, which other users can see). Stop the gateway and
    the workers first: they unwrap keys with the master key they started with. Then set
    PRIVEVO_MASTER_KEY to the new key everywhere and start them again.
    """
    import os

    from service.crypto import KeyUnwrapError, WeakMasterKeyError, parse_master_key
    from service.crypto import rotate_master_key as rotate

    settings = _service_settings()
    if settings.master_key is None:
        raise fail("set PRIVEVO_MASTER_KEY to the master key in use: it unwraps the data keys")
    new_value = os.environ.get("PRIVEVO_NEW_MASTER_KEY")
    if not new_value:
        raise fail(
            "set PRIVEVO_NEW_MASTER_KEY to the new master key (32 random bytes in base64: "
            "openssl rand -base64 32)"
        )
    try:
        new = parse_master_key(new_value)
    except WeakMasterKeyError as exc:
        raise fail(str(exc).replace("PRIVEVO_MASTER_KEY", "PRIVEVO_NEW_MASTER_KEY")) from None
    try:
        count = rotate(_key_sessions(), settings.master_key_bytes, new)
    except (KeyUnwrapError, ValueError) as exc:
        raise fail(f"{exc}; nothing was changed") from None
    typer.echo(
        f"rewrapped {count} data key(s); now set PRIVEVO_MASTER_KEY to the new key for the "
        "gateway and every worker, and start them"
    )


@app.command()
def version() -> None:
    """Print the version."""
    from pe_core import __version__

    typer.echo(__version__)


def main() -> None:
    app(prog_name="privevo")


if __name__ == "__main__":
    sys.exit(main())
