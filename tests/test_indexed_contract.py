"""The indexed announcement (imgpipe/indexed.py): what the consumer sends and the enrichers read."""
import json

import pytest

from imgpipe.errors import MessageError
from imgpipe.indexed import IndexedImage, parse_indexed


def test_a_document_announcement_round_trips_with_its_version_and_derived_images():
    document = {"id": "abc", "bucket": "images", "key": "raw/ü a.jpg", "etag": "e1", "event_time": "t",
                "thumbnail_key": "processed/thumbnails/abc.jpg", "grayscale_key": "processed/g/abc.jpg",
                "width": 640, "height": 480, "faces": 2}
    announced = IndexedImage.of_document(document, sequencer="00A1")
    assert announced.message_key == "raw/ü a.jpg".encode()
    parsed = parse_indexed(announced.to_json())
    assert parsed == announced
    assert (parsed.etag, parsed.sequencer, parsed.width, parsed.action) == ("e1", "00A1", 640, "upsert")


def test_a_deletion_carries_no_version():
    parsed = parse_indexed(IndexedImage.deletion("abc", "images", "raw/a.jpg", "t").to_json())
    assert (parsed.action, parsed.etag, parsed.thumbnail_key) == ("delete", "", "")


@pytest.mark.parametrize("value, reason", [
    (None, "no value"), (b"\xff", "not JSON"), (b"[]", "not an object"),
    (json.dumps({"schema_version": 9}).encode(), "schema_version"),
    (json.dumps({"schema_version": 1, "id": "a", "bucket": "b", "key": "k"}).encode(), "missing field(s): action"),
    (json.dumps({"schema_version": 1, "id": "a", "bucket": "b", "key": "k", "action": "upsert",
                 "width": "9"}).encode(), "width must be int"),
])
def test_a_bad_announcement_is_refused_with_the_reason(value, reason):
    with pytest.raises(MessageError) as caught:
        parse_indexed(value)
    assert reason in str(caught.value)
