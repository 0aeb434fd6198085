"""The notifications producer (`--notifications-topic`) with the local stack's real versitygw, which
publishes its bucket notifications to Kafka: every created or removed object under the prefix
becomes one event with what the bucket holds (the notification's order and sequencer are not
trusted), malformed notifications are dead letters with a reason, and offsets are committed only
after Kafka acknowledged the events."""
from __future__ import annotations

import json

import pytest

from imgpipe import kafka, s3
from imgpipe.events import parse_event
from producer.topic_mode import notifications_group, skip_backlog
from tests.helpers import read_topic, run_script, upload, wait_for

pytestmark = pytest.mark.integration


def produce_from_topic(settings, topic, tmp_path, *extra: str):
    summary = tmp_path / "producer.json"
    result = run_script("producer/image_producer.py",
                        ["--no-progress", "--notifications-topic", topic, "--max-idle-seconds", "3",
                         "--summary-json", str(summary), *extra], settings)
    return result, json.loads(summary.read_text()) if summary.exists() else {}


def events_of(settings, expected: int) -> list:
    return [parse_event(m.value()) for m in read_topic(settings, settings.kafka_topic, expected, timeout=20)]


def record(bucket: str, key: str, name: str = "ObjectCreated:Put", sequencer: str = "1", **object_fields) -> dict:
    """One record as versitygw v1.8.0 writes it (key as it is, second-resolution eventTime)."""
    return {"eventVersion": "2.2", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventTime": "2026-12-03T10:15:07Z", "eventName": f"s3:{name}",
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "webhook-global", "bucket": {"name": bucket},
                   "object": {"key": key, "size": 5, "eTag": '"x"', "sequencer": sequencer, **object_fields}}}


def test_versitygw_notifications_become_events_of_what_the_bucket_holds(settings, tmp_path):
    topic = settings.s3_notifications_topic
    skip_backlog(settings, topic, notifications_group(settings))
    client = s3.client(settings)
    bodies = {"a b+c.jpg": b"one", "ünï/é%20x.png": b"two!", "kept.jpg": b"three", "gone.jpg": b"four",
              "batch-gone.jpg": b"five"}
    keys = upload(settings, bodies)
    prefix = settings.s3_raw_prefix
    client.copy_object(Bucket=settings.s3_bucket, Key=prefix + "copy.jpg",
                       CopySource={"Bucket": settings.s3_bucket, "Key": prefix + "kept.jpg"})
    client.delete_object(Bucket=settings.s3_bucket, Key=prefix + "gone.jpg")
    client.delete_objects(Bucket=settings.s3_bucket, Delete={"Objects": [{"Key": prefix + "batch-gone.jpg"}]})
    outside = settings.s3_processed_prefix + "derived.jpg"
    s3.put(client, settings.s3_bucket, outside, b"derived", "image/jpeg")

    result, summary = produce_from_topic(settings, topic, tmp_path)
    assert result.returncode == 0, result.stderr
    events = events_of(settings, 7)
    last = {e.key: e for e in events}
    assert set(last) == set(keys) | {prefix + "copy.jpg"}, [e.key for e in events]
    for name, body in bodies.items():
        event = last[prefix + name]
        if name.endswith("gone.jpg"):
            assert event.action == "delete", name
        else:  # keys exactly as uploaded (a + and a %20 stay), size and ETag as the bucket says
            assert (event.action, event.size) == ("upsert", len(body)), name
            assert event.etag == s3.head(client, settings.s3_bucket, prefix + name)["ETag"].strip('"')
    assert last[prefix + "copy.jpg"].size == len(b"three")  # versitygw's copy notification says size 0
    assert all(e.sequencer is None for e in events)  # versitygw's counter restarts with it: never forwarded
    assert summary["upserts"] + summary["deletes"] == len(events) and summary["failed"] == 0
    assert summary["ignored"] >= 1  # the derived image, outside the prefix
    group = notifications_group(settings)
    assert kafka.committed_offsets(settings, topic, group) == kafka.end_offsets(settings, topic)


