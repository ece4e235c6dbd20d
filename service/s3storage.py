"""Objects in an S3-compatible bucket: AWS S3, MinIO, or Google Cloud Storage's XML API.

The backend keeps :class:`service.storage.Storage`'s meaning on a store that has neither
folders nor renames:

* A write goes to a private temporary file (in memory while small) and is uploaded only when
  its ``with`` block succeeds, in one ``PutObject`` or, for a large object, a multipart upload
  that the store shows only once it is completed (and that is aborted on failure). So an
  exception uploads nothing and an existing object stays as it was.
* S3 matches raw string prefixes, so a prefix ``p`` is looked up as the object ``p`` itself plus
  the objects under ``p/``: ``datasets/7f3a`` never reaches ``datasets/7f3ab``.
* Listings and deletes are paginated (1000 keys per request, the store's own limit).
  Google Cloud Storage's XML API has no multi-object delete: ``batch_delete=False`` deletes
  one object per request there.

Credentials come from boto3's standard chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE`` and the shared files, a container or instance role), never from privevo's own
settings, so no secret sits in a settings file in the clear.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Final, cast

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

from pe_core.errors import PrivevoError
from service.storage import (
    InvalidKeyError,
    ObjectNotFoundError,
    StorageUnavailableError,
    check_key,
)

DELETE_BATCH: Final = 1000
"""Keys per ``DeleteObjects`` request: the most S3 takes in one."""

SPOOL_BYTES: Final = 8 * 1024 * 1024
"""A write is held in memory up to this size, then in an unlinked 0600 temporary file; also the
size from which it is uploaded in parts (S3's minimum part is 5 MiB)."""

_MISSING: Final = frozenset({"404", "NoSuchKey", "NotFound"})
_NO_BUCKET: Final = frozenset({"NoSuchBucket"})
_NO_BATCH_DELETE: Final = frozenset({"NotImplemented", "InvalidArgument"})
_DENIED: Final = frozenset({"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"})


class S3Storage:
    """Objects in one bucket of an S3-compatible store, under an optional key prefix.

    The bucket is checked when the storage is made, so a gateway or worker with a wrong
    setting stops at start with a message saying what to set, not at its first upload.

    Args:
        bucket: the bucket; it must exist (privevo never creates buckets, whose policies and
            encryption are the operator's to choose).
        prefix: a key prefix under which every object lives (e.g. ``privevo/prod``), so that
            several installations can share a bucket; "" for the bucket's root.
        endpoint_url: the store's URL for anything but AWS (``http://minio:9000``,
            ``https://storage.googleapis.com``); None for AWS S3.
        region: the bucket's region (AWS), or None for boto3's configured default.
        batch_delete: delete up to 1000 objects per request (``DeleteObjects``); False for
            stores without it (Google Cloud Storage), which then get one request per object.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        batch_delete: bool = True,
    ) -> None:
        if not bucket:
            raise PrivevoError("the s3 storage backend needs a bucket: set PRIVEVO_S3_BUCKET")
        self.bucket = bucket
        self.prefix = check_key(prefix.strip("/")) if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.batch_delete = batch_delete
        # boto3 sends AWS's newer checksum headers by default, which some MinIO versions and
        # GCS refuse; other stores get a checksum only where the operation requires one.
        checksums = "when_supported" if endpoint_url is None else "when_required"
        config = Config(
            # Other stores than AWS are addressed by path: virtual-host names need DNS (MinIO,
            # a test server) that such installations seldom have.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            request_checksum_calculation=checksums,
            response_checksum_validation=checksums,
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        )
        try:
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=config
            )
        except ValueError:  # botocore's message for a malformed endpoint
            raise StorageUnavailableError(
                f"PRIVEVO_S3_ENDPOINT_URL {endpoint_url!r} is not a URL; give the scheme, host "
                f"and port, e.g. http://minio:9000"
            ) from None
        self._transfer = TransferConfig(
            multipart_threshold=SPOOL_BYTES, multipart_chunksize=SPOOL_BYTES
        )
        self._check_bucket()

    def __repr__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3Storage(s3://{self.bucket}/{self.prefix}{where})"

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        name = self._name(key)
        # Deleted on close whatever happens: on an exception in the block nothing is uploaded,
        # and upload_fileobj aborts a multipart upload that fails part-way.
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as buffer:
            yield cast(BinaryIO, buffer)
            buffer.seek(0)
            with self._errors():
                self._client.upload_fileobj(buffer, self.bucket, name, Config=self._transfer)

    def open_read(self, key: str) -> BinaryIO:
        name = self._name(key)
        try:
            with self._errors():
                response = self._client.get_object(Bucket=self.bucket, Key=name)
        except ObjectNotFoundError:
            raise ObjectNotFoundError(f"no object under storage key {key!r}") from None
        return cast(BinaryIO, response["Body"])

    def exists(self, key: str) -> bool:
        try:
            with self._errors():
                self._client.head_object(Bucket=self.bucket, Key=self._name(key))
        except ObjectNotFoundError:
            return False
        return True

    def delete_prefix(self, prefix: str) -> int:
        # Checked here, not only by list(): "" lists every object, and must never delete them.
        keys = self.list(check_key(prefix))
        if not self.batch_delete:
            for key in keys:
                with self._errors():
                    self._client.delete_object(Bucket=self.bucket, Key=self._name(key))
            return len(keys)
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": self._name(key)} for key in keys[start : start + DELETE_BATCH]]
            with self._errors():
                try:
                    answer = self._client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                    )
                except ClientError as exc:
                    if _code(exc) in _NO_BATCH_DELETE:
                        raise StorageUnavailableError(
                            f"{self.endpoint_url} does not take multi-object deletes "
                            f"(DeleteObjects; Google Cloud Storage's XML API has none): set "
                            f"PRIVEVO_S3_BATCH_DELETE=false"
                        ) from None
                    raise
            failed = answer.get("Errors", [])
            if failed:
                # Codes only: the keys name a tenant's datasets and jobs.
                codes = sorted({error.get("Code", "?") for error in failed})
                raise StorageUnavailableError(
                    f"the object store refused to delete {len(failed)} object(s) in bucket "
                    f"{self.bucket!r} ({', '.join(codes)}); check the credentials' permissions"
                )
        return len(keys)

    def path(self, key: str) -> Path | None:
        if not self.exists(key):
            raise ObjectNotFoundError(f"no object under storage key {key!r}")
        return None

    def list(self, prefix: str = "") -> Sequence[str]:
        if not prefix:
            return sorted(self._keys_under(self.prefix))
        found = list(self._keys_under(self._name(prefix)))
        if self.exists(prefix):
            found.append(prefix)
        return sorted(found)

    def _name(self, key: str) -> str:
        """The object name of ``key`` in the bucket (below the configured prefix)."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _keys_under(self, folder: str) -> Iterator[str]:
        """Every key below the object name ``folder`` ("" for the whole bucket), whole segments
        only: ``folder + '/'`` is the raw prefix asked for."""
        raw = f"{folder}/" if folder else ""
        root = f"{self.prefix}/" if self.prefix else ""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=raw, PaginationConfig={"PageSize": DELETE_BATCH}
        )
        with self._errors():
            for page in pages:
                for entry in page.get("Contents", []):
                    key = entry["Key"][len(root) :]
                    # Objects that are not ours (a console's "folder/" marker, a name no key
                    # can have) are left alone: they could never be read or deleted by key.
                    if _is_key(key):
                        yield key

    def _check_bucket(self) -> None:
        try:
            with self._errors():
                self._client.head_bucket(Bucket=self.bucket)
        except ObjectNotFoundError:
            raise StorageUnavailableError(self._no_bucket()) from None

    def _no_bucket(self) -> str:
        where = self.endpoint_url or "AWS S3"
        return (
            f"the bucket {self.bucket!r} does not exist at {where}: create it, or set "
            f"PRIVEVO_S3_BUCKET (and PRIVEVO_S3_ENDPOINT_URL for a store other than AWS) to "
            f"one that does"
        )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turns boto's errors into the storage's: a missing object into ObjectNotFoundError,
        and a store that cannot be used (unreachable, no bucket, no credentials, refused) into
        StorageUnavailableError saying which setting to look at."""
        where = self.endpoint_url or "AWS S3"
        try:
            yield
        except ClientError as exc:
            code = _code(exc)
            if code in _NO_BUCKET:
                raise StorageUnavailableError(self._no_bucket()) from None
            if code in _MISSING:
                raise ObjectNotFoundError(f"no such object in bucket {self.bucket!r}") from None
            if code in _DENIED:
                raise StorageUnavailableError(
                    f"{where} refused access to bucket {self.bucket!r} ({code}): check the "
                    f"credentials boto3 finds (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                    f"AWS_PROFILE, or the instance role) and their permissions on the bucket"
                ) from None
            raise StorageUnavailableError(
                f"{where} answered {code or 'an error'} for bucket {self.bucket!r}"
            ) from None
        except NoCredentialsError:
            raise StorageUnavailableError(
                "no credentials for the s3 storage backend: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or give the machine a role)"
            ) from None
        except EndpointConnectionError:
            raise StorageUnavailableError(
                f"cannot reach the object store at {where}: check PRIVEVO_S3_ENDPOINT_URL "
                f"(and PRIVEVO_S3_REGION for AWS) and that the store is running"
            ) from None
        except BotoCoreError as exc:
            raise StorageUnavailableError(
                f"the object store at {where} failed ({type(exc).__name__}) for bucket "
                f"{self.bucket!r}"
            ) from None


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _is_key(name: str) -> bool:
    try:
        check_key(name)
    except InvalidKeyError:
        return False
    return True
