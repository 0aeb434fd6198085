"""S3: the client, botocore's errors said in the pipeline's terms, and the reads several scripts share.

Every S3 call of the pipeline goes through `client()` and, for errors, `errors()`: a ClientError,
a BotoCoreError (no connection, timeout) or a dropped connection while a body is read becomes an
`S3Error` naming the operation, the bucket and key, S3's code and what it means (`kind`).
Callers keep only their policy: a missing object is dead-lettered by the consumer, a missing
bucket is a user mistake for the producer, an outage is retried.
"""
from __future__ import annotations

import logging
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterable, Iterator

from imgpipe.errors import DENIED, NOT_FOUND, REJECTED, UNAVAILABLE, ServiceError
from imgpipe.settings import Settings

log = logging.getLogger(__name__)

MISSING_OBJECT_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
MISSING_BUCKET_CODES = frozenset({"NoSuchBucket"})
DENIED_CODES = frozenset({"AccessDenied", "403", "AllAccessDisabled", "InvalidAccessKeyId",
                          "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "AccountProblem",
                          # versitygw's answer to an access key it does not know (a 404)
                          "XAdminUserNotFound"})
# Worth repeating whatever the status says (S3 answers a slow upload with 400 RequestTimeout).
TRANSIENT_CODES = frozenset({"RequestTimeout", "SlowDown", "ServiceUnavailable", "Throttling",
                             "ThrottlingException", "InternalError", "RequestLimitExceeded"})
# Codes about the request itself, never worth repeating as it is.
REJECTED_CODES = frozenset({"InvalidArgument", "InvalidRequest", "KeyTooLongError", "InvalidBucketName",
                            "MethodNotAllowed", "InvalidObjectState", "EntityTooLarge"})


class S3Error(ServiceError):
    """A failed S3 request: `bucket`, `key` (may be empty), S3's `code` and the `kind` it means."""

    def __init__(self, operation: str, bucket: str, key: str, code: str, message: str, kind: str,
                 status: int | None = None):
        target = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
        super().__init__("s3", operation, target, code, message, kind, status)
        self.bucket = bucket
        self.key = key

    @property
    def missing_object(self) -> bool:
        return self.code in MISSING_OBJECT_CODES

    @property
    def missing_bucket(self) -> bool:
        return self.code in MISSING_BUCKET_CODES


def client(settings: Settings, max_attempts: int = 3, pool_size: int = 32):
    """A boto3 S3 client for the configured endpoint (empty S3_ENDPOINT_URL: real AWS)."""
    import boto3
    from botocore.config import Config

    config = Config(region_name=settings.aws_region, retries={"max_attempts": max_attempts, "mode": "standard"},
                    max_pool_connections=pool_size, connect_timeout=5, read_timeout=30,
                    # botocore >= 1.36 computes a CRC of every upload by default: 15% of the
                    # client's CPU per put here, for a check TLS and S3's own MD5 already cover.
                    request_checksum_calculation="when_required",
                    # Likewise on the way back: a CRC of every GET the server sends a checksum for.
                    response_checksum_validation="when_required",
                    # Local S3 servers want path-style addressing; real AWS is fine with it too.
                    s3={"addressing_style": "path"} if settings.s3_endpoint_url else None)
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url or None, config=config)


def _kind(code: str, status: int | None) -> str:
    if code in TRANSIENT_CODES:
        return UNAVAILABLE
    if code in MISSING_OBJECT_CODES or code in MISSING_BUCKET_CODES:
        return NOT_FOUND
    if code in DENIED_CODES:
        return DENIED
    if code in REJECTED_CODES or (status is not None and 400 <= status < 500 and status not in (403, 404, 408, 429)):
        return REJECTED
    return UNAVAILABLE  # throttling, 5xx, timeouts, anything unknown: retrying is the safe reading


