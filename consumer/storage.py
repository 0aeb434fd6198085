"""S3 access of the consumer: fetch a source object, store a derived image, with the consumer's
policy for S3's answers (imgpipe.s3 translates them): the object itself is missing or too large
(MessageError, dead-lettered), or S3 is failing (retried until it recovers or we stop).
"""
from __future__ import annotations

import threading

from imgpipe import s3
from imgpipe.document import SourceObject
from imgpipe.errors import MessageError
from imgpipe.retry import retry_until_stopped


class ObjectStore:
    def __init__(self, client, output_bucket: str, stop: threading.Event):
        self.client = client
        self.output_bucket = output_bucket
        self.stop = stop

    def fetch(self, bucket: str, key: str, max_bytes: int) -> tuple[bytes, SourceObject]:
        """The object's bytes and what S3 said about it, retried on outages."""

        def attempt() -> tuple[bytes, SourceObject]:
            try:
                fetched = s3.fetch(self.client, bucket, key, max_bytes)
            except s3.ObjectTooLarge as exc:
                raise MessageError("guard", str(exc)) from None
            except s3.S3Error as exc:
                if exc.missing_object:
                    raise MessageError("fetch", f"object s3://{bucket}/{key} does not exist") from None
                if exc.missing_bucket:
                    raise MessageError("fetch", f"bucket {bucket!r} does not exist") from None
                # Throttling, 5xx and also AccessDenied: a permissions problem is the operator's to
                # fix, and dead-lettering every message meanwhile would lose the whole stream.
                raise
            return fetched.data, SourceObject(fetched.size, fetched.etag, fetched.last_modified)

        return retry_until_stopped(attempt, self.stop)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        # Any failure, a missing output bucket included, is the service's or the configuration's,
        # never the message's: retried.
        retry_until_stopped(lambda: s3.put(self.client, self.output_bucket, key, data, content_type), self.stop)
