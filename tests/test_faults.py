"""Crashes and outages with real processes and the real stack: nothing lost, nothing duplicated.

Every pass criterion counts documents and messages, not log lines.
"""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from imgpipe import kafka, meili
from stack.services import Kafka, MeiliSearch, S3
from tests.helpers import (all_documents, encode, gradient_pattern, produce, read_topic, run_script, start_script,
                           upload, wait_for)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Small batches and one worker make a run last long enough to be interrupted in the middle.
SLOW = ["--batch-size", "4", "--workers", "1", "--no-progress", "--status-interval", "1"]


def managed(service, what: str):
    """The stack's own service, which this test may stop (not a server someone else runs)."""
    if service.pid() is None:
        pytest.fail(f"this test {what} {service.name} and needs the one the test session manages")
    return service


def put_images(settings, count: int, size=(480, 360)) -> list[str]:
    return upload(settings, {f"img-{i:03d}.jpg": encode(gradient_pattern(*size, seed=i), ".jpg") for i in range(count)})


def document_count(settings) -> int:
    try:
        return meili.document_count(settings, settings.meili_index)
    except meili.MeiliError:  # index not created yet, or MeiliSearch down
        return 0


def assert_exactly(settings, keys: list[str]) -> None:
    docs = all_documents(settings)
    assert sorted(d["key"] for d in docs) == sorted(keys)
    assert len({d["id"] for d in docs}) == len(keys)


def start_and_wait_for_the_first_batches(settings, tmp_path, idle_seconds: str):
    """A slow consumer that ends after `idle_seconds` of quiet, once it indexed a few images."""
    log, summary = tmp_path / "consumer.log", tmp_path / "summary.json"
    proc = start_script("consumer/image_consumer.py",
                        SLOW + ["--max-idle-seconds", idle_seconds, "--summary-json", str(summary)], settings, log)
    wait_for(lambda: document_count(settings) >= 4, 120, "the first batches", interval=0.1)
    return proc, log, summary