def translate(exc: BaseException, operation: str, bucket: str, key: str = "") -> S3Error:
    """botocore's (or the connection's) exception as an S3Error with context."""
    from botocore.exceptions import ClientError

    if isinstance(exc, S3Error):
        return exc
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "") or "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return S3Error(operation, bucket, key, code, str(error.get("Message", "") or ""), _kind(code, status), status)
    if type(exc).__name__ in ("ParamValidationError", "InvalidBucketName"):  # refused before it was sent
        return S3Error(operation, bucket, key, type(exc).__name__, " ".join(str(exc).split())[:300], REJECTED)
    if type(exc).__name__ == "NoCredentialsError":
        return S3Error(operation, bucket, key, "NoCredentialsError", "no AWS credentials found", DENIED)
    # No connection, a timeout, a connection dropped while reading a body: an outage.
    return S3Error(operation, bucket, key, type(exc).__name__, str(exc), UNAVAILABLE)


def _library_errors() -> tuple[type[BaseException], ...]:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError
    from urllib3.exceptions import HTTPError as Urllib3Error

    return ClientError, BotoCoreError, Boto3Error, Urllib3Error, OSError


@contextmanager
def errors(operation: str, bucket: str, key: str = ""):
    """Raise what the block raises as an S3Error about `operation` on s3://bucket/key."""
    try:
        yield
    except _library_errors() as exc:
        raise translate(exc, operation, bucket, key) from None


class ObjectTooLarge(ValueError):
    def __init__(self, size: int, limit: int):
        super().__init__(f"object is {size} bytes, limit {limit}")
        self.size = size
        self.limit = limit


@dataclass(frozen=True)
class FetchedObject:
    data: bytes
    size: int
    etag: str
    last_modified: datetime | None


def fetch(s3, bucket: str, key: str, max_bytes: int | None = None) -> FetchedObject:
    """An object's bytes and metadata. Raises ObjectTooLarge before reading a body over `max_bytes`,
    and S3Error (a short read counts as an outage)."""
    with errors("fetching", bucket, key):
        response = s3.get_object(Bucket=bucket, Key=key)
        size = response["ContentLength"]
        if max_bytes is not None and size > max_bytes:
            response["Body"].close()
            raise ObjectTooLarge(size, max_bytes)
        data = response["Body"].read()
    if len(data) != size:
        raise S3Error("fetching", bucket, key, "IncompleteBody", f"got {len(data)} of {size} bytes", UNAVAILABLE)
    return FetchedObject(data, size, response.get("ETag", "").strip('"'), response.get("LastModified"))


def put(s3, bucket: str, key: str, data: bytes, content_type: str) -> None:
    with errors("storing", bucket, key):
        s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)


