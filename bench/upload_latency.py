"""Upload latency: object PUT -> searchable on the local stack's real S3 server, through its bucket
notifications in Kafka and the producer's notifications mode, at a steady upload rate.

versitygw publishes a notification per PUT to S3_NOTIFICATIONS_TOPIC; a consumer waits on an empty
topic, the producer (`--notifications-topic`) reads the notifications, reads each object's state
back (one HEAD) and sends its event, and this process PUTs the images at the given rate with a
plain S3 client. The consumer measures each document's latency from its event_time: versitygw's
eventTime (whole seconds) refined by the notification's Kafka CreateTime, i.e. when the server
finished the PUT. The legs before the consumer are measured here from each PUT's return: PUT ->
notification in Kafka, PUT -> image event in Kafka.
"""
from __future__ import annotations

import json
import mimetypes
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imgpipe import kafka, s3
from imgpipe.settings import Settings

from bench.pipeline import (BenchError, RunNames, _read_json, _tail, _wait_for_assignment, check_consumed,
                            consumer_args, prepare_index, start_script)


def _upload_paced(settings: Settings, items: list[tuple[str, bytes]], rate: float) -> tuple[float, dict[str, float]]:
    """PUT the items at `rate` per second (a few threads, each PUT started on schedule); returns
    the seconds it took and, per key, the wall-clock time its PUT returned."""
    client = s3.client(settings)
    returned: dict[str, float] = {}

    def put(key: str, data: bytes) -> None:
        s3.put(client, settings.s3_bucket, key, data, mimetypes.guess_type(key)[0] or "application/octet-stream")
        returned[key] = time.time()

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = []
        for i, (key, data) in enumerate(items):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(put, settings.s3_raw_prefix + key, data))
        for future in futures:
            future.result()
    return time.monotonic() - started, returned


def _stop(process: subprocess.Popen, log_path: Path, what: str, timeout: float) -> None:
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"the {what} did not stop within {timeout:.0f} s; see {log_path}") from None
    if code != 0:
        raise BenchError(f"the {what} exited with status {code}:\n{_tail(log_path)}")


def notifications_on(settings: Settings) -> None:
    """The local S3 server must be publishing to the notification topic (`make up` starts it so)."""
    from stack.services import S3

    server = S3(settings)
    if not settings.s3_notifications_topic:
        raise BenchError("S3_NOTIFICATIONS_TOPIC is empty: the local S3 server publishes no notifications")
    if server.is_local and server.notifications() != settings.s3_notifications_topic:
        raise BenchError(f"the local S3 server does not publish to {settings.s3_notifications_topic!r} "
                         f"({server.notifications() or 'unknown'}): run `make up`")


def upload_latency_run(base: Settings, names: RunNames, step: str, workers: int, rate: float,
                       items: list[tuple[str, bytes]], max_idle: float, work: Path) -> dict:
    """The consumer's summary (latencies: the server's PUT -> index task succeeded), the producer's,
    and the legs before the consumer."""
    from producer.topic_mode import notifications_group, skip_backlog

    settings = names.settings(base, step, raw_prefix=f"{names.s3_prefix}{step}/raw/")
    notifications_on(settings)
    topic = settings.s3_notifications_topic
    kafka.ensure_topics(settings, [settings.kafka_topic, settings.kafka_dead_letter_topic])
    prepare_index(settings)
    start = skip_backlog(settings, topic, notifications_group(settings))
    consumer_summary, consumer_log = work / f"{step}-consumer.json", work / f"{step}-consumer.log"
    producer_summary, producer_log = work / f"{step}-producer.json", work / f"{step}-producer.log"
    consumer = start_script("consumer/image_consumer.py", consumer_args(workers, max_idle, consumer_summary),
                            settings, consumer_log)
    producer = None
    try:
        _wait_for_assignment(consumer, consumer_log, settings.kafka_topic, timeout=120)
        producer = start_script("producer/image_producer.py",
                                ["--no-progress", "--notifications-topic", topic, "--max-idle-seconds",
                                 str(max_idle), "--summary-json", str(producer_summary)], settings, producer_log)
        # Steady state, as the figure's name says: both processes in their groups before the first PUT.
        _wait_for_assignment(producer, producer_log, topic, timeout=120)
        upload_seconds, returned = _upload_paced(settings, items, rate)
        _stop(producer, producer_log, "producer", timeout=300)
        _stop(consumer, consumer_log, "consumer", timeout=600)
    finally:
        for process in (producer, consumer):
            if process is not None and process.poll() is None:
                process.kill()  # our own children, by their handles
                process.wait()
    summary = _read_json(consumer_summary)
    check_consumed(settings, step, summary, len(items))
    summary["producer"] = _read_json(producer_summary)
    summary["upload_seconds"] = round(upload_seconds, 2)
    summary["put_to_notification"] = _leg(returned, _notification_times(settings, topic, start))
    summary["put_to_event"] = _leg(returned, _event_times(settings))
    return summary


def _notification_times(settings: Settings, topic: str, start: dict[int, int]) -> dict[str, float]:
    """Key -> when the server's notification of it reached Kafka (its CreateTime), for this run's keys."""
    times = {}
    for message in kafka.read_messages(settings, topic, start=start):
        try:
            records = json.loads(message.value())["Records"]
        except (ValueError, KeyError, TypeError):
            continue  # a test event
        for record in records:
            key = record.get("s3", {}).get("object", {}).get("key", "")
            if key.startswith(settings.s3_raw_prefix) and record.get("eventName", "").startswith("s3:ObjectCreated"):
                times.setdefault(key, message.timestamp()[1] / 1000)
    return times


def _event_times(settings: Settings) -> dict[str, float]:
    """Key -> when the producer's event of it reached Kafka (its CreateTime)."""
    return {m.key().decode("utf-8"): m.timestamp()[1] / 1000 for m in kafka.read_messages(settings, settings.kafka_topic)}


def _leg(start: dict[str, float], end: dict[str, float]) -> dict:
    """p50 and p95 of end - start over the keys both have (seconds; clocks of one machine)."""
    delays = sorted(end[key] - start[key] for key in start if key in end)
    if len(delays) < 2:
        return {"events": len(delays)}
    cuts = statistics.quantiles(delays, n=100, method="inclusive")
    return {"events": len(delays), "p50_s": round(cuts[49], 3), "p95_s": round(cuts[94], 3),
            "max_s": round(delays[-1], 3)}