def test_malformed_test_and_outside_records_are_counted_and_the_bucket_decides_the_order(settings, unique, tmp_path):
    topic = f"test-{unique}-notifications"
    kafka.ensure_topics(settings, [topic], partitions=1)
    client = s3.client(settings)
    prefix, bucket = settings.s3_raw_prefix, settings.s3_bucket
    upload(settings, {"there.jpg": b"here I am"})
    notifications = [
        {"Service": "S3", "Event": "s3:TestEvent", "Bucket": "Test-Bucket"},
        # Arrived in the wrong order: the removal of an object that exists, the creation of one that
        # is gone, with sequencers that would say the opposite.
        {"Records": [record(bucket, prefix + "there.jpg", "ObjectCreated:Put", "2")]},
        {"Records": [record(bucket, prefix + "there.jpg", "ObjectRemoved:Delete", "1")]},
        {"Records": [record(bucket, prefix + "never-was.jpg", "ObjectCreated:Put", "3")]},
        {"Records": [record("another-bucket", prefix + "x.jpg")]},
        {"Records": [record(bucket, prefix + "x.jpg", "ObjectTagging:Put")]},
    ]
    producer = kafka.producer(settings)
    for value in notifications:
        producer.produce(topic, value=json.dumps(value).encode())
    for junk in (b"not json", b"\xff\xfe", json.dumps({"Records": [{"eventName": 5}]}).encode()):
        producer.produce(topic, value=junk)
    assert producer.flush(10) == 0

    result, summary = produce_from_topic(settings, topic, tmp_path)
    assert result.returncode == 1, result.stderr  # dead letters: exit 1, as the SQS mode's malformed messages
    events = events_of(settings, 2)
    assert sorted((e.key, e.action, e.size) for e in events) == [  # the image topic has 3 partitions
        (prefix + "never-was.jpg", "delete", 0), (prefix + "there.jpg", "upsert", len(b"here I am"))]
    assert (summary["test_events"], summary["dead_lettered"], summary["superseded"],
                                        summary["corrected"]) == (1, 3, 1, 2)
    assert summary["ignored"] == 2
    letters = read_topic(settings, settings.kafka_dead_letter_topic, 3, timeout=20)
    reasons = sorted(dict(m.headers())["reason"].decode() for m in letters)
    assert reasons == ["a record has no eventName", "the body is not JSON", "the message is not UTF-8 text (byte 0)"]
    assert {dict(m.headers())["stage"] for m in letters} == {b"notification"}
    assert b"not json" in [m.value() for m in letters]
    assert kafka.committed_offsets(settings, topic, notifications_group(settings)) == {0: len(notifications) + 3}
    kafka.delete_topics(settings, [topic])


