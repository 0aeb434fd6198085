"""The event-driven producer (`--sqs-queue-url`) against a moto server holding S3 and SQS, with the
real Kafka and MeiliSearch: uploads become searchable, deletes become delete events, nothing is
listed, and an SQS message goes away only once Kafka has its events.

Only moto delivers S3 notifications locally, so in these tests the bucket lives on moto. The
producer itself gets an S3 endpoint where nothing listens: it must not need S3 at all.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from fixtures.moto import moto_server, notify_queue, queue_depth, sqs_environment
from imgpipe import aws, kafka, s3
from imgpipe.settings import REPO_ROOT
from tests.helpers import all_documents, encode, gradient_pattern, read_topic, run_script, script_env, upload, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NO_S3 = "http://127.0.0.1:9"  # the discard port: any S3 request of the producer would fail
CONSUME = ["--max-idle-seconds", "4", "--status-interval", "2", "--no-progress"]


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory):
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


@pytest.fixture
def notified(settings, unique, moto_url, monkeypatch):
    """Settings whose bucket is on the moto server and notifies a fresh queue of its raw prefix."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", moto_url)
    on_moto = settings.with_overrides(s3_endpoint_url=moto_url, s3_bucket=f"notified-{unique}")
    return on_moto, notify_queue(on_moto, f"events-{unique}", on_moto.s3_raw_prefix, visibility_timeout=2,
                                 max_receive_count=2)


def produce_from_queue(settings, queue, tmp_path, *extra: str):
    """Run the producer on the queue until it has been idle for 3 s; returns (result, summary)."""
    summary = tmp_path / "producer.json"
    result = run_script("producer/image_producer.py",
                        ["--no-progress", "--sqs-queue-url", queue.url, "--wait-seconds", "1",
                         "--max-idle-seconds", "3", "--summary-json", str(summary), *extra],
                        settings.with_overrides(s3_endpoint_url=NO_S3), **sqs_environment(settings.s3_endpoint_url))
    return result, json.loads(summary.read_text()) if summary.exists() else {}