def finish(proc, log_path, timeout: float = 180) -> str:
    proc.wait(timeout=timeout)
    text = log_path.read_text(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    return text


def test_kill_9_mid_batch_then_restart_indexes_exactly_m(settings, tmp_path):
    keys = put_images(settings, 64)
    produce(settings)
    log = tmp_path / "consumer.log"
    proc = start_script("consumer/image_consumer.py", SLOW, settings, log)
    wait_for(lambda: document_count(settings) >= 8, 120, "the first batches", interval=0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert document_count(settings) < len(keys), "the consumer finished before it was killed"

    again = run_script("consumer/image_consumer.py", ["--max-idle-seconds", "4", "--no-progress"], settings)
    assert again.returncode == 0, again.stderr
    assert_exactly(settings, keys)


def test_meilisearch_down_for_15_seconds_loses_nothing_and_dead_letters_nothing(stack, settings, tmp_path):
    meili = managed(MeiliSearch(stack), "stops")
    keys = put_images(settings, 40)
    produce(settings)
    proc, log, summary = start_and_wait_for_the_first_batches(settings, tmp_path, "8")
    try:
        meili.stop()
        time.sleep(15)
    finally:
        meili.start()
    finish(proc, log)
    assert_exactly(settings, keys)
    result = json.loads(summary.read_text())
    assert result["dead_lettered"] == 0
    assert read_topic(settings, settings.kafka_dead_letter_topic, expected=1, timeout=3) == []


def test_kafka_restart_while_producing_delivers_every_event_once(stack, settings, tmp_path):
    kafka = managed(Kafka(stack), "restarts")
    tiny = encode(gradient_pattern(16, 16), ".png")
    keys = upload(settings, {f"tiny-{i:03d}.png": tiny for i in range(240)})
    log = tmp_path / "producer.log"
    producer = start_script("producer/image_producer.py", ["--no-progress", "--rate", "60"], settings, log)
    time.sleep(1.5)
    kafka.stop()
    kafka.start()
    producer.wait(timeout=240)
    text = log.read_text()
    assert producer.returncode == 0, text[-3000:]
    assert f"sent {len(keys)}, failed 0" in text

    messages = read_topic(settings, settings.kafka_topic, expected=len(keys), timeout=90)
    assert sorted(json.loads(m.value())["key"] for m in messages) == sorted(keys)  # each exactly once
    consumed = run_script("consumer/image_consumer.py", ["--max-idle-seconds", "4", "--no-progress"], settings)
    assert consumed.returncode == 0, consumed.stderr
    assert_exactly(settings, keys)


def committed_total(settings) -> int:
    return sum(offset for offset in kafka.committed_offsets(settings, settings.kafka_topic).values() if offset >= 0)


def test_s3_down_for_a_while_is_retried_and_nothing_is_committed_past_it(stack, settings, tmp_path):
    server = managed(S3(stack), "stops")
    keys = put_images(settings, 40)
    produce(settings)
    proc, log, summary = start_and_wait_for_the_first_batches(settings, tmp_path, "8")
    try:
        server.stop()  # the objects are files: they are all there when it comes back
        time.sleep(3)
        stalled_docs, stalled_commits = document_count(settings), committed_total(settings)
        time.sleep(5)
        # Stalled, not skipping: no new documents, and no offset committed beyond them.
        assert document_count(settings) == stalled_docs
        assert committed_total(settings) == stalled_commits <= stalled_docs
    finally:
        server.start()
    finish(proc, log)
    assert_exactly(settings, keys)
    assert json.loads(summary.read_text())["dead_lettered"] == 0


def test_sigterm_finishes_the_batch_in_flight_and_a_restart_reprocesses_nothing(settings, tmp_path):
    keys = put_images(settings, 64)
    produce(settings)
    log, first = tmp_path / "consumer.log", tmp_path / "first.json"
    proc = start_script("consumer/image_consumer.py", SLOW + ["--summary-json", str(first)], settings, log)
    wait_for(lambda: document_count(settings) >= 8, 120, "the first batches", interval=0.1)
    proc.send_signal(signal.SIGTERM)
    finish(proc, log, timeout=60)
    before = json.loads(first.read_text())
    # Everything consumed was finished and committed.
    assert before["consumed"] == before["indexed"] < len(keys)
    assert document_count(settings) == before["indexed"] == committed_total(settings)

    second = tmp_path / "second.json"
    again = run_script("consumer/image_consumer.py", ["--max-idle-seconds", "4", "--no-progress",
                                                      "--summary-json", str(second)], settings)
    assert again.returncode == 0, again.stderr
    assert json.loads(second.read_text())["consumed"] == len(keys) - before["consumed"]
    assert_exactly(settings, keys)


def test_two_consumers_one_killed_the_survivor_completes_the_index(settings, tmp_path):
    keys = put_images(settings, 60)
    produce(settings)
    # A short session timeout so the group notices the dead member in seconds, not 45 s.
    fast_group = settings.with_overrides(kafka_client_config={"session.timeout.ms": "6000",
                                                              "heartbeat.interval.ms": "1000"})
    args = SLOW + ["--max-idle-seconds", "20"]
    victim = start_script("consumer/image_consumer.py", args, fast_group, tmp_path / "victim.log")
    survivor_log = tmp_path / "survivor.log"
    survivor = start_script("consumer/image_consumer.py", args, fast_group, survivor_log)
    wait_for(lambda: document_count(settings) >= 8, 120, "the first batches", interval=0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    text = finish(survivor, survivor_log, timeout=240)
    assert "assigned" in text
    assert_exactly(settings, keys)


def test_sigterm_while_meilisearch_is_unreachable_at_start_up_exits_cleanly(settings, tmp_path):
    unreachable = settings.with_overrides(meili_url="http://127.0.0.1:9")  # discard port: nothing listens
    log = tmp_path / "consumer.log"
    proc = start_script("consumer/image_consumer.py", ["--no-progress"], unreachable, log)
    wait_for(lambda: "cannot reach" in log.read_text(), 60, "the retry warning")
    proc.send_signal(signal.SIGTERM)
    text = finish(proc, log, timeout=60)
    assert "stopped before start-up finished" in text and "Traceback" not in text


def test_broker_killed_and_restarted_during_a_drain_every_message_is_committed_when_the_consumer_exits_0(
        stack, settings, tmp_path):
    broker = managed(Kafka(stack), "kills")
    keys = put_images(settings, 60)
    produce(settings)
    proc, log, _ = start_and_wait_for_the_first_batches(settings, tmp_path, "5")
    try:
        pid = broker.pid()
        os.killpg(pid, signal.SIGKILL)  # as a crash or an OOM kill would: no clean shutdown
        wait_for(lambda: broker.pid() is None, 30, "the broker to die", interval=0.1)
        time.sleep(3)
    finally:
        broker.start()
    text = finish(proc, log, timeout=300)
    assert_exactly(settings, keys)
    # Exit 0 means done: every message of the topic committed by the group, none left behind.
    ends = kafka.end_offsets(settings, settings.kafka_topic)
    assert sum(ends.values()) == len(keys)
    assert kafka.committed_offsets(settings, settings.kafka_topic) == ends, text[-3000:]
