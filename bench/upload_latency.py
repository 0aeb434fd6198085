"""Upload latency: object PUT -> searchable, through the event-driven producer (S3 Event
Notifications on SQS), at a steady upload rate.

Only moto delivers S3 notifications locally, so for this figure the bucket and the queue live on
a moto server started for the run (its S3 is slower than the stack's versitygw, which the
figure's detail says). A consumer waits on an empty topic, the producer long-polls the queue,
and this process uploads the images at the given rate. The consumer measures each document's
latency from its event_time, which in this mode is S3's eventTime: when S3 finished the PUT.
"""
from __future__ import annotations

import mimetypes
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from fixtures.moto import moto_server, notify_queue, sqs_environment
from imgpipe import kafka, s3
from imgpipe.settings import Settings

from bench.pipeline import (BenchError, RunNames, _read_json, _tail, _wait_for_assignment, check_consumed,
                            consumer_args, prepare_index, start_script)


@contextmanager
def _environment(extra: dict[str, str]):
    """These variables in this process's environment (children inherit them) for the block only."""
    saved = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _upload_paced(settings: Settings, items: list[tuple[str, bytes]], rate: float) -> float:
    """PUT the items at `rate` per second (a few threads, each PUT started on schedule);
    returns the seconds it took."""
    client = s3.client(settings)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = []
        for i, (key, data) in enumerate(items):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
            futures.append(pool.submit(s3.put, client, settings.s3_bucket, settings.s3_raw_prefix + key, data,
                                       content_type))
        for future in futures:
            future.result()
    return time.monotonic() - started


def _stop(process: subprocess.Popen, log_path: Path, what: str, timeout: float) -> None:
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"the {what} did not stop within {timeout:.0f} s; see {log_path}") from None
    if code != 0:
        raise BenchError(f"the {what} exited with status {code}:\n{_tail(log_path)}")


def upload_latency_run(base: Settings, names: RunNames, step: str, workers: int, rate: float,
                       items: list[tuple[str, bytes]], max_idle: float, work: Path) -> dict:
    """The consumer's summary (latencies: S3 PUT -> index task succeeded) plus the producer's."""
    with moto_server(work / f"{step}-moto.log") as moto_url, _environment(sqs_environment(moto_url)):
        settings = names.settings(base, step).with_overrides(s3_endpoint_url=moto_url,
                                                             s3_bucket=f"bench-{names.run_id}")
        queue = notify_queue(settings, f"bench-{names.run_id}-{step}", settings.s3_raw_prefix)
        kafka.ensure_topics(settings, [settings.kafka_topic, settings.kafka_dead_letter_topic])
        prepare_index(settings)
        consumer_summary, consumer_log = work / f"{step}-consumer.json", work / f"{step}-consumer.log"
        producer_summary, producer_log = work / f"{step}-producer.json", work / f"{step}-producer.log"
        consumer = start_script("consumer/image_consumer.py", consumer_args(workers, max_idle, consumer_summary),
                                settings, consumer_log)
        producer = None
        try:
            _wait_for_assignment(consumer, consumer_log, settings.kafka_topic, timeout=120)
            producer = start_script("producer/image_producer.py",
                                    ["--no-progress", "--sqs-queue-url", queue.url, "--max-idle-seconds",
                                     str(max_idle), "--summary-json", str(producer_summary)], settings, producer_log)
            upload_seconds = _upload_paced(settings, items, rate)
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
        summary["put_to_kafka"] = put_to_kafka(settings)
        return summary


def put_to_kafka(settings: Settings) -> dict:
    """The first leg of the latency, per event: S3's eventTime -> the producer handing the event to
    Kafka (the message's CreateTime): notification delivery, the long poll, parsing."""
    import json
    import statistics

    from consumer.stats import seconds_since

    delays = []
    for message in kafka.read_messages(settings, settings.kafka_topic):
        created = message.timestamp()[1] / 1000
        delay = seconds_since(json.loads(message.value())["event_time"], created)
        if delay is not None:
            delays.append(delay)
    if len(delays) < 2:
        return {"events": len(delays)}
    cuts = statistics.quantiles(delays, n=100, method="inclusive")
    return {"events": len(delays), "p50_s": round(cuts[49], 3), "p95_s": round(cuts[94], 3)}
