"""The event schema and the document ids and keys derived from S3 keys."""
from __future__ import annotations

import json
import unicodedata
from datetime import datetime, timezone

import pytest

from imgpipe.document import derived_key, document_id, file_name
from imgpipe.errors import MessageError
from imgpipe.events import MAX_EVENT_BYTES, ImageEvent, event_for_object, parse_event

AWKWARD_KEYS = ["raw/a cat.jpg", "raw/1+1=2.png", "raw/100%.jpg", "raw/#tag;x&y=z.jpg",
                "raw/" + unicodedata.normalize("NFC", "café.jpg"), "raw/" + unicodedata.normalize("NFD", "café.jpg"),
                "raw/日本/写真.webp", 'raw/quote"s,comma.jpg', "raw/../../etc/passwd"]


def event(key="raw/a.jpg", **changes):
    base = ImageEvent(bucket="images", key=key, size=10, etag="abc", last_modified="2026-01-01T00:00:00.000Z",
                      event_time="2026-01-01T00:00:01.000Z")
    return base if not changes else ImageEvent(**{**base.__dict__, **changes})


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_keys_round_trip_byte_for_byte(key):
    assert parse_event(event(key).to_json()).key.encode("utf-8") == key.encode("utf-8")


def test_nfc_and_nfd_keys_stay_distinct():
    nfc, nfd = AWKWARD_KEYS[4], AWKWARD_KEYS[5]
    assert nfc != nfd
    assert parse_event(event(nfc).to_json()).key != parse_event(event(nfd).to_json()).key
    assert document_id("images", nfc) != document_id("images", nfd)


def test_event_from_a_listing_entry():
    obj = {"Key": "raw/x.png", "Size": 123, "ETag": '"e1"', "LastModified": datetime(2026, 5, 1, tzinfo=timezone.utc)}
    e = event_for_object("images", obj)
    assert (e.key, e.size, e.etag, e.last_modified) == ("raw/x.png", 123, "e1", "2026-05-01T00:00:00.000Z")
    assert e.event_time.endswith("Z")
    assert json.loads(e.to_json())["schema_version"] == 1


@pytest.mark.parametrize("raw, reason", [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[1, 2]", "JSON list"),
    (b'{"schema_version": 1, "bucket": "images"}', "missing field(s): key, size"),
    (json.dumps({**json.loads(event().to_json()), "size": "10"}).encode(), "size must be int"),
    (json.dumps({**json.loads(event().to_json()), "schema_version": 99}).encode(), "schema_version 99"),
    (b"x" * (MAX_EVENT_BYTES + 1), "more than the"),
    (None, "no value"),
])
def test_malformed_messages_are_rejected_with_a_reason(raw, reason):
    with pytest.raises(MessageError) as err:
        parse_event(raw)
    assert err.value.stage == "validate"
    assert reason in err.value.reason


def test_document_ids_are_valid_meilisearch_ids_and_stable():
    for key in AWKWARD_KEYS:
        doc_id = document_id("images", key)
        assert doc_id == document_id("images", key)
        assert all(c.isalnum() or c in "-_" for c in doc_id) and len(doc_id) <= 511
    assert document_id("a", "b/c") != document_id("a/b", "c")


@pytest.mark.parametrize("key", AWKWARD_KEYS + ["..", "raw/..", "raw/./.", "a/b/\x00evil\n.jpg"])
def test_derived_keys_never_escape_the_processed_prefix(key):
    derived = derived_key("processed/", "thumbnails", "images", key)
    assert derived.startswith("processed/thumbnails/")
    rest = derived[len("processed/thumbnails/"):]
    parts = rest.split("/")
    assert len(parts) == 2 and ".." not in parts and "." not in parts and all(parts)
    assert not any(ord(c) < 32 for c in derived)


def test_file_name_is_the_last_segment():
    assert file_name("raw/x/y z.jpg") == "y z.jpg"
