"""S3 access of the consumer: fetch a source object, store a derived image, and the consumer's
policy for S3's answers (imgpipe.s3 translates them), decided per request:

- about this one object (missing, too large, archived, encrypted with a key we do not have,
  access or KMS denied for it, a derived key S3 refuses): MessageError, dead-lettered;
- an outage (no connection, 5xx, throttling, credentials refused for everything): retried until
  it recovers or we stop, and nothing past it is committed.

AccessDenied alone cannot tell the two apart, so the service is asked something else: if
another object of the bucket was fetched a moment ago, or the bucket itself answers, the denial
is about this object; otherwise the credentials are, and it is an outage.
"""
from __future__ import annotations

import logging
import threading
import time

from imgpipe import s3
from imgpipe.document import SourceObject
from imgpipe.errors import DENIED, REJECTED, MessageError, ObjectMissing, UserError
from imgpipe.retry import retry_until_stopped

log = logging.getLogger(__name__)

# A denial right after a successful fetch from the same bucket is about the object.
RECENT_SUCCESS_SECONDS = 60.0
# What S3 says about one object that no retry can change, and what the reader should do.
_OBJECT_REFUSALS = {
    "InvalidObjectState": "the object is archived (e.g. Glacier) and must be restored before it can be read",
    "InvalidRequest": "S3 refused to serve the object as asked",
}


class ObjectStore:
    def __init__(self, client, output_bucket: str, stop: threading.Event, fast: s3.FastObjects | None = None):
        self.client = client
        self.fast = fast  # GETs and PUTs through obstore; every failure still answered by boto3
        self.output_bucket = output_bucket
        self.stop = stop
        self._last_fetch_ok: dict[str, float] = {}

    def check_output_bucket(self) -> None:
        """At start-up: a missing output bucket is a setting to fix (exit 2), not an outage to wait
        out. A denial is not conclusive (a least-privilege role may not list the bucket)."""
        try:
            s3.head_bucket(self.client, self.output_bucket)
        except s3.S3Error as exc:
            if exc.kind == "not_found":
                raise UserError(f"bucket {self.output_bucket!r} (S3_BUCKET) does not exist at "
                                f"{self.client.meta.endpoint_url}; create it or fix S3_BUCKET") from None
            if exc.kind != DENIED:
                raise

    def fetch(self, bucket: str, key: str, max_bytes: int) -> tuple[bytes, SourceObject]:
        """The object's bytes and what S3 said about it, retried on outages."""

        def attempt() -> tuple[bytes, SourceObject]:
            try:
                fetched = (self.fast.fetch(bucket, key, max_bytes) if self.fast
                           else s3.fetch(self.client, bucket, key, max_bytes))
            except s3.ObjectTooLarge as exc:
                raise MessageError("guard", str(exc)) from None
            except s3.S3Error as exc:
                raise self._about_the_object(exc, bucket, key) or exc from None
            self._last_fetch_ok[bucket] = time.monotonic()
            return fetched.data, SourceObject(fetched.size, fetched.etag, fetched.last_modified)

        return retry_until_stopped(attempt, self.stop)

    def _about_the_object(self, exc: s3.S3Error, bucket: str, key: str) -> MessageError | None:
        where = f"s3://{bucket}/{key}"
        if exc.missing_object:
            return ObjectMissing("fetch", f"object {where} does not exist")
        if exc.missing_bucket:
            return MessageError("fetch", f"bucket {bucket!r} does not exist")
        if exc.code.startswith("KMS."):
            return MessageError("fetch", f"{where}: its KMS key refused to decrypt it ({exc.code}: {exc.message})")
        if exc.kind == REJECTED:
            meaning = _OBJECT_REFUSALS.get(exc.code, "S3 refused the request for this object")
            return MessageError("fetch", f"{where}: {meaning} ({exc.code}: {exc.message})")
        if exc.kind == DENIED and self._bucket_answers(bucket):
            return MessageError("fetch", f"{where}: access denied for this object, while the bucket answers "
                                         f"({exc.code}: {exc.message})")
        return None  # an outage, or credentials refused for everything: retried

    def _bucket_answers(self, bucket: str) -> bool:
        if time.monotonic() - self._last_fetch_ok.get(bucket, float("-inf")) < RECENT_SUCCESS_SECONDS:
            return True
        try:
            s3.head_bucket(self.client, bucket)
            return True
        except s3.S3Error:
            return False

    def delete(self, keys: list[str]) -> None:
        """Delete derived images (a key already gone is fine), retried through outages."""
        retry_until_stopped(lambda: s3.delete_keys(self.client, self.output_bucket, keys), self.stop)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store a derived image. A key S3 refuses (too long, clashing with a folder) comes from
        the source key: the message's fault, dead-lettered. Anything else is retried."""

        def attempt() -> None:
            try:
                if self.fast:
                    self.fast.put(self.output_bucket, key, data, content_type)
                else:
                    s3.put(self.client, self.output_bucket, key, data, content_type)
            except s3.S3Error as exc:
                if exc.kind == REJECTED:
                    raise MessageError("store", f"S3 refused the derived key s3://{self.output_bucket}/{key} "
                                                f"({exc.code}: {exc.message})") from None
                raise

        retry_until_stopped(attempt, self.stop)