def test_a_notification_topic_that_is_the_event_topic_is_refused(settings):
    result = run_script("producer/image_producer.py", ["--notifications-topic", settings.kafka_topic], settings)
    assert result.returncode == 2 and "own output" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_what_notifications_miss_while_kafka_is_down_reconcile_finds(stack, settings, tmp_path):
    """versitygw sends each notification once and drops it when Kafka is down; the S3 server keeps
    serving, and producer/reconcile.py repairs the index afterwards."""
    from stack.services import S3, Kafka
    from tests.helpers import all_documents, encode, gradient_pattern

    broker, server = Kafka(stack), S3(stack)
    if broker.pid() is None or server.pid() is None:
        pytest.fail("this test stops Kafka and needs the broker and S3 server the test session manages")
    topic = settings.s3_notifications_topic
    skip_backlog(settings, topic, notifications_group(settings))
    image = {name: encode(gradient_pattern(64, 48, seed=i), ".png") for i, name in enumerate(
        ["kept.png", "deleted-while-down.png", "added-while-down.png", "also-added.png", "after.png"])}
    client, bucket, prefix = s3.client(settings), settings.s3_bucket, settings.s3_raw_prefix

    def settle():
        produced, _ = produce_from_topic(settings, topic, tmp_path)
        assert produced.returncode == 0, produced.stderr
        consumed = run_script("consumer/image_consumer.py", ["--max-idle-seconds", "4", "--no-progress"], settings)
        assert consumed.returncode == 0, consumed.stderr
        return sorted(d["key"].removeprefix(prefix) for d in all_documents(settings))

    upload(settings, {name: image[name] for name in ("kept.png", "deleted-while-down.png")})
    assert settle() == ["deleted-while-down.png", "kept.png"]  # the notifications' own path

    s3_pid = server.pid()
    broker.stop()
    try:
        upload(settings, {name: image[name] for name in ("added-while-down.png", "also-added.png")})
        client.delete_object(Bucket=bucket, Key=prefix + "deleted-while-down.png")
    finally:
        broker.start()
    assert server.pid() == s3_pid  # S3 served throughout: versitygw only logged the lost notifications

    # What reached Kafka did; what did not, the index does not know yet. Whether versitygw's
    # writer still held a notification when the broker came back depends on the outage's length
    # (a short one may lose nothing): either way, after the reconcile the index has every change.
    settle()
    repaired = run_script("producer/reconcile.py", ["--no-progress"], settings)
    assert repaired.returncode == 0, repaired.stderr
    consumed = run_script("consumer/image_consumer.py", ["--max-idle-seconds", "4", "--no-progress"], settings)
    assert consumed.returncode == 0, consumed.stderr
    assert sorted(d["key"].removeprefix(prefix) for d in all_documents(settings)) == [
        "added-while-down.png", "also-added.png", "kept.png"]

    # versitygw's Kafka writer reconnects: notifications work again after the outage.
    upload(settings, {"after.png": image["after.png"]})
    assert settle() == ["added-while-down.png", "after.png", "also-added.png", "kept.png"]


def test_offsets_are_committed_only_after_kafka_acknowledged_the_events(settings, unique, tmp_path):
    """A topic whose broker refuses every event: the notifications are read again and again, never
    committed; with a topic that takes them, the same notifications go through and are committed."""
    import signal
    import time

    from tests.helpers import start_script

    topic = f"test-{unique}-notifications"
    kafka.ensure_topics(settings, [topic], partitions=1)
    tiny = f"{settings.kafka_topic}-tiny"
    kafka.ensure_topics(settings, [tiny], partitions=1, config={"max.message.bytes": "64"})
    keys = upload(settings, {"a.jpg": b"a", "b.jpg": b"b"})
    producer = kafka.producer(settings)
    for key in keys:
        producer.produce(topic, value=json.dumps({"Records": [record(settings.s3_bucket, key)]}).encode())
    assert producer.flush(10) == 0
    group = notifications_group(settings)

    log = tmp_path / "refused.log"
    refused = start_script("producer/image_producer.py", ["--notifications-topic", topic, "--no-progress",
                                                          "--summary-json", str(tmp_path / "refused.json")],
                           settings.with_overrides(kafka_topic=tiny), log)
    wait_for(lambda: log.read_text().count("reading it again") >= 2, 60, "the batch read again")
    refused.send_signal(signal.SIGTERM)
    assert refused.wait(timeout=60) == 1, log.read_text()[-2000:]
    assert json.loads((tmp_path / "refused.json").read_text())["committed"] == 0
    assert kafka.committed_offsets(settings, topic, group)[0] < 0  # nothing committed

    result, summary = produce_from_topic(settings, topic, tmp_path)
    assert result.returncode == 0, result.stderr
    assert summary["upserts"] == 2 and summary["committed"] == 2
    assert sorted(e.key for e in events_of(settings, 2)) == sorted(keys)
    assert kafka.committed_offsets(settings, topic, group) == {0: 2}
    kafka.delete_topics(settings, [topic, tiny])


def test_a_missing_bucket_is_a_settings_mistake(settings, unique):
    result = run_script("producer/image_producer.py", ["--notifications-topic", "--max-idle-seconds", "1"],
                        settings.with_overrides(s3_bucket=f"no-such-bucket-{unique}"))
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr
