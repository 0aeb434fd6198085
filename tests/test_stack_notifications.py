"""The local S3 server's bucket notifications: `make up` starts versitygw publishing to
S3_NOTIFICATIONS_TOPIC (one partition, made first); without Kafka at its start versitygw would exit,
so the stack then starts it without notifications and S3 serves anyway."""
from __future__ import annotations

import subprocess

import pytest

from fixtures.moto import free_port
from imgpipe import kafka, s3
from stack import versitygw
from stack.services import S3

pytestmark = pytest.mark.integration

NO_KAFKA = "127.0.0.1:9"  # the discard port: no broker answers there


def test_the_stack_s3_server_publishes_to_the_one_partition_notification_topic(stack):
    server = S3(stack)
    assert server.notifications() == stack.s3_notifications_topic == "s3-notifications"
    command = open(f"/proc/{server.pid()}/cmdline", "rb").read().split(b"\0")
    assert command[command.index(b"--event-kafka-topic") + 1] == stack.s3_notifications_topic.encode()
    assert command[command.index(b"--event-filter") + 1] == str(versitygw.EVENT_FILTER).encode()
    topic = kafka.list_topics(stack, topic=stack.s3_notifications_topic).topics[stack.s3_notifications_topic]
    assert len(topic.partitions) == 1
    assert "notifications to Kafka topic s3-notifications" in server.status().detail


def test_versitygw_itself_exits_when_kafka_does_not_answer_at_its_start(stack, tmp_path):
    """Why the stack checks Kafka first: versitygw v1.8.0 writes a test event when it starts."""
    binary = stack.local_state_dir / "bin" / "versitygw"
    result = subprocess.run([str(binary), "--port", f"127.0.0.1:{free_port()}", "--quiet",
                             *versitygw.notification_flags(NO_KAFKA, "s3-notifications"), "posix", str(tmp_path)],
                            capture_output=True, text=True, timeout=60,
                            env={"ROOT_ACCESS_KEY": "k" * 16, "ROOT_SECRET_KEY": "s" * 30})
    assert result.returncode != 0 and "init bucket event notifications" in result.stdout + result.stderr


def test_without_kafka_at_its_start_the_s3_server_serves_without_notifications(stack, tmp_path, monkeypatch):
    monkeypatch.setenv("VERSITYGW_BINARY", str(stack.local_state_dir / "bin" / "versitygw"))
    alone = stack.with_overrides(kafka_bootstrap_servers=NO_KAFKA, local_state_dir=tmp_path,
                                 s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    server = S3(alone)
    status = server.start()
    try:
        assert status.healthy and server.pid() is not None
        assert server.notifications().startswith("off: Kafka did not answer at 127.0.0.1:9")
        assert "notifications: off" in server.status().detail
        client = s3.client(alone)
        s3.put(client, alone.s3_bucket, "raw/served.jpg", b"served anyway", "image/jpeg")
        assert s3.fetch(client, alone.s3_bucket, "raw/served.jpg").data == b"served anyway"

        # Kafka answers again: `make up` (start) restarts the server with its notifications on.
        first = server.pid()
        server = S3(alone.with_overrides(kafka_bootstrap_servers=stack.kafka_bootstrap_servers))
        assert server.start().healthy and server.pid() != first
        assert server.notifications() == stack.s3_notifications_topic
        assert s3.fetch(client, alone.s3_bucket, "raw/served.jpg").data == b"served anyway"
    finally:
        server.stop()