def put_many(s3, bucket: str, objects: Iterable[tuple[str, bytes, str]], workers: int = 16,
             on_item: Callable[[], None] | None = None) -> int:
    """Put (key, bytes, content type) objects from a thread pool (boto3 clients are thread-safe);
    returns how many were stored. The first failure cancels the rest and is raised."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    stored = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(put, s3, bucket, key, data, content_type) for key, data, content_type in objects]
        try:
            for future in as_completed(futures):
                future.result()
                stored += 1
                if on_item:
                    on_item()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return stored


# Keys the fast path takes: object_store (under obstore) normalises and percent-encodes other
# characters in a path, so any other key would be read or written under a different name. The
# pipeline's derived keys are within this set; any other source key goes through boto3.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-/ ]{0,1023}")


def plain_key(key: str) -> bool:
    """Does `key` mean the same object to object_store as to S3?"""
    if not _PLAIN_KEY.fullmatch(key) or key.endswith("/") or "//" in key:
        return False
    return all(part not in (".", "..") and part == part.strip() for part in key.split("/"))


class FastObjects:
    """The consumer's hot path, a GET and two PUTs per image, through obstore (Rust's
    object_store): 0.61 ms of client CPU per image's three requests against 2.95 ms for boto3
    (measured against the local versitygw). It only ever answers with success: any failure, an
    awkward key, or a body of the wrong length goes through `fetch`/`put` with boto3, which says
    what S3 answered with its own code (`S3Error`), so the dead-letter and retry policy keeps one
    source of truth. No retries inside obstore: the boto3 attempt and the caller's policy retry.
    Credentials come from boto3's own chain (environment, profile, instance role)."""

    def __init__(self, settings: Settings, boto_client):
        self.boto = boto_client
        self._settings = settings
        self._stores: dict[str, object] = {}
        self._lock = threading.Lock()
        self.fast = 0  # requests answered by obstore
        self.fallbacks = 0  # requests that went to boto3 instead

    def _store(self, bucket: str):
        """obstore's store for `bucket`, or None when obstore cannot be set up here (said once;
        boto3 then does everything)."""
        with self._lock:
            if bucket in self._stores:
                return self._stores[bucket]
            from datetime import timedelta

            import boto3
            from obstore.auth.boto3 import Boto3CredentialProvider
            from obstore.store import S3Store

            endpoint = self._settings.s3_endpoint_url
            options = {"connect_timeout": "5s", "timeout": "30s", "allow_http": endpoint.startswith("http://")}
            where = {"endpoint": endpoint, "virtual_hosted_style_request": False} if endpoint else {}
            try:
                store = S3Store(bucket, region=self._settings.aws_region, client_options=options,
                                credential_provider=Boto3CredentialProvider(boto3.session.Session()),
                                retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=30)}, **where)
            except Exception as exc:  # a configuration obstore does not take: boto3 does the work
                log.warning("S3 fast path off for bucket %s: obstore refused the configuration (%s: %s)",
                            bucket, type(exc).__name__, exc)
                store = None
            self._stores[bucket] = store
            return store

    def _attempt(self, what: str, bucket: str, key: str, request: Callable):
        """`request(store)` through obstore, or None when boto3 must do it: an awkward key, no
        store, or any failure (ObjectTooLarge excepted: that is the answer). Whatever went wrong,
        boto3's attempt is the one that counts; a panic in the Rust code arrives as pyo3's
        PanicException, a BaseException."""
        store = self._store(bucket) if plain_key(key) else None
        if store is not None:
            try:
                result = request(store)
            except ObjectTooLarge:
                raise
            except BaseException as exc:
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                log.debug("obstore could not %s %s/%s (%s): asking boto3", what, bucket, key, type(exc).__name__)
            else:
                if result is not None:
                    self.fast += 1
                    return result
        self.fallbacks += 1
        return None

    def fetch(self, bucket: str, key: str, max_bytes: int | None = None) -> FetchedObject:
        def get(store) -> FetchedObject | None:
            import obstore

            result = obstore.get(store, key)
            size = result.meta["size"]
            if max_bytes is not None and size > max_bytes:
                raise ObjectTooLarge(size, max_bytes)
            data = bytes(result.bytes())
            if len(data) != size:
                return None  # a short read: boto3 reads it again, or says what is wrong
            return FetchedObject(data, size, (result.meta["e_tag"] or "").strip('"'), result.meta["last_modified"])

        return self._attempt("fetch", bucket, key, get) or fetch(self.boto, bucket, key, max_bytes)

    def put(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        def store_it(store) -> bool:
            import obstore

            obstore.put(store, key, data, attributes={"Content-Type": content_type})
            return True

        if not self._attempt("store", bucket, key, store_it):
            put(self.boto, bucket, key, data, content_type)


def head(s3, bucket: str, key: str) -> dict | None:
    """ListObjects-shaped metadata of one object (Key, Size, ETag, LastModified), None when it is missing."""
    try:
        with errors("reading metadata of", bucket, key):
            response = s3.head_object(Bucket=bucket, Key=key)
    except S3Error as exc:
        if exc.missing_object:
            return None
        raise
    return {"Key": key, "Size": response["ContentLength"], "ETag": response.get("ETag", ""),
            "LastModified": response["LastModified"]}


def head_bucket(s3, bucket: str) -> None:
    """Raises S3Error unless the bucket exists and these credentials may see it."""
    with errors("looking up bucket", bucket):
        s3.head_bucket(Bucket=bucket)


def list_objects(s3, bucket: str, prefix: str = "") -> Iterator[dict]:
    """Every object under the prefix, page by page (S3 returns at most 1,000 per call), as
    ListObjectsV2 `Contents` entries. Folder markers (keys ending in '/') are not listed."""
    with errors("listing", bucket, prefix):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):
                    yield obj


def list_page(s3, bucket: str, prefix: str = "", start_after: str = "",
              max_keys: int = 1000) -> tuple[list[dict], bool]:
    """One ListObjectsV2 page of the objects after `start_after` (folder markers left out), and
    whether more follow. Resuming after the last key seen, rather than with a continuation token,
    works after any outage or restart of the server."""
    with errors("listing", bucket, prefix):
        response = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=max_keys,
                                      **({"StartAfter": start_after} if start_after else {}))
    objects = response.get("Contents", [])
    return [o for o in objects if not o["Key"].endswith("/")], bool(response.get("IsTruncated")) and bool(objects)


