"""Settings of the gateway and the workers, read once from the environment (PRIVEVO_*)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.orm import Session, sessionmaker

from pe_core.policy import DEFAULT_MAX_DELTA, PrivacyPolicy
from service.crypto import MASTER_KEY_HELP, DatabaseKeyRing, EncryptedStorage, parse_master_key
from service.storage import STORAGE_REGISTRY, LocalStorage, Storage, create_storage

DEFAULT_HOME = Path("privevo-data")
ENCRYPTED_FOLDER = "encrypted"
"""With the local backend and encryption at rest, the folder of ``PRIVEVO_STORAGE_ROOT`` that
holds the encrypted objects: apart from the work folder (the root itself), whose staged copies
of the same keys are plaintext while they are made."""

logger = logging.getLogger(__name__)


class Settings(BaseSettings):
    """Everything the service reads from its environment.

    The defaults are the embedded single-machine setup: SQLite, local storage and a broker on
    the local file system (kombu's ``filesystem://``), so ``privevo serve`` needs no other
    server. Production sets ``PRIVEVO_DATABASE_URL`` (PostgreSQL) and ``PRIVEVO_BROKER_URL``
    (Redis), whose visibility timeout gives redelivery when a worker dies.
    """

    model_config = SettingsConfigDict(
        env_prefix="PRIVEVO_", extra="ignore", env_parse_none_str="none"
    )

    home: Path = Field(DEFAULT_HOME, description="Folder for the embedded defaults below")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in home")
    broker_url: str = Field("filesystem://", description="Celery broker; redis://... in production")
    storage_root: Path | None = Field(
        None,
        description="Local storage folder; default in home. With a remote storage backend it "
        "still holds what must stay on a file system: jobs' working state (checkpoints, noisy "
        "releases, locks) and uploads while they are received and checked",
    )
    storage_backend: str = Field(
        "local",
        description="Where uploads, results and evaluations are kept: "
        f"{', '.join(STORAGE_REGISTRY.names())} (s3: any S3-compatible store, PRIVEVO_S3_*; "
        "credentials from boto3's chain, AWS_ACCESS_KEY_ID etc., never from these settings)",
    )
    s3_bucket: str | None = Field(None, description="The bucket (s3 backend); it must exist")
    s3_prefix: str = Field(
        "", description="Key prefix of every object in the bucket (s3), e.g. privevo/prod"
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="The S3 API's URL for stores other than AWS (s3): http://minio:9000, "
        "https://storage.googleapis.com",
    )
    s3_region: str | None = Field(None, description="The bucket's region (s3, AWS)")
    s3_batch_delete: bool = Field(
        True,
        description="Delete up to 1000 objects per request (s3); false for Google Cloud "
        "Storage, whose XML API has no multi-object delete",
    )
    max_upload_bytes: int = Field(2 * 1024**3, gt=0)
    max_body_bytes: int = Field(
        1024**2,
        gt=0,
        description="The largest request body other than an upload (a job's JSON, a console "
        "form): refused with 413 by its Content-Length, or as soon as it passes this",
    )
    max_header_bytes: int = Field(
        16 * 1024,
        ge=1024,
        description="The largest request line plus headers `privevo serve` reads (uvicorn's h11 "
        "limit); a longer request head is refused with 4xx before it reaches the app",
    )
    max_queued_jobs: int | None = Field(
        100,
        ge=0,
        description="A tenant's most queued jobs: another create is refused (429, Retry-After) "
        "until some start; a tenant's own quota, where the operator set one, takes its place; "
        "'none' for no limit",
    )
    max_stored_bytes: int | None = Field(
        20 * 1024**3,
        ge=0,
        description="A tenant's most bytes of undeleted uploads: an upload past it is refused "
        "(429, Retry-After); a tenant's own quota, where set, takes its place; 'none' for none",
    )
    quota_retry_after_s: int = Field(
        60, gt=0, description="The Retry-After of a 429 from a quota, in seconds"
    )
    metrics_token: SecretStr | None = Field(
        None,
        min_length=32,
        description="The operator's token for GET /metrics (Authorization: Bearer <token>); "
        "without one /metrics is off (404). Metrics count every tenant's requests and jobs, "
        "so no tenant's API key reads them",
    )
    task_time_limit_s: int = Field(
        24 * 3600,
        ge=2,
        description="Time limit of one job run (each delivery): the job loop fails a job past "
        "it, and Celery's prefork pool kills one that overruns it",
    )
    visibility_timeout_s: int | None = Field(
        None,
        gt=0,
        description="Redis redelivers a dead worker's job after this; default: the task time "
        "limit + 10%. Shorter is safe (a job's lease keeps a second delivery from running "
        "it twice) and recovers sooner",
    )
    sweep_interval_s: int = Field(
        60, gt=0, description="How often each worker looks for running jobs whose worker died"
    )
    stale_after_s: int = Field(
        600,
        ge=2,
        description="A running job whose heartbeat is older than this, or a message a worker "
        "took this long ago for a job that never ran, is taken for lost and sent again when the "
        "broker no longer holds it elsewhere (its lease keeps it from running twice); "
        "workers beat every stale_after_s / 4 s, at most 30 s",
    )
    vote_shard_records: int = Field(
        250_000,
        ge=0,
        description="The size rule of the fan-out: a job whose dataset has more private "
        "records than this counts its votes in ceil(records / this) shards, one Celery task "
        "each, on as many workers of the job's queue as are free; a smaller one counts them in "
        "its own worker. 0 never fans out. Audits never fan out",
    )
    generation_chunk_samples: int = Field(
        2_000,
        ge=0,
        description="The size rule of the generation's fan-out: a job with a population larger "
        "than this makes each generation call in chunks of at most this many samples, one "
        "Celery task each, on as many workers of the job's queue as are free (its own worker "
        "makes chunks too). The samples depend on this size, never on the number of workers; "
        "the job's report records it. 0 never fans out. Audits and llm jobs never fan out",
    )
    vote_claim_after_s: float = Field(
        10.0,
        ge=0,
        description="A shard of a fanned-out vote that no worker has taken this long after its "
        "message was sent is counted by the job's own worker (so a job never waits on a queue "
        "with no free worker for longer than this)",
    )
    allow_insecure_test_noise: bool = Field(
        False,
        description="Accept and run jobs with seeded NOT PRIVATE noise (tests only); without "
        "it the gateway refuses them and workers will not run them",
    )
    max_delta: float = Field(
        DEFAULT_MAX_DELTA,
        gt=0,
        lt=1,
        description="The largest delta one job may use; a job asking more is refused (422)",
    )
    require_declared_labels: bool = Field(
        False,
        description="Refuse (422) jobs that do not declare their label set, so that no job's "
        "labels are read from the private data",
    )
    max_epsilon_cap: float = Field(
        10.0,
        gt=0,
        description="The largest epsilon cap an upload may give its budget (422 above); a "
        "tenant's own limit, where the operator set one, takes its place",
    )
    max_delta_cap: float = Field(
        DEFAULT_MAX_DELTA,
        gt=0,
        lt=1,
        description="The largest delta cap an upload may give its budget (422 above); a "
        "tenant's own limit, where the operator set one, takes its place",
    )
    master_key: SecretStr | None = Field(
        None,
        description="The operator's master key for encryption at rest: 32 random bytes in "
        f"base64; {MASTER_KEY_HELP}. It wraps each dataset's data key; losing it loses every "
        "encrypted object",
    )
    encrypt_at_rest: bool | None = Field(
        None,
        description="Encrypt every stored object (uploads, results, evaluations) with "
        "per-dataset keys; default: on when PRIVEVO_MASTER_KEY is set, off without (the "
        "embedded setup needs no key); true without a key is refused",
    )
    openai_api_key: str | None = Field(
        None,
        repr=False,
        description="Key the llm API's openai backend sends; never part of a job (workers)",
    )
    openai_base_url: str | None = Field(
        None, description="The one OpenAI-compatible server the key may be sent to (workers)"
    )

    @field_validator("storage_backend")
    @classmethod
    def _known_backend(cls, name: str) -> str:
        STORAGE_REGISTRY.factory(name)  # an unknown name: the error lists the valid ones
        return name

    @model_validator(mode="after")
    def _bucket_for_s3(self) -> Self:
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("PRIVEVO_STORAGE_BACKEND=s3 needs PRIVEVO_S3_BUCKET")
        return self

    @model_validator(mode="after")
    def _key_for_encryption(self) -> Self:
        if self.master_key is not None:
            parse_master_key(self.master_key.get_secret_value())  # refuses a weak key here
        elif self.encrypt_at_rest:
            raise ValueError(
                f"PRIVEVO_ENCRYPT_AT_REST=true needs PRIVEVO_MASTER_KEY; {MASTER_KEY_HELP}"
            )
        return self

    @property
    def encrypts_at_rest(self) -> bool:
        """Whether stored objects are encrypted: as set, else whenever a master key is."""
        if self.encrypt_at_rest is None:
            return self.master_key is not None
        return self.encrypt_at_rest

    @property
    def stages_work(self) -> bool:
        """Whether the work folder (``PRIVEVO_STORAGE_ROOT``) is apart from the storage, as
        :func:`open_storage` makes it: with a remote backend, or encryption at rest."""
        return self.storage_backend != "local" or self.encrypts_at_rest

    @property
    def master_key_bytes(self) -> bytes:
        """The master key's 32 bytes (checked when the settings were read)."""
        if self.master_key is None:
            raise ValueError(f"no PRIVEVO_MASTER_KEY set; {MASTER_KEY_HELP}")
        return parse_master_key(self.master_key.get_secret_value())

    @property
    def storage_config(self) -> dict[str, Any]:
        """``create_storage``'s arguments for ``storage_backend``."""
        if self.storage_backend == "s3":
            return {
                "bucket": self.s3_bucket,
                "prefix": self.s3_prefix,
                "endpoint_url": self.s3_endpoint_url,
                "region": self.s3_region,
                "batch_delete": self.s3_batch_delete,
            }
        return {"root": self.resolved_storage_root}

    @property
    def policy(self) -> PrivacyPolicy:
        """The privacy policy the gateway checks jobs against and workers run them under."""
        return PrivacyPolicy(
            max_delta=self.max_delta,
            require_declared_labels=self.require_declared_labels,
            allow_insecure_test_noise=self.allow_insecure_test_noise,
        )

    @property
    def uvicorn_options(self) -> dict[str, Any]:
        """How ``privevo serve`` runs uvicorn: h11, with the request head capped."""
        return {"http": "h11", "h11_max_incomplete_event_size": self.max_header_bytes}

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'privevo.sqlite3').resolve()}"

    @property
    def resolved_storage_root(self) -> Path:
        return (self.storage_root or self.home / "storage").resolve()

    @property
    def heartbeat_interval_s(self) -> float:
        """Seconds between a running job's heartbeats: several per ``stale_after_s``."""
        return min(30.0, self.stale_after_s / 4)

    @property
    def broker_folder(self) -> Path:
        """Message folder of the embedded filesystem broker."""
        return (self.home / "broker").resolve()


