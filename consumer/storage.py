"""S3 access of the consumer: fetch a source object, store a derived image.

botocore's errors are sorted here into the pipeline's two kinds: the object itself is bad or
missing (MessageError, dead-lettered) or S3 is failing (InfrastructureError, retried).
"""
from __future__ import annotations

import threading

from botocore.exceptions import BotoCoreError, ClientError
from urllib3.exceptions import HTTPError as Urllib3Error

from imgpipe.errors import InfrastructureError, MessageError
from imgpipe.retry import retry_until_stopped

_MISSING = {"NoSuchKey", "404", "NotFound"}


def _classify(exc: Exception, action: str, bucket: str, key: str) -> Exception:
    where = f"s3://{bucket}/{key}"
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _MISSING:
            return MessageError("fetch", f"object {where} does not exist")
        if code == "NoSuchBucket":
            return MessageError("fetch", f"bucket {bucket!r} does not exist")
        # Throttling, 5xx and also AccessDenied: a permissions problem is the operator's to fix,
        # and dead-lettering every message meanwhile would lose the whole stream.
        return InfrastructureError("s3", f"{action} {where} failed: {code} {exc.response.get('Error', {}).get('Message', '')}".strip())
    return InfrastructureError("s3", f"{action} {where} failed: {type(exc).__name__}: {exc}")


class ObjectStore:
    def __init__(self, s3, output_bucket: str, stop: threading.Event):
        self.s3 = s3
        self.output_bucket = output_bucket
        self.stop = stop

    def fetch(self, bucket: str, key: str, max_bytes: int) -> tuple[bytes, dict]:
        """The object's bytes and its metadata (size, etag, last_modified), retried on outages."""

        def attempt() -> tuple[bytes, dict]:
            try:
                response = self.s3.get_object(Bucket=bucket, Key=key)
                size = response["ContentLength"]
                if size > max_bytes:
                    response["Body"].close()
                    raise MessageError("guard", f"object is {size} bytes, limit {max_bytes}")
                # Errors while reading the body (a dropped connection) are outages too.
                data = response["Body"].read()
            except (ClientError, BotoCoreError, Urllib3Error, OSError) as exc:
                raise _classify(exc, "fetching", bucket, key) from None
            if len(data) != size:
                raise InfrastructureError("s3", f"fetching s3://{bucket}/{key}: got {len(data)} of {size} bytes")
            return data, {"size": size, "etag": response.get("ETag", "").strip('"'),
                          "last_modified": response.get("LastModified")}

        return retry_until_stopped(attempt, self.stop)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        def attempt() -> None:
            try:
                self.s3.put_object(Bucket=self.output_bucket, Key=key, Body=data, ContentType=content_type)
            except (ClientError, BotoCoreError, Urllib3Error, OSError) as exc:
                error = _classify(exc, "storing", self.output_bucket, key)
                # A missing output bucket is a configuration problem, not the message's fault.
                raise InfrastructureError("s3", str(error)) from None

        retry_until_stopped(attempt, self.stop)
