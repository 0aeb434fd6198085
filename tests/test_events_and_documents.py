"""The event schema and the document ids and keys derived from S3 keys."""
from __future__ import annotations

import json
import unicodedata
from datetime import datetime, timezone

import pytest

from fixtures.keys import CAFE, CSV_BREAKING_KEYS, FILE_SAFE_AWKWARD_KEYS
from imgpipe import PIPELINE_VERSION
from imgpipe.document import (DESCRIPTOR_DIMENSIONS, EMBEDDER, FIELDS, DerivedKeys, ProcessingRun, SourceObject, derived_key, document_id, file_name,
                              to_document)
from imgpipe.errors import MessageError
from imgpipe.events import MAX_EVENT_BYTES, ImageEvent, compare_sequencers, event_for_object, parse_event

# Both lists of awkward keys, plus one that tries to climb out of its prefix.
AWKWARD_KEYS = [*FILE_SAFE_AWKWARD_KEYS, *CSV_BREAKING_KEYS, "raw/../../etc/passwd"]


def event(key="raw/a.jpg", **changes):
    base = ImageEvent(bucket="images", key=key, size=10, etag="abc", last_modified="2026-01-01T00:00:00.000Z",
                      event_time="2026-01-01T00:00:01.000Z")
    return base if not changes else ImageEvent(**{**base.__dict__, **changes})


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_keys_round_trip_byte_for_byte(key):
    assert parse_event(event(key).to_json()).key.encode("utf-8") == key.encode("utf-8")


def test_nfc_and_nfd_keys_stay_distinct():
    nfc, nfd = (f"misc/{unicodedata.normalize(form, CAFE)}.jpg" for form in ("NFC", "NFD"))
    assert nfc in AWKWARD_KEYS and nfd in AWKWARD_KEYS
    assert nfc != nfd
    assert parse_event(event(nfc).to_json()).key != parse_event(event(nfd).to_json()).key
    assert document_id("images", nfc) != document_id("images", nfd)


def test_event_from_a_listing_entry():
    obj = {"Key": "raw/x.png", "Size": 123, "ETag": '"e1"', "LastModified": datetime(2026, 5, 1, tzinfo=timezone.utc)}
    e = event_for_object("images", obj)
    assert (e.key, e.size, e.etag, e.last_modified) == ("raw/x.png", 123, "e1", "2026-05-01T00:00:00.000Z")
    assert e.event_time.endswith("Z")
    assert json.loads(e.to_json())["schema_version"] == 2
    assert (e.action, e.sequencer) == ("upsert", None)


def test_a_delete_event_round_trips_with_what_a_consumer_needs():
    deletion = ImageEvent.deletion("images", "raw/gone cat.jpg", "2026-01-01T00:00:02.000Z", "0055AED6DCD90281E5")
    data = json.loads(deletion.to_json())
    assert {k: data[k] for k in ("schema_version", "action", "bucket", "key", "event_time", "sequencer")} == {
        "schema_version": 2, "action": "delete", "bucket": "images", "key": "raw/gone cat.jpg",
        "event_time": "2026-01-01T00:00:02.000Z", "sequencer": "0055AED6DCD90281E5"}
    assert parse_event(deletion.to_json()) == deletion
    # A delete needs no size, etag or last_modified (S3's ObjectRemoved notifications have none).
    minimal = {"schema_version": 2, "action": "delete", "bucket": "images", "key": "raw/x.jpg",
               "event_time": "2026-01-01T00:00:02.000Z"}
    assert parse_event(json.dumps(minimal).encode()) == ImageEvent.deletion("images", "raw/x.jpg",
                                                                            "2026-01-01T00:00:02.000Z")


def test_an_upsert_keeps_its_sequencer_and_version_1_events_are_upserts():
    upsert = event(sequencer="0a1b")
    assert parse_event(upsert.to_json()) == upsert
    v1 = {k: v for k, v in json.loads(event().to_json()).items() if k not in ("action", "sequencer")}
    parsed = parse_event(json.dumps({**v1, "schema_version": 1}).encode())
    assert (parsed.schema_version, parsed.action, parsed.sequencer, parsed.key) == (1, "upsert", None, "raw/a.jpg")