def delete_prefix(s3, bucket: str, prefix: str) -> int:
    """Delete every object under `prefix` (1,000 per request); returns how many were deleted."""
    if not prefix:
        raise ValueError("refusing to delete a whole bucket: give a prefix")
    deleted = 0
    batch: list[dict] = []

    def flush() -> None:
        nonlocal deleted
        with errors("deleting objects under", bucket, prefix):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        deleted += len(batch)
        batch.clear()

    for obj in list_objects(s3, bucket, prefix):
        batch.append({"Key": obj["Key"]})
        if len(batch) == 1000:
            flush()
    if batch:
        flush()
    return deleted


def delete_keys(s3, bucket: str, keys: list[str]) -> None:
    """Delete these objects (up to 1,000; missing ones are not an error)."""
    if not keys:
        return
    with errors("deleting objects of", bucket):
        response = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
    failed = [e for e in response.get("Errors", []) if e.get("Code") not in MISSING_OBJECT_CODES]
    if failed:
        first = failed[0]
        raise S3Error("deleting", bucket, first.get("Key", ""), first.get("Code", ""), first.get("Message", ""),
                      _kind(first.get("Code", ""), None))


def count_objects(s3, bucket: str, limit: int = 10_000) -> tuple[int, bool] | None:
    """(objects in the bucket, more than `limit`), or None when the bucket does not exist."""
    count = 0
    try:
        with errors("listing", bucket):
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                count += page.get("KeyCount", 0)
                if count >= limit:
                    return count, True
    except S3Error as exc:
        if exc.missing_bucket:
            return None
        raise
    return count, False


def delete_bucket(s3, bucket: str) -> int:
    """Empty the bucket (every object version and delete marker) and delete it; returns how many
    versions were deleted."""
    deleted = 0
    with errors("emptying", bucket):
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            batch = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                     for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
            for start in range(0, len(batch), 1000):
                chunk = batch[start:start + 1000]
                response = s3.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
                if response.get("Errors"):
                    first = response["Errors"][0]
                    raise S3Error("emptying", bucket, first.get("Key", ""), first.get("Code", ""),
                                  first.get("Message", ""), _kind(first.get("Code", ""), None))
                deleted += len(chunk)
    with errors("deleting", bucket):
        s3.delete_bucket(Bucket=bucket)
    return deleted


def ensure_bucket(s3, bucket: str, region: str) -> bool:
    """Create the bucket unless it exists; True when this call created it."""
    with errors("listing buckets of", bucket):
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket in existing:
        return False
    where = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    try:
        with errors("creating bucket", bucket):
            s3.create_bucket(Bucket=bucket, **where)
    except S3Error as exc:
        if exc.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            return False
        raise
    return True


def upload_file(s3, path, bucket: str, key: str, content_type: str | None = None,
                multipart_threshold: int = 64 * 1024 * 1024) -> str:
    """Upload a local file (multipart above the threshold); returns its s3:// URI."""
    from boto3.s3.transfer import TransferConfig

    extra = {"ExtraArgs": {"ContentType": content_type}} if content_type else {}
    with errors(f"uploading {path} to", bucket, key):
        s3.upload_file(str(path), bucket, key, Config=TransferConfig(multipart_threshold=multipart_threshold),
                       **extra)
    return f"s3://{bucket}/{key}"


def download_file(s3, bucket: str, key: str, path) -> None:
    with errors(f"downloading to {path} from", bucket, key):
        s3.download_file(bucket, key, str(path))


def health_answers(url: str, timeout: float = 2.0) -> bool:
    """True when an unauthenticated GET of a server's health URL (versitygw's /health) says 200."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local check: no proxy
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def answers(settings: Settings) -> bool:
    """True when the S3 endpoint answers a request with these credentials (a health check)."""
    try:
        with errors("listing buckets", settings.s3_bucket):
            client(settings, max_attempts=1).list_buckets()
        return True
    except S3Error:
        return False
