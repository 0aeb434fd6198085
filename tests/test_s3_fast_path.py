"""The consumer's S3 fast path (imgpipe.s3.FastObjects, obstore) against the stack's real S3
server: it stores and reads exactly what boto3 does, takes only keys that mean the same object to
both, and leaves every failure to boto3, so errors keep S3's codes and the consumer's policy."""
from __future__ import annotations

import socket

import pytest

from fixtures.keys import CSV_BREAKING_KEYS, FILE_SAFE_AWKWARD_KEYS
from imgpipe import s3
from imgpipe.errors import UNAVAILABLE


@pytest.mark.parametrize("key, plain", [
    ("raw/photo-001.jpg", True), ("processed/thumbnails/a_b.c-d.jpg", True), ("raw/holiday photo 1.jpg", True),
    ("raw/a+b.jpg", False), ("raw/100% real.png", False), ("raw/#1.jpg", False), ("raw/café.jpg", False),
    ("raw//double.jpg", False), ("/lead.jpg", False), ("raw/./x.jpg", False), ("raw/../x.jpg", False),
    ("raw/folder/", False), ("raw/ padded /x.jpg", False), ("raw/tab\there.jpg", False), ("", False),
    ("k" * 1025, False),
])
def test_only_keys_that_mean_the_same_object_to_both_clients_take_the_fast_path(key, plain):
    assert s3.plain_key(key) is plain


def test_it_stores_and_reads_what_boto3_stores_and_reads(settings):
    client = s3.client(settings)
    fast = s3.FastObjects(settings, client)
    key = f"{settings.s3_processed_prefix}thumbnails/fast path.jpg"
    data = bytes(range(256)) * 300
    fast.put(settings.s3_bucket, key, data, "image/jpeg")
    got = fast.fetch(settings.s3_bucket, key)
    assert (fast.fast, fast.fallbacks) == (2, 0)
    expected = s3.fetch(client, settings.s3_bucket, key)
    assert (got.data, got.size, got.etag, got.last_modified) == (
        expected.data, len(data), expected.etag, expected.last_modified)
    assert client.head_object(Bucket=settings.s3_bucket, Key=key)["ContentType"] == "image/jpeg"
    with pytest.raises(s3.ObjectTooLarge):
        fast.fetch(settings.s3_bucket, key, max_bytes=len(data) - 1)


def test_awkward_keys_go_through_boto3_and_land_under_their_exact_names(settings):
    client = s3.client(settings)
    fast = s3.FastObjects(settings, client)
    keys = [f"{settings.s3_raw_prefix}{k}" for k in FILE_SAFE_AWKWARD_KEYS + CSV_BREAKING_KEYS]
    awkward = [k for k in keys if not s3.plain_key(k)]
    assert len(awkward) >= 20
    for i, key in enumerate(awkward):
        fast.put(settings.s3_bucket, key, f"object {i}".encode(), "image/png")
    assert (fast.fast, fast.fallbacks) == (0, len(awkward))
    listed = {o["Key"] for o in s3.list_objects(client, settings.s3_bucket, settings.s3_raw_prefix)}
    assert listed == set(awkward)
    assert [fast.fetch(settings.s3_bucket, k).data for k in awkward] == [f"object {i}".encode()
                                                                        for i in range(len(awkward))]


def test_failures_are_answered_by_boto3_with_s3s_own_codes(settings):
    fast = s3.FastObjects(settings, s3.client(settings))
    with pytest.raises(s3.S3Error) as missing_key:
        fast.fetch(settings.s3_bucket, f"{settings.s3_raw_prefix}missing.jpg")
    assert missing_key.value.missing_object and missing_key.value.code == "NoSuchKey"
    with pytest.raises(s3.S3Error) as missing_bucket:
        fast.fetch("no-such-bucket-for-imgpipe", "raw/x.jpg")
    assert missing_bucket.value.missing_bucket
    assert (fast.fast, fast.fallbacks) == (0, 2)


def test_an_s3_outage_is_an_unavailable_error_not_a_hang(settings):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = settings.with_overrides(s3_endpoint_url=f"http://127.0.0.1:{port}")
    fast = s3.FastObjects(down, s3.client(down, max_attempts=1))
    with pytest.raises(s3.S3Error) as fetching:
        fast.fetch(down.s3_bucket, "raw/x.jpg")
    with pytest.raises(s3.S3Error) as storing:
        fast.put(down.s3_bucket, "processed/x.jpg", b"x", "image/jpeg")
    assert fetching.value.kind == storing.value.kind == UNAVAILABLE
    assert (fast.fast, fast.fallbacks) == (0, 2)


def test_the_fast_path_is_a_setting(monkeypatch):
    from imgpipe.settings import load_settings

    assert load_settings().s3_fast_path is True
    monkeypatch.setenv("S3_FAST_PATH", "false")
    assert load_settings().s3_fast_path is False
    monkeypatch.setenv("S3_FAST_PATH", "sometimes")
    with pytest.raises(Exception, match="S3_FAST_PATH"):
        load_settings()


def test_real_aws_gets_a_store_without_an_endpoint_and_a_refused_configuration_falls_back(settings):
    aws = s3.FastObjects(settings.with_overrides(s3_endpoint_url=""), None)
    assert aws._store("my-bucket") is not None
    odd = s3.FastObjects(settings.with_overrides(aws_region="not a region\n"), s3.client(settings))
    key = f"{settings.s3_processed_prefix}odd.jpg"
    odd.put(settings.s3_bucket, key, b"x", "image/jpeg")  # boto3 (its region is the stack's)
    assert odd.fetch(settings.s3_bucket, key).data == b"x"