@dataclass(frozen=True)
class Stores:
    """The service's storage, and the local folder beside it for what needs a file system.

    Attributes:
        storage: where uploads, results and evaluations are kept (the chosen backend).
        work: the local folder (``PRIVEVO_STORAGE_ROOT``) of jobs' working state and of uploads
            while they are received: ``storage`` itself when that is local.
    """

    storage: Storage
    work: LocalStorage
    keys: DatabaseKeyRing | None = None

    @property
    def staged(self) -> bool:
        """Whether objects made in ``work`` (uploads, jobs' files) are kept in a separate
        ``storage`` (:attr:`Settings.stages_work`); when False they are in it already."""
        return self.storage is not self.work

    @property
    def backend(self) -> Storage:
        """The backend itself, beneath any encryption: for probes that store no data."""
        return self.storage.backend if isinstance(self.storage, EncryptedStorage) else self.storage


def open_storage(settings: Settings, sessions: sessionmaker[Session] | None = None) -> Stores:
    """The storage the settings choose, for the gateway and the workers alike (the one place
    that builds it). A remote store is checked here, so a wrong setting stops the process at
    start with a message saying what to set.

    With encryption at rest the storage encrypts every object under data keys kept in the
    database of ``sessions`` (required then), and is always apart from the work folder, so an
    upload is received in the clear only in the work folder, then copied encrypted (for the
    local backend the objects go to ``<storage root>/encrypted``).
    """
    if not settings.encrypts_at_rest:
        if settings.storage_backend != "local" or (settings.database_url or "").startswith(
            "postgres"
        ):
            # A production shape without encryption: allowed (the store may encrypt), but said.
            logger.warning(
                "encryption at rest is off: uploads, results and evaluations are stored in the "
                "clear; set PRIVEVO_MASTER_KEY to encrypt them (docs/storage.md)"
            )
        storage = create_storage(settings.storage_backend, **settings.storage_config)
        if isinstance(storage, LocalStorage):
            return Stores(storage, storage)
        return Stores(storage, LocalStorage(settings.resolved_storage_root))
    if sessions is None:
        raise ValueError("encryption at rest keeps its data keys in the database: pass sessions")
    config = settings.storage_config
    if settings.storage_backend == "local":
        config = {**config, "root": settings.resolved_storage_root / ENCRYPTED_FOLDER}
    keys = DatabaseKeyRing(sessions, settings.master_key_bytes)
    storage = EncryptedStorage(create_storage(settings.storage_backend, **config), keys)
    return Stores(storage, LocalStorage(settings.resolved_storage_root), keys)