def test_uploads_become_searchable_and_deletes_become_delete_events_without_listing(notified, tmp_path):
    settings, queue = notified
    names = ["a cat.jpg", "1+1=2.png", "100%.jpg", "日本/写真.jpg", "café.png"]
    keys = upload(settings, {name: encode(gradient_pattern(60, 40, seed=i), ".png") for i, name in enumerate(names)})
    s3.put(s3.client(settings), settings.s3_bucket, settings.s3_processed_prefix + "x.jpg", b"x", "image/jpeg")
    # A misconfigured notification fails silently: first check that the queue got them all.
    wait_for(lambda: queue_depth(settings, queue.url) == 1 + len(keys), 30, "the notifications (and the test event)")

    result, summary = produce_from_queue(settings, queue, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (summary["upserts"], summary["deletes"], summary["test_events"], summary["deleted"], summary["malformed"]) \
        == (len(keys), 0, 1, len(keys) + 1, 0)
    assert queue_depth(settings, queue.url) == 0

    consumed = run_script("consumer/image_consumer.py", CONSUME, settings)
    assert f"indexed {len(keys)}, dead-lettered 0" in consumed.stderr, consumed.stderr
    assert sorted(d["key"].encode() for d in all_documents(settings)) == sorted(k.encode() for k in keys)

    s3.client(settings).delete_object(Bucket=settings.s3_bucket, Key=keys[0])
    wait_for(lambda: queue_depth(settings, queue.url) == 1, 30, "the removal notification")
    result, summary = produce_from_queue(settings, queue, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (summary["upserts"], summary["deletes"], summary["deleted"]) == (0, 1, 1)
    messages = read_topic(settings, settings.kafka_topic, expected=len(keys) + 1)
    events = [json.loads(m.value()) for m in messages]
    deletes = [e for e in events if e["action"] == "delete"]
    assert [(e["bucket"], e["key"], e["schema_version"]) for e in deletes] == [(settings.s3_bucket, keys[0], 2)]
    assert deletes[0]["event_time"].endswith("Z") and "sequencer" in deletes[0]
    assert [m.key().decode() for m in messages if json.loads(m.value())["action"] == "delete"] == [keys[0]]
    assert sorted(e["key"] for e in events if e["action"] == "upsert") == sorted(keys)


def test_the_later_sequencer_of_a_key_wins_and_both_messages_are_deleted(notified, tmp_path):
    """Notifications shaped as AWS sends them (moto's carry no sequencer), put on the queue by hand."""
    settings, queue = notified
    key = settings.s3_raw_prefix + "twice changed.jpg"

    def notification(name: str, sequencer: str) -> str:
        return json.dumps({"Records": [{
            "eventVersion": "2.1", "eventSource": "aws:s3", "eventTime": "2026-05-01T12:30:15.250Z",
            "eventName": name, "s3": {"bucket": {"name": settings.s3_bucket},
                                      "object": {"key": key.replace(" ", "+"), "size": 10, "eTag": "e",
                                                 "sequencer": sequencer}}}]})

    sqs = aws.client(settings, "sqs")
    for name, sequencer in (("ObjectRemoved:Delete", "0055AED6DCD90281F0"), ("ObjectCreated:Put", "0055AED6DCD90281E5")):
        with aws.errors("sqs", "sending to", queue.url):
            sqs.send_message(QueueUrl=queue.url, MessageBody=notification(name, sequencer))
    result, summary = produce_from_queue(settings, queue, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (summary["superseded"], summary["deletes"], summary["upserts"], summary["deleted"]) == (1, 1, 0, 3)
    [message] = read_topic(settings, settings.kafka_topic, expected=1)
    assert json.loads(message.value())["action"] == "delete"
    assert json.loads(message.value())["sequencer"] == "0055AED6DCD90281F0"


def test_a_malformed_notification_is_left_to_the_redrive_policy_and_the_rest_goes_on(notified, tmp_path):
    settings, queue = notified
    bad = ["not json\n{", "[1, 2]", '{"Records": [{"eventName": "ObjectCreated:Put"}]}']
    sqs = aws.client(settings, "sqs")
    for text in bad:
        with aws.errors("sqs", "sending to", queue.url):
            sqs.send_message(QueueUrl=queue.url, MessageBody=text)
    keys = upload(settings, {"good.png": encode(gradient_pattern(30, 30), ".png")})

    # Idle long enough for the bad messages to come back twice and then move to the dead-letter queue.
    result, summary = produce_from_queue(settings, queue, tmp_path, "--max-idle-seconds", "6")
    assert result.returncode == 1  # malformed messages are failures, reported, not fatal
    assert summary["upserts"] == 1 and summary["malformed"] >= len(bad)
    warnings = [line for line in result.stderr.splitlines() if "malformed notification" in line]
    assert len(warnings) >= len(bad) and any("'not json\\n{'" in line for line in warnings)
    assert not any(line.startswith("{") for line in result.stderr.splitlines())  # no raw newline got through
    assert [json.loads(m.value())["key"] for m in read_topic(settings, settings.kafka_topic, 1)] == keys

    # Received twice (maxReceiveCount 2), never deleted: the queue moved them to its dead-letter queue.
    wait_for(lambda: queue_depth(settings, queue.dead_letter_url) == len(bad), 30, "the dead-letter queue")
    assert queue_depth(settings, queue.url) == 0
    moved = aws.receive_messages(sqs, queue.dead_letter_url, wait_seconds=1)
    assert sorted(m["Body"] for m in moved) == sorted(bad)


def test_a_message_stays_on_the_queue_until_kafka_acknowledges_its_events(notified, tmp_path):
    settings, queue = notified
    # A topic whose broker refuses any event: every delivery fails, so no message may be deleted.
    tiny = f"{settings.kafka_topic}-tiny"
    kafka.ensure_topics(settings, [tiny], partitions=1, config={"max.message.bytes": "64"})
    try:
        keys = upload(settings, {f"k{i}.png": b"x" for i in range(3)})
        wait_for(lambda: queue_depth(settings, queue.url) == 1 + len(keys), 30, "the notifications")
        result, summary = produce_from_queue(settings, queue, tmp_path, "--topic", tiny)
        assert result.returncode == 1, result.stderr
        assert summary["failed"] >= len(keys) and summary["upserts"] == 0
        assert queue_depth(settings, queue.url) + queue_depth(settings, queue.dead_letter_url) == len(keys)
    finally:
        kafka.delete_topics(settings, [tiny])


def test_sigterm_stops_the_queue_producer_within_a_poll(notified, tmp_path):
    settings, queue = notified
    args = [sys.executable, str(REPO_ROOT / "producer/image_producer.py"), "--no-progress",
            "--sqs-queue-url", queue.url, "--wait-seconds", "5"]
    env = script_env(settings.with_overrides(s3_endpoint_url=NO_S3), **sqs_environment(settings.s3_endpoint_url))
    producer = subprocess.Popen(args, env=env, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: queue_depth(settings, queue.url) == 0, 60, "the test event to be taken off the queue")
    finally:
        producer.send_signal(signal.SIGTERM)
        _, err = producer.communicate(timeout=60)
    assert producer.returncode == 0, err
    assert "producer: received 1 message(s)" in err and "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    (["--watch", "5"], "--watch lists the bucket"),
    (["--key", "raw/x.jpg"], "--key lists the bucket"),
    (["--wait-seconds", "30"], "between 1 and 20"),
])
def test_listing_options_do_not_mix_with_the_queue(settings, extra, message):
    result = run_script("producer/image_producer.py", ["--sqs-queue-url", "http://127.0.0.1:9/q", *extra], settings)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_a_missing_queue_is_one_line_and_exit_2(notified):
    settings, queue = notified
    result = run_script("producer/image_producer.py", ["--sqs-queue-url", queue.url + "-nope"],
                        settings.with_overrides(s3_endpoint_url=NO_S3), **sqs_environment(settings.s3_endpoint_url))
    assert result.returncode == 2, result.stderr
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_a_queue_url_not_on_aws_works_without_aws_endpoint_url_sqs(settings, unique, moto_url, tmp_path, monkeypatch):
    """boto3 sends SQS requests to AWS_ENDPOINT_URL_SQS or AWS, not to the queue URL's host: a queue
    on moto (as on ElasticMQ or LocalStack) is reached at the endpoint its URL names."""
    monkeypatch.delenv("AWS_ENDPOINT_URL_SQS", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    sqs = aws.client(settings, "sqs", moto_url)
    with aws.errors("sqs", "creating a queue", unique):
        url = sqs.create_queue(QueueName=f"plain-{unique}")["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"Records": [{
            "eventName": "ObjectCreated:Put", "eventTime": "2026-05-01T12:30:15.250Z",
            "s3": {"bucket": {"name": settings.s3_bucket},
                   "object": {"key": settings.s3_raw_prefix + "a+cat.jpg", "size": 3, "eTag": "e"}}}]}))
    assert url.startswith(moto_url)
    summary = tmp_path / "producer.json"
    result = run_script("producer/image_producer.py", ["--no-progress", "--sqs-queue-url", url, "--wait-seconds", "1",
                                                       "--max-idle-seconds", "2", "--summary-json", str(summary)],
                        settings.with_overrides(s3_endpoint_url=NO_S3))
    assert result.returncode == 0, result.stderr
    assert json.loads(summary.read_text())["upserts"] == 1
    [message] = read_topic(settings, settings.kafka_topic, expected=1)
    assert json.loads(message.value())["key"] == settings.s3_raw_prefix + "a cat.jpg"


@pytest.mark.parametrize("url, endpoint", [
    ("https://sqs.eu-west-1.amazonaws.com/123456789012/images-events", None),
    ("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q", None),
    ("http://127.0.0.1:9324/000000000000/images-events", "http://127.0.0.1:9324"),  # ElasticMQ
    ("http://sqs.us-east-1.localhost.localstack.cloud:4566/000000000000/q",
     "http://sqs.us-east-1.localhost.localstack.cloud:4566"),
])
def test_the_endpoint_of_a_queue_url(url, endpoint):
    assert aws.queue_endpoint(url) == endpoint
