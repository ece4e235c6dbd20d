"""The service's tables, as typed SQLAlchemy 2 ORM models.

Tenancy is enforced twice: every query in :mod:`service.db.repository` and
:mod:`service.db.budget` filters on the tenant, and composite foreign keys make a job's dataset
and a dataset's budget belong to the job's (dataset's) own tenant, so a bug in a query cannot
link rows across tenants.

A privacy budget belongs to records, not to dataset rows: every upload's records are hashed
(:class:`RecordDigest`, keyed per tenant by :class:`TenantSecret`), and a dataset that shares any
record with datasets of its tenant draws on their :class:`Budget` (see
:mod:`service.db.budget`), so no re-upload, re-encoding, split or overlap resets what was spent.
Datasets are soft-deleted (``deleted_at``); jobs, record digests and budgets are never deleted
with them, so the spending history of a budget, and which records it covers, are kept for good.

A dataset is private (the input of jobs, drawing on a budget) or held-out (role "heldout"): real
data that only scores jobs' synthetic data against, NOT DP, for the owner's eyes. A held-out
dataset has no budget (``budget_id`` is NULL, a check holds it), is never a job's private input,
and never joins or merges budgets; its record digests are kept to refuse an evaluation that
overlaps a job's private data.

Every dataset and budget has a unit of privacy, fixed at upload: "record" (one record) or
"user" (all records naming one user, from the dataset's user column). A composite foreign key
makes a dataset's budget one of its own unit, so record-level and user-level charges can never
be summed against one cap (see :mod:`service.db.budget`).

Amounts of privacy are doubles: epsilon (dimensionless, natural-log units) and delta
(a probability).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from functools import partial
from typing import Any, ClassVar, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JOB_STATUSES: Final = ("queued", "running", "succeeded", "failed", "canceled")
FINAL_STATUSES: Final = frozenset({"succeeded", "failed", "canceled"})

# Explicit constraint names: migrations can then drop or alter them by name on every database,
# and SQLite reflects them, which the migration-versus-metadata test relies on.
NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}

SHA256_LENGTH: Final = 64
DIGEST_LENGTH: Final = 32
DIGEST_KEY_LENGTH: Final = 32
ID_LENGTH: Final = 40
PATH_LENGTH: Final = 1024
COLUMN_LENGTH: Final = 255
WRAPPED_KEY_LENGTH: Final = 64
"""A wrapped data key's bytes: version (1), nonce (12), key (32), tag (16) = 61."""
"""The longest name a dataset's text, label or user column may have, in characters."""
PRIVACY_UNITS: Final = ("record", "user")
"""What a budget's (epsilon, delta) protect: one record, or one user's records."""
DATASET_ROLES: Final = ("private", "heldout")
"""What a dataset is for: the private input of jobs, or held-out data that only evaluates them."""


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A random public id such as ``job_3f9c...`` (128 bits; unguessable, unordered)."""
    return f"{prefix}_{secrets.token_hex(16)}"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so the value is stored as naive
    UTC and made aware again when read. Naive datetimes are refused on the way in, since their
    zone would be a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{value}'" for value in values) + ")"


# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
AutoIncrementId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[str]: JSON(),
        list[int]: JSON(),
    }


class Tenant(Base):
    """An organisation using the service; owns keys, datasets, budgets and jobs."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(
        String(ID_LENGTH), primary_key=True, default=partial(new_id, "ten")
    )
    name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    max_epsilon_cap: Mapped[float | None] = mapped_column(Double())
    max_delta_cap: Mapped[float | None] = mapped_column(Double())
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer)
    max_stored_bytes: Mapped[int | None] = mapped_column(BigInteger)


class TenantSecret(Base):
    """The key a tenant's record digests are made with (:mod:`service.digests`).

    In a table of its own so that loading a tenant (every request does) never loads its key;
    never returned, logged or shown to anyone, the tenant included.
    """

    __tablename__ = "tenant_secrets"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    digest_key: Mapped[bytes] = mapped_column(LargeBinary(DIGEST_KEY_LENGTH))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API key of a tenant. Only its sha256 is stored; ``prefix`` is shown to humans.

    Keys are 256-bit random secrets, so a plain sha256 (not a slow password hash) suffices:
    nothing about the key can be guessed from its hash. A key is refused from ``revoked_at``
    or ``expires_at`` on, whichever comes first (None: never).
    """

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(
        String(ID_LENGTH), primary_key=True, default=partial(new_id, "key")
    )
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    key_sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]


class Budget(Base):
    """The privacy budget of a group of a tenant's datasets of one unit that share records.

    Every dataset draws on exactly one budget, of its own unit; an upload sharing a record with
    datasets of its unit in other budgets merges them into one whose caps are the smallest of
    theirs (see :mod:`service.db.budget`). Spending is not stored here: it is the sum over the
    jobs of the budget's datasets (see :func:`service.db.budget.remaining`), so it cannot drift
    from the jobs.

    Attributes:
        epsilon_cap, delta_cap: the most all jobs on the budget's datasets may spend together.
        privacy_unit: "record" or "user": what the caps protect; every dataset of the budget
            has this unit.
    """

    __tablename__ = "budgets"
    __table_args__ = (
        # Target of the datasets' composite foreign key (a dataset's budget is its tenant's,
        # and of its unit).
        UniqueConstraint("tenant_id", "id", "privacy_unit"),
        CheckConstraint("epsilon_cap > 0", name="epsilon_cap"),
        CheckConstraint("delta_cap > 0 AND delta_cap < 1", name="delta_cap"),
        CheckConstraint(_one_of("privacy_unit", PRIVACY_UNITS), name="privacy_unit"),
    )

    id: Mapped[str] = mapped_column(
        String(ID_LENGTH), primary_key=True, default=partial(new_id, "bud")
    )
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    epsilon_cap: Mapped[float] = mapped_column(Double())
    delta_cap: Mapped[float] = mapped_column(Double())
    privacy_unit: Mapped[str] = mapped_column(String(8), default="record", server_default="record")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    """An uploaded dataset, private or held-out; soft-deleted so its budget history stays.

    Attributes:
        sha256: of the uploaded file's bytes, as the client can check it; an upload of the same
            bytes joins this dataset's budget even when neither has record digests (datasets
            uploaded before record digests existed have none).
        budget_id: the budget the dataset's jobs draw on; None for held-out data, which no
            job draws on.
        role: "private" (the input of jobs) or "heldout" (evaluation data only, NOT DP; never
            a job's input, no budget, record-level); fixed at upload.
        duplicate_records: records of the upload that repeat an earlier one of the same upload.
        privacy_unit: "user" when the upload named a user column, else "record"; fixed at
            upload, and its jobs run at this unit.
        user_column: the field (tables) or array (npz) naming each record's user; None for a
            record-level dataset.
        size_bytes: of the stored upload, counted against the tenant's storage quota while
            the dataset is not deleted (0 for uploads stored before it was recorded).
        purged_at: when a delete or expiry finished deleting the dataset's files; None on a
            deleted dataset means a store failure cut the purge short, and the expiry sweep
            finishes it.
    """

    __tablename__ = "datasets"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "budget_id", "privacy_unit"],
            ["budgets.tenant_id", "budgets.id", "budgets.privacy_unit"],
        ),
        # Target of the jobs' and digests' composite foreign keys (their dataset is their
        # tenant's).
        UniqueConstraint("tenant_id", "id"),
        Index(None, "tenant_id", "sha256"),
        Index(None, "budget_id"),
        # The expiry sweep's lookup of datasets past their expiry.
        Index(None, "expires_at"),
        CheckConstraint("record_count >= 0", name="record_count"),
        CheckConstraint("duplicate_records >= 0", name="duplicate_records"),
        CheckConstraint(
            "(privacy_unit = 'user' AND user_column IS NOT NULL) OR "
            "(privacy_unit = 'record' AND user_column IS NULL)",
            name="privacy_unit",
        ),
        CheckConstraint(_one_of("role", DATASET_ROLES), name="role"),
        # Private data draws on a budget; held-out data has none and names no users.
        CheckConstraint(
            "(role = 'private' AND budget_id IS NOT NULL) OR "
            "(role = 'heldout' AND budget_id IS NULL AND user_column IS NULL)",
            name="budget",
        ),
    )

    id: Mapped[str] = mapped_column(
        String(ID_LENGTH), primary_key=True, default=partial(new_id, "ds")
    )
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(255))
    modality: Mapped[str] = mapped_column(String(16))
    record_count: Mapped[int] = mapped_column(Integer)
    labels: Mapped[list[str]]
    image_shape: Mapped[list[int] | None]
    sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH))
    budget_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    storage_path: Mapped[str] = mapped_column(String(PATH_LENGTH))
    text_column: Mapped[str] = mapped_column(String(COLUMN_LENGTH), server_default="text")
    label_column: Mapped[str] = mapped_column(String(COLUMN_LENGTH), server_default="label")
    duplicate_records: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    privacy_unit: Mapped[str] = mapped_column(String(8), default="record", server_default="record")
    user_column: Mapped[str | None] = mapped_column(String(COLUMN_LENGTH))
    role: Mapped[str] = mapped_column(String(8), default="private", server_default="private")
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    purged_at: Mapped[datetime | None]


class DataKey(Base):
    """The data key of one scope (a dataset, or a job's result), wrapped by the master key
    (:mod:`service.crypto`); every object of the scope is encrypted with it.

    Deleting the row crypto-shreds the scope: any copy of its objects left anywhere (a backup,
    an object a purge missed) can no longer be decrypted. So a dataset's row is deleted before
    its objects, and, unlike the dataset row, never kept after a purge.

    No foreign key: a dataset's key is made before its row (the upload is encrypted before the
    dataset is committed), and a result's scope is a job id.

    Attributes:
        scope: the dataset's or job's id.
        upload_prefix: the dataset's upload folder (``uploads/<token>``), by which the upload's
            objects find the key; None for a job's result.
        wrapped: the data key sealed by the master key, the scope as associated data.
    """

    __tablename__ = "data_keys"

    scope: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    upload_prefix: Mapped[str | None] = mapped_column(String(PATH_LENGTH), unique=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary(WRAPPED_KEY_LENGTH))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RecordDigest(Base):
    """One distinct record of a dataset, as its keyed digest (:mod:`service.digests`).

    Kept when the dataset is deleted: a later upload of the same records must still find the
    budget that paid for them. Never returned, logged or compared across tenants.
    """

    __tablename__ = "record_digests"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "dataset_id"], ["datasets.tenant_id", "datasets.id"]),
        # Finds the datasets of a tenant holding a record.
        Index(None, "tenant_id", "digest"),
    )

    dataset_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    digest: Mapped[bytes] = mapped_column(LargeBinary(DIGEST_LENGTH), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(ID_LENGTH))


class Job(Base):
    """A PE run on one dataset, with its privacy reservation and what it actually spent.

    While the job is not final it holds ``epsilon_reserved``/``delta_reserved`` of its budget.
    ``epsilon_spent`` is the sum of its release rows' epsilons (kept in step by
    :func:`service.db.budget.record_release`) and ``delta_spent`` is the reserved delta once it
    has released anything. When it becomes final, ``epsilon_charged``/``delta_charged`` are set
    (see :func:`service.db.budget.finalize`) and it holds only those from then on.

    ``queue`` is the broker queue its task goes to (``cpu`` or ``gpu``), decided at reservation
    from the job's API (:func:`service.broker.queue_for`).

    ``eval_dataset_id`` names the tenant's held-out dataset the worker scores the job's
    synthetic data against (NOT DP, owner only), or None; a composite foreign key holds it to
    the job's own tenant.

    ``heartbeat_at`` is when the worker running the job last showed it was alive (at every
    progress update and release, and periodically in between); a running job whose heartbeat
    is old may have lost its worker, and is re-enqueued if its message is gone too
    (:mod:`workers.sweeper`).

    ``lease_holder`` names the worker process whose delivery runs the job
    (:func:`workers.lease.process_name`); another delivery takes the job only once that holder
    has released it, stopped beating, or is known to be gone (:func:`service.db.take_lease`).
    """

    __tablename__ = "jobs"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "dataset_id"], ["datasets.tenant_id", "datasets.id"]),
        ForeignKeyConstraint(
            ["tenant_id", "eval_dataset_id"], ["datasets.tenant_id", "datasets.id"]
        ),
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index(None, "tenant_id", "created_at"),
        Index(None, "dataset_id"),
        Index(None, "eval_dataset_id"),
        Index(None, "status", "heartbeat_at"),
        CheckConstraint(_one_of("status", JOB_STATUSES), name="status"),
        CheckConstraint("iteration >= 0 AND iteration <= iterations", name="iteration"),
        CheckConstraint("epsilon_reserved > 0", name="epsilon_reserved"),
        CheckConstraint("delta_reserved > 0 AND delta_reserved < 1", name="delta_reserved"),
        CheckConstraint("epsilon_spent >= 0 AND delta_spent >= 0", name="spent"),
    )

    id: Mapped[str] = mapped_column(
        String(ID_LENGTH), primary_key=True, default=partial(new_id, "job")
    )
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    dataset_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    eval_dataset_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    spec: Mapped[dict[str, Any]]
    queue: Mapped[str] = mapped_column(String(16), default="cpu", server_default="cpu")
    status: Mapped[str] = mapped_column(String(16), default="queued")
    iteration: Mapped[int] = mapped_column(Integer, default=0)
    iterations: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str | None] = mapped_column(String(32))
    epsilon_reserved: Mapped[float] = mapped_column(Double())
    delta_reserved: Mapped[float] = mapped_column(Double())
    epsilon_spent: Mapped[float] = mapped_column(Double(), default=0.0)
    delta_spent: Mapped[float] = mapped_column(Double(), default=0.0)
    epsilon_charged: Mapped[float | None] = mapped_column(Double())
    delta_charged: Mapped[float | None] = mapped_column(Double())
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime | None]
    lease_holder: Mapped[str | None] = mapped_column(String(200))


class Shard(Base):
    """One shard of a piece of a job's work fanned out over workers (:mod:`workers.fanout`):
    in an iteration, step 0 is the vote (a shard of the private records) and steps 1, 2, ...
    are the generation calls in the order the engine makes them (a chunk of the samples). The
    row says what the shard works on, who claimed it and when it was done; never a count or a
    sample: a vote shard's partial histogram is private and lives only in encrypted storage
    until the iteration's release is recorded, and a chunk's samples live in storage too.

    The row is the shard's completion record, which a Redis restart cannot lose (a Celery chord
    could). It is kept after the iteration as a record of which worker made what.

    Attributes:
        step: 0 for the vote, else the generation call's number in its iteration.
        shards: how many shards the step was split into.
        synthetic_sha256: digest of the synthetic data the shard works on (the embeddings a
            vote counts against; a generation call's inputs and parameters); a redelivered
            coordinator with other data opens fresh rows.
        opened_at: when the coordinator opened the shard.
        claimed_by: the worker process working on it (:func:`workers.lease.process_name`),
            while it is claimed.
        claimed_at: when that worker last showed it is alive; an old claim is taken over.
        done_at: when its output was stored.
        partial: the token naming the stored output of the worker that finished it (a
            worker that finds the shard done by another deletes its own).
        backend: the nearest-neighbour backend a vote shard counted with.
    """

    __tablename__ = "shards"
    __table_args__ = (
        CheckConstraint("iteration >= 0", name="iteration"),
        CheckConstraint("step >= 0", name="step"),
        CheckConstraint("shard >= 0 AND shard < shards", name="shard"),
    )

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    iteration: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    shards: Mapped[int] = mapped_column(Integer)
    synthetic_sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH))
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(COLUMN_LENGTH))
    claimed_at: Mapped[datetime | None]
    done_at: Mapped[datetime | None]
    partial: Mapped[str | None] = mapped_column(String(32))
    backend: Mapped[str | None] = mapped_column(String(64))


MESSAGE_STATES: Final = ("pending", "sent", "void")
"""Where a job's current broker message stands: waiting in the outbox to be sent, accepted by
the broker, or no longer needed (the job ended before it was sent)."""


class JobMessage(Base):
    """The outbox: the current broker message of a job (one row per job).

    Written in the transaction that makes it needed: the job's reservation, or a sweep that
    proved the job's earlier message lost (:mod:`service.db.outbox`). A deliverer sends
    ``pending`` rows until the broker accepts them (``sent``), so a committed job is always
    enqueued, whatever happens to the process that committed it; and since only the holder of
    a row's lease sends it, a job has one message at a time.

    Attributes:
        queue: the broker queue (the job's).
        generation: 1 for the job's first message, +1 for each replacement; the message's
            Celery task id is ``<job id>.<generation>`` (:attr:`task_id`).
        state: one of :data:`MESSAGE_STATES`.
        created_at: when this generation was made.
        sent_at: when the broker accepted it.
        claimed_until: a deliverer holds the row until then (None: no one).
        attempts: sends of this generation begun so far (one may have reached the broker
            even if it was not marked sent, so a later one looks first).
        missing_since: when a sweep first found the sent message in neither the queue nor a
            worker's hands; cleared when it is found again.
    """

    __tablename__ = "job_messages"
    __table_args__ = (
        CheckConstraint(_one_of("state", MESSAGE_STATES), name="state"),
        CheckConstraint("generation >= 1 AND attempts >= 0", name="counts"),
        Index(None, "state", "sent_at"),
    )

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    queue: Mapped[str] = mapped_column(String(16))
    generation: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(8), default="pending")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    claimed_until: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    missing_since: Mapped[datetime | None]

    @property
    def task_id(self) -> str:
        return task_id_of(self.job_id, self.generation)


def task_id_of(job_id: str, generation: int) -> str:
    """The Celery task id of a job's message of one generation (unique, and names its job)."""
    return f"{job_id}.{generation}"


class Release(Base):
    """One noisy release of a job: the database half of the engine's release ledger.

    ``(job_id, iteration, mechanism)`` is unique: a release is recorded exactly once, and a
    retried or redelivered task gets the recorded row back instead of adding a second one.

    Attributes:
        mechanism: which release of the iteration ("votes", "label_counts"); not the noise
            distribution, which the engine's ledger records.
        epsilon: what this release added to the job's composed epsilon, at the job's reserved
            delta, as computed by the engine's accountant (see
            :func:`service.db.budget.record_release`).
        sha256: sha256 of the noisy vector (``pe_core.privacy.ledger.release_digest``).
        storage_path: where the noisy vector is stored, if it is.
        event: the release's ``pe_core.privacy.DpEvent`` as a JSON object (mechanism, sigma,
            sensitivity, count, description), from which the job's ledger and epsilon are
            rebuilt; None only for rows recorded without one.
    """

    __tablename__ = "releases"
    __table_args__ = (
        UniqueConstraint("job_id", "iteration", "mechanism"),
        CheckConstraint("iteration >= 0", name="iteration"),
        CheckConstraint("epsilon >= 0", name="epsilon"),
    )

    id: Mapped[int] = mapped_column(AutoIncrementId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    iteration: Mapped[int] = mapped_column(Integer)
    mechanism: Mapped[str] = mapped_column(String(64))
    epsilon: Mapped[float] = mapped_column(Double())
    sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH))
    storage_path: Mapped[str | None] = mapped_column(String(PATH_LENGTH))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    event: Mapped[dict[str, Any] | None]


class JobEvent(Base):
    """An append-only event of a job.

    ``seq`` numbers the job's own events 1, 2, 3...: it is the event's public id and the
    paging cursor. The table-wide ``id`` is never shown, since it would tell any tenant how
    many events every other tenant's jobs have made since.
    """

    __tablename__ = "job_events"
    __table_args__ = (
        UniqueConstraint("job_id", "seq"),
        CheckConstraint("seq >= 1", name="seq"),
    )

    id: Mapped[int] = mapped_column(AutoIncrementId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
