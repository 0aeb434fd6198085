"""The consumer fleet's shape on the local stack: consumers on three "hosts" (each its own process,
worker pool and metrics port) join one group through the broker's authenticated listener
(SASL_PLAINTEXT with SCRAM-SHA-512 on 127.0.0.1, the local twin of the AWS host's SASL_SSL one),
one is killed with SIGKILL mid-drain (half the events are produced after it died), and every
image still ends indexed exactly once.
The listener also refuses a wrong password and a client that does not authenticate.
"""
from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request

import pytest

from imgpipe import kafka, meili
from stack.services import Kafka
from tests.helpers import all_documents, encode, gradient_pattern, produce, start_script, upload, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOSTS = 3
WORKERS_PER_HOST = 1
# The topic has at least one partition per worker process of the whole fleet (as on AWS).
PARTITIONS = 6
IMAGES = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def document_count(settings) -> int:
    try:
        return meili.document_count(settings, settings.meili_index)
    except meili.MeiliError:
        return 0


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return ""


@pytest.fixture
def fleet_settings(stack, settings):
    """The test's settings as a fleet host has them: Kafka through the SASL listener as the SCRAM
    user, a topic of PARTITIONS partitions, and a short session timeout so the group notices the
    killed member in seconds."""
    broker = Kafka(stack)
    sasl = broker.sasl_settings()
    topic = f"{settings.kafka_topic}-fleet"
    host_side = settings.with_overrides(kafka_topic=topic, kafka_topic_partitions=PARTITIONS)
    kafka.ensure_topics(host_side, [topic])
    fleet = host_side.with_overrides(
        kafka_bootstrap_servers=sasl.kafka_bootstrap_servers,
        kafka_client_config={**sasl.kafka_client_config, "session.timeout.ms": "6000",
                             "heartbeat.interval.ms": "1000"})
    yield host_side, fleet
    try:
        kafka.delete_topics(host_side, [topic], timeout=15)
    except Exception:  # clean-up only
        pass


def test_three_hosts_in_one_group_over_sasl_one_killed_every_image_indexed_once(fleet_settings, tmp_path):
    host_side, fleet = fleet_settings
    assert fleet.kafka_client_config["security.protocol"] == "SASL_PLAINTEXT"
    assert fleet.kafka_client_config["sasl.mechanisms"] == "SCRAM-SHA-512"
    keys = upload(host_side, {f"img-{i:03d}.jpg": encode(gradient_pattern(320, 240, seed=i), ".jpg")
                              for i in range(IMAGES)})
    # The producer runs on the main host and uses the loopback listener, as on AWS. Half the events
    # now, half once a host is dead: the fleet cannot finish before the kill (60 small images took
    # a fleet under a second once), and the dead host's partitions hold events that the survivors
    # must take over.
    first, rest = keys[:IMAGES // 2], keys[IMAGES // 2:]
    produce(host_side, first)

    ports = [free_port() for _ in range(HOSTS)]
    args = ["--workers", str(WORKERS_PER_HOST), "--batch-size", "4", "--no-progress", "--status-interval", "1",
            "--max-idle-seconds", "20"]
    hosts = [start_script("consumer/image_consumer.py", [*args, "--metrics-port", str(port),
                                                         "--summary-json", str(tmp_path / f"host{i}.json")],
                          fleet, tmp_path / f"host{i}.log")
             for i, port in enumerate(ports)]
    try:
        # Every host serves its own metrics and has joined: its partitions are assigned.
        wait_for(lambda: all("imgpipe_consumer_batches" in scrape(p) for p in ports), 120, "each host's metrics")
        wait_for(lambda: all("assigned" in (tmp_path / f"host{i}.log").read_text() for i in range(HOSTS)), 120,
                 "each host's partitions")
        wait_for(lambda: document_count(host_side) >= 8, 180, "the first batches", interval=0.1)
        victim = hosts[1]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        indexed_before_the_kill = document_count(host_side)
        assert indexed_before_the_kill <= len(first)
        produce(host_side, rest)
        for i in (0, 2):
            hosts[i].wait(timeout=300)
            log = (tmp_path / f"host{i}.log").read_text(errors="replace")
            assert hosts[i].returncode == 0, log[-3000:]
    finally:
        for proc in hosts:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    docs = all_documents(host_side)
    assert len(docs) == IMAGES
    assert sorted(d["key"] for d in docs) == sorted(keys)  # every image, each once
    assert len({d["id"] for d in docs}) == IMAGES
    # The two survivors indexed (at least) everything that was not indexed when the third died,
    # including its uncommitted partitions: the group moved them over.
    survivors = [json.loads((tmp_path / f"host{i}.json").read_text()) for i in (0, 2)]
    assert sum(s["indexed"] for s in survivors) >= IMAGES - indexed_before_the_kill


def _client_errors(settings, seconds: float = 8.0) -> list[tuple[str, str]]:
    """What a consumer with these settings is told by the broker within `seconds`."""
    from confluent_kafka import Consumer

    errors: list[tuple[str, str]] = []
    config = kafka.consumer_config(settings, f"{settings.kafka_consumer_group}-auth",
                                   error_cb=lambda e: errors.append((e.name(), e.str())))
    consumer = Consumer(config)
    try:
        consumer.subscribe([settings.kafka_topic])
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not errors:
            message = consumer.poll(0.5)
            assert message is None or message.error(), "a message was read without authenticating"
    finally:
        consumer.close()
    return errors


def test_the_sasl_listener_refuses_a_wrong_password_and_lets_the_right_one_in(stack, settings):
    sasl = Kafka(stack).sasl_settings().with_overrides(kafka_topic=settings.kafka_topic)
    # The right password: metadata of the test's topic through the SASL listener.
    assert settings.kafka_topic in kafka.list_topics(sasl, timeout=15).topics
    wrong = sasl.with_overrides(kafka_client_config={**sasl.kafka_client_config, "sasl.password": "not-the-password"})
    errors = _client_errors(wrong)
    assert errors and errors[0][0] == "_AUTHENTICATION", errors
    assert "invalid credentials" in errors[0][1] and "SCRAM-SHA-512" in errors[0][1]
    with pytest.raises(kafka.KafkaError):
        kafka.list_topics(wrong, timeout=5)


def test_the_sasl_listener_refuses_a_client_that_does_not_authenticate(stack, settings):
    plain = settings.with_overrides(kafka_bootstrap_servers=Kafka(stack).sasl_settings().kafka_bootstrap_servers,
                                    kafka_client_config={})
    with pytest.raises(kafka.KafkaError):
        kafka.list_topics(plain, timeout=5)