def test_sequencers_compare_as_s3_says_right_padded():
    assert compare_sequencers("0055AED6DCD90281E5", "0055AED6DCD90281E6") == -1
    assert compare_sequencers("0055AED6DCD90281E5", "0055aed6dcd90281e5") == 0
    assert compare_sequencers("0055AED6DCD90281E5", "0055AED6DCD90281E5AB") == -1  # padded: ...E500 < ...E5AB
    assert compare_sequencers("0055AED6DCD90281F", "0055AED6DCD90281E5") == 1
    assert compare_sequencers("0055", "005500") == 0


V2 = {"schema_version": 2, "action": "upsert", "bucket": "images", "key": "raw/a.jpg", "size": 1, "etag": "e",
      "last_modified": "2026-01-01T00:00:00.000Z", "event_time": "2026-01-01T00:00:00.000Z"}


@pytest.mark.parametrize("raw, reason", [
    ({**V2, "action": "remove"}, "action must be one of upsert, delete"),
    ({k: v for k, v in V2.items() if k != "action"}, "action must be one of"),
    ({**V2, "sequencer": "xyz"}, "sequencer must be a hexadecimal string"),
    ({**V2, "sequencer": 12}, "sequencer must be a hexadecimal string"),
    ({**V2, "action": "delete", "event_time": None}, "event_time must be str"),
    ({"schema_version": 2, "action": "delete", "bucket": "images"}, "missing field(s): key, event_time"),
    ({**V2, "schema_version": True}, "schema_version True"),
])
def test_malformed_version_2_events_are_rejected_with_a_reason(raw, reason):
    with pytest.raises(MessageError) as err:
        parse_event(json.dumps(raw).encode())
    assert reason in err.value.reason


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


@pytest.mark.parametrize("name", ["日" * 85, "é" * 127 + ".png", "📷" * 63 + ".jpeg", "a" * 255])
def test_derived_keys_keep_every_segment_within_255_bytes_and_cut_no_character(name):
    derived = derived_key("processed/", "thumbnails", "images", f"raw/{name}")
    assert all(len(part.encode("utf-8")) <= 255 for part in derived.split("/"))
    stem = derived.rsplit("/", 1)[1][:-len(".jpg")]
    assert stem and name.startswith(stem) and len(stem.encode("utf-8")) <= 200


def test_file_name_is_the_last_segment():
    assert file_name("raw/x/y z.jpg") == "y z.jpg"


FEATURES = {"format": "jpeg", "size_bytes": 2048, "width": 640, "height": 480, "channels": 3, "bit_depth": 8,
            "megapixels": 0.307, "mean_brightness": 120.5, "sharpness": 300.25, "edge_density": 0.1234,
            "dominant_color": "#102030", "phash": "00ff00ff00ff00ff", "sha256": "ab" * 32, "frames": 1}


def test_to_document_builds_every_field_in_order_from_its_inputs():
    moment = datetime(2026, 5, 1, 12, 30, 15, 250_000, tzinfo=timezone.utc)
    doc = to_document(event("raw/cats/a cat.jpg"), SourceObject(size=3000, etag="e2", last_modified=moment),
                      FEATURES, DerivedKeys.of("processed/", "images", "raw/cats/a cat.jpg"),
                      ProcessingRun("2026-05-01T12:31:00.000Z", 12.345))
    assert list(doc) == [*FIELDS, "_vectors"] and doc["_vectors"] == {EMBEDDER: None}
    assert doc["id"] == document_id("images", "raw/cats/a cat.jpg")
    assert (doc["bucket"], doc["key"], doc["file_name"]) == ("images", "raw/cats/a cat.jpg", "a cat.jpg")
    # What S3 said at fetch time wins over the (older) event: size, etag, modification time.
    assert (doc["size_bytes"], doc["size_kb"], doc["etag"]) == (3000, 2.93, "e2")
    assert (doc["timestamp"], doc["last_modified"]) == (int(moment.timestamp()), "2026-05-01T12:30:15.250Z")
    assert doc["thumbnail_key"] == derived_key("processed/", "thumbnails", "images", "raw/cats/a cat.jpg")
    assert doc["grayscale_key"].startswith("processed/grayscale/")
    assert (doc["event_time"], doc["processed_at"], doc["processing_ms"]) == (
        "2026-01-01T00:00:01.000Z", "2026-05-01T12:31:00.000Z", 12.3)
    assert doc["pipeline_version"] == PIPELINE_VERSION
    assert {k: doc[k] for k in FEATURES if k != "size_bytes"} == {k: v for k, v in FEATURES.items() if k != "size_bytes"}


