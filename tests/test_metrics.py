"""The consumer's Prometheus metrics, scraped from a running consumer, agree with its own counts."""
from __future__ import annotations

import json
import signal
import socket
import urllib.request

import pytest

from fixtures.images import encode, gradient_pattern
from imgpipe import kafka
from tests.helpers import run_script, start_script, upload, wait_for

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return values


def test_a_running_consumer_serves_metrics_that_match_its_counts(settings, tmp_path):
    keys = upload(settings, {f"m-{i}.jpg": encode(gradient_pattern(200, 150, seed=i), ".jpg") for i in range(7)})
    assert run_script("producer/image_producer.py", ["--no-progress"], settings).returncode == 0
    producer = kafka.producer(settings)
    for junk in (b"not json", b"[1]", None):
        producer.produce(settings.kafka_topic, key=b"junk", value=junk)
    assert producer.flush(30) == 0

    port = free_port()
    summary = tmp_path / "summary.json"
    log = tmp_path / "consumer.log"
    proc = start_script("consumer/image_consumer.py", ["--no-progress", "--metrics-port", str(port),
                                                       "--status-interval", "1", "--summary-json", str(summary)],
                        settings, log)
    try:
        wait_for(lambda: _finished(port) >= len(keys) + 3, 120, "the consumer to finish the topic")
        wait_for(lambda: any(k.startswith("imgpipe_consumer_lag_messages{") for k in scrape(port)), 30,
                 "the lag gauge")
        metrics = scrape(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()[-2000:]
    counts = json.loads(summary.read_text())
    assert metrics["imgpipe_consumer_messages_total"] == counts["consumed"] == len(keys) + 3
    assert metrics["imgpipe_consumer_documents_indexed_total"] == counts["indexed"] == len(keys)
    assert metrics["imgpipe_consumer_dead_letters_total{stage=validate}"] == counts["dead_lettered"] == 3
    assert metrics["imgpipe_consumer_dead_letters_total{stage=decode}"] == 0
    assert metrics["imgpipe_consumer_processing_seconds_count"] == len(keys)
    assert metrics["imgpipe_consumer_produce_to_searchable_seconds_count"] == len(keys)
    assert metrics["imgpipe_consumer_images_in_flight"] == 0
    assert metrics["imgpipe_consumer_batches_total"] == counts["batches"]
    assert sum(v for k, v in metrics.items() if k.startswith("imgpipe_consumer_lag_messages{")) == 0
    assert "imgpipe_consumer_retries_total{service=s3}" in metrics


def _finished(port: int) -> float:
    try:
        values = scrape(port)
    except OSError:
        return 0
    return values.get("imgpipe_consumer_documents_indexed_total", 0) + sum(
        v for k, v in values.items() if k.startswith("imgpipe_consumer_dead_letters_total{"))


def test_the_metrics_port_binds_to_loopback_and_a_taken_one_is_one_line(settings, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_script("consumer/image_consumer.py", ["--no-progress", "--metrics-port", str(port),
                                                           "--max-idle-seconds", "1"], settings, timeout=60)
    assert result.returncode == 2 and f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_producer_counts_acknowledged_events_by_action(settings, tmp_path):
    upload(settings, {f"p-{i}.jpg": b"\xff\xd8\xff bytes" for i in range(4)})
    port = free_port()
    log = tmp_path / "producer.log"
    proc = start_script("producer/image_producer.py", ["--no-progress", "--watch", "1", "--metrics-port", str(port)],
                        settings, log)
    try:
        wait_for(lambda: _safe(port).get("imgpipe_producer_events_total{action=upsert}", 0) >= 4, 60,
                 "the producer's first pass")
        metrics = scrape(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert metrics["imgpipe_producer_events_total{action=upsert}"] == 4
    assert metrics["imgpipe_producer_events_total{action=delete}"] == 0
    assert metrics["imgpipe_producer_delivery_failures_total"] == 0


def _safe(port: int) -> dict:
    try:
        return scrape(port)
    except OSError:
        return {}
