"""S3 Event Notifications as SQS delivers them -> image events: keys decoded exactly, sequencers
kept, the later event of a key winning, test events and malformed bodies told apart."""
from __future__ import annotations

import json
from urllib.parse import quote_plus

import pytest

from fixtures.keys import CSV_BREAKING_KEYS, FILE_SAFE_AWKWARD_KEYS
from imgpipe.events import ImageEvent, parse_event
from producer.notifications import MalformedNotification, latest_per_key, parse_notification


def record(name="ObjectCreated:Put", key="raw/a.jpg", sequencer="0055AED6DCD90281E5", encode=True, **obj):
    """One record shaped like AWS's (eventVersion 2.1): the key URL-encoded, + for spaces."""
    body = {"key": quote_plus(key) if encode else key, "size": 1024, "eTag": "d41d8cd98f00b204e9800998ecf8427e",
            "sequencer": sequencer, **obj}
    if sequencer is None:
        del body["sequencer"]
    if name.startswith("ObjectRemoved"):
        body.pop("size"), body.pop("eTag")
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "eu-west-1",
            "eventTime": "2026-05-01T12:30:15.250Z", "eventName": name,
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "imgpipe-producer",
                   "bucket": {"name": "images", "arn": "arn:aws:s3:::images"}, "object": body}}


def body(*records) -> str:
    return json.dumps({"Records": list(records)})


@pytest.mark.parametrize("key", [*FILE_SAFE_AWKWARD_KEYS, *CSV_BREAKING_KEYS, "raw/a+b c.jpg", "raw/100%2B.jpg"])
def test_keys_are_decoded_exactly(key):
    [event] = parse_notification(body(record(key=key))).events
    assert event.key.encode("utf-8") == key.encode("utf-8")


def test_plus_is_a_space_and_percent_2b_a_plus():
    [event] = parse_notification(body(record(key="raw/a+b%2Bc.jpg", encode=False))).events
    assert event.key == "raw/a b+c.jpg"


def test_a_creation_is_an_upsert_with_size_etag_time_and_sequencer():
    [event] = parse_notification(body(record())).events
    assert event == ImageEvent(bucket="images", key="raw/a.jpg", size=1024, etag="d41d8cd98f00b204e9800998ecf8427e",
                               last_modified="2026-05-01T12:30:15.250Z", event_time="2026-05-01T12:30:15.250Z",
                               sequencer="0055AED6DCD90281E5")
    assert parse_event(event.to_json()) == event


@pytest.mark.parametrize("name", ["ObjectRemoved:Delete", "ObjectRemoved:DeleteMarkerCreated",
                                  "LifecycleExpiration:Delete", "s3:ObjectRemoved:Delete"])
def test_a_removal_is_a_delete_with_what_a_consumer_needs(name):
    [event] = parse_notification(body(record(name=name, key="raw/gone cat.jpg"))).events
    assert event == ImageEvent.deletion("images", "raw/gone cat.jpg", "2026-05-01T12:30:15.250Z", "0055AED6DCD90281E5")


def test_other_events_are_skipped_and_the_test_event_recognised():
    notification = parse_notification(body(record(name="ObjectTagging:Put"), record(name="ObjectCreated:Copy")))
    assert [e.action for e in notification.events] == ["upsert"] and len(notification.skipped) == 1
    test = parse_notification(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent",
                                          "Time": "2026-05-01T12:30:15.250Z", "Bucket": "images"}))
    assert test.test_event and test.events == []


def test_an_sns_envelope_is_unwrapped():
    envelope = json.dumps({"Type": "Notification", "MessageId": "m1", "Message": body(record(key="raw/x y.png"))})
    assert [e.key for e in parse_notification(envelope).events] == ["raw/x y.png"]


@pytest.mark.parametrize("text, reason", [
    ("not json\n{", "not JSON"),
    ("[1, 2]", "JSON list"),
    ('{"Records": []}', "no Records"),
    (body({"eventName": "ObjectCreated:Put"}), "lacks s3.bucket.name"),
    (body(record(key="raw/%FF.jpg", encode=False)), "not URL-encoded UTF-8"),
    (body(record(sequencer="not-hex")), "not hexadecimal"),
    (body(record(size="big")), "not a byte count"),
    (body({**record(), "eventTime": "yesterday"}), "not ISO-8601"),
    (body({**record(), "eventName": None}), "no eventName"),
])
def test_malformed_bodies_are_refused_with_a_reason(text, reason):
    with pytest.raises(MalformedNotification, match=reason):
        parse_notification(text)


def test_within_a_batch_the_later_sequencer_of_a_key_wins():
    events = [parse_notification(body(r)).events[0] for r in (
        record(key="raw/a.jpg", sequencer="0055AED6DCD90281E5"),
        record(name="ObjectRemoved:Delete", key="raw/a.jpg", sequencer="0055AED6DCD90281F0"),
        record(key="raw/b.jpg", sequencer="0055AED6DCD90281E4"),
        record(key="raw/a.jpg", sequencer="0055AED6DCD90281E6"),
        record(key="raw/c.jpg", sequencer=None),
        record(key="raw/c.jpg", sequencer=None),
    )]
    # a's delete (…F0) beats both of its creations; b stands alone; unordered c's both stay.
    assert latest_per_key(events) == [1, 1, 2, 1, 4, 5]


def test_versitygw_keys_are_taken_as_they_are_not_url_decoded():
    body = json.dumps({"Records": [{"eventName": "s3:ObjectCreated:Put", "eventTime": "2026-12-03T10:15:07Z",
                                    "s3": {"bucket": {"name": "images"},
                                           "object": {"key": "raw/a b+c %20.jpg", "size": 5, "sequencer": "A"}}}]})
    assert parse_notification(body, url_encoded_keys=False).events[0].key == "raw/a b+c %20.jpg"
    assert parse_notification(body).events[0].key == "raw/a b c  .jpg"


def test_a_whole_second_event_time_is_refined_by_the_kafka_create_time_in_that_second():
    from producer.topic_mode import refined_event_time

    created = (1, 1796292907901)  # 2026-12-03T10:15:07.901Z
    assert refined_event_time("2026-12-03T10:15:07.000Z", created) == "2026-12-03T10:15:07.901Z"
    assert refined_event_time("2026-12-03T10:15:05.000Z", created) == "2026-12-03T10:15:05.000Z"  # not that second
    assert refined_event_time("2026-12-03T10:15:07.250Z", created) == "2026-12-03T10:15:07.250Z"  # has millis
    assert refined_event_time("2026-12-03T10:15:07.000Z", (0, -1)) == "2026-12-03T10:15:07.000Z"  # no timestamp