def test_to_document_falls_back_to_the_event_and_refuses_missing_features():
    doc = to_document(event(etag="from-event"), SourceObject(size=10), FEATURES,
                      DerivedKeys.of("p/", "images", "raw/a.jpg"), ProcessingRun("2026-01-01T00:00:02.000Z", 1.0))
    assert (doc["etag"], doc["last_modified"]) == ("from-event", "2026-01-01T00:00:00.000Z")
    assert doc["timestamp"] == int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp())
    with pytest.raises(ValueError, match="phash"):
        to_document(event(), SourceObject(size=10), {k: v for k, v in FEATURES.items() if k != "phash"},
                    DerivedKeys.of("p/", "images", "raw/a.jpg"), ProcessingRun("2026-01-01T00:00:02.000Z", 1.0))


def test_the_descriptor_travels_in_vectors_under_the_embedder_with_the_agreed_dimensions():
    from consumer import descriptor

    assert descriptor.DESCRIPTOR_DIMENSIONS == DESCRIPTOR_DIMENSIONS
    vector = [0.0625] * DESCRIPTOR_DIMENSIONS
    doc = to_document(event(), SourceObject(size=10), FEATURES, DerivedKeys.of("p/", "images", "raw/a.jpg"),
                      ProcessingRun("2026-01-01T00:00:02.000Z", 1.0), tuple(vector))
    assert doc["_vectors"] == {EMBEDDER: vector} and "_vectors" not in FIELDS


# --- the fields the views count with facets -------------------------------------------------------

def test_size_bins_are_fixed_ten_per_decade_and_exact_at_their_edges():
    from imgpipe.document import SIZE_BIN_EDGES_KB, size_bin_kb

    assert len(SIZE_BIN_EDGES_KB) == 101 and SIZE_BIN_EDGES_KB[:4] == (0.0, 0.01, 0.0125, 0.016)
    assert list(SIZE_BIN_EDGES_KB) == sorted(set(SIZE_BIN_EDGES_KB))
    assert size_bin_kb(1023) == 0.8 and size_bin_kb(1024) == 1.0  # 1 KiB is the edge itself
    assert size_bin_kb(1279) == 1.0 and size_bin_kb(1280) == 1.25  # 1.25 KiB = 1280 bytes
    assert size_bin_kb(3225) == 2.5 and size_bin_kb(3226) == 3.15  # 3.15 KiB = 3225.6 bytes
    assert size_bin_kb(0) == 0.0 and size_bin_kb(10) == 0.0 and size_bin_kb(11) == 0.01
    assert size_bin_kb(50 * 1024 * 1024) == 50_000.0
    assert size_bin_kb(10 ** 15) == SIZE_BIN_EDGES_KB[-1]  # the last bin is open above


def test_the_document_carries_its_size_bin_and_processing_hour_last():
    from fixtures.documents import sample_documents
    from imgpipe.document import FIELDS, hour_of, size_bin_kb

    assert list(FIELDS)[-3:] == ["processed_hour", "frames", "text_chars"]
    for doc in sample_documents(50, awkward=False):
        assert doc["size_bin_kb"] == size_bin_kb(doc["size_bytes"])
        assert doc["size_bin_kb"] * 1024 <= doc["size_bytes"]
        assert doc["processed_hour"] == int(doc["processed_at"][11:13])
    assert hour_of("2026-11-25T23:30:00+02:00") == 21 and hour_of("2026-11-25T05:00:00") == 5
    assert hour_of("not a time") is None
