"""The consumer's policy for S3's answers, per request (the integration tests in
test_s3_decisions.py run it against a real S3 protocol server; this covers every code)."""
from __future__ import annotations

import threading
import time

import pytest

from consumer.storage import ObjectStore
from imgpipe import s3
from imgpipe.errors import DENIED, NOT_FOUND, REJECTED, UNAVAILABLE


def error(code: str, kind: str, message: str = "m") -> s3.S3Error:
    return s3.S3Error("fetching", "images", "raw/a.jpg", code, message, kind)


class Bucket:
    """Answers head_bucket as told: the probe the policy makes when AccessDenied is ambiguous."""

    def __init__(self, answers: bool):
        self.answers = answers

    def head_bucket(self, Bucket):  # noqa: N803 (boto3's argument name)
        if not self.answers:
            raise s3.S3Error("looking up bucket", Bucket, "", "AccessDenied", "no", DENIED)


@pytest.mark.parametrize("exc, says", [
    (error("NoSuchKey", NOT_FOUND), "does not exist"),
    (error("NoSuchBucket", NOT_FOUND), "bucket 'images' does not exist"),
    (error("InvalidObjectState", REJECTED), "archived"),
    (error("InvalidRequest", REJECTED, "The object was stored using a form of Server Side Encryption."),
     "Server Side Encryption"),
    (error("KMS.DisabledException", UNAVAILABLE), "KMS key refused"),
    (error("ParamValidationError", REJECTED), "refused the request"),
])
def test_what_is_about_one_object_is_a_message_error(exc, says, monkeypatch):
    store = ObjectStore(Bucket(answers=False), "images", threading.Event())
    monkeypatch.setattr(s3, "head_bucket", lambda client, bucket: client.head_bucket(Bucket=bucket))
    verdict = store._about_the_object(exc, "images", "raw/a.jpg")
    assert verdict is not None and verdict.stage == "fetch" and says in verdict.reason


@pytest.mark.parametrize("exc", [error("SlowDown", UNAVAILABLE), error("InternalError", UNAVAILABLE),
                                 error("EndpointConnectionError", UNAVAILABLE), error("InvalidAccessKeyId", DENIED)])
def test_outages_and_refused_credentials_are_retried(exc, monkeypatch):
    store = ObjectStore(Bucket(answers=False), "images", threading.Event())
    monkeypatch.setattr(s3, "head_bucket", lambda client, bucket: client.head_bucket(Bucket=bucket))
    assert store._about_the_object(exc, "images", "raw/a.jpg") is None


def test_access_denied_is_about_the_object_when_the_bucket_answers_or_a_fetch_just_worked(monkeypatch):
    monkeypatch.setattr(s3, "head_bucket", lambda client, bucket: client.head_bucket(Bucket=bucket))
    denied = error("AccessDenied", DENIED)
    assert ObjectStore(Bucket(answers=True), "images", threading.Event())._about_the_object(
        denied, "images", "raw/a.jpg").stage == "fetch"
    silent = ObjectStore(Bucket(answers=False), "images", threading.Event())
    assert silent._about_the_object(denied, "images", "raw/a.jpg") is None
    silent._last_fetch_ok["images"] = time.monotonic()
    assert "access denied for this object" in silent._about_the_object(denied, "images", "raw/a.jpg").reason
