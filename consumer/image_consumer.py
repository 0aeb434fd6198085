#!/usr/bin/env python3
"""Consume image events, process each image with OpenCV, store derived images in S3 and index a
metadata document per image in MeiliSearch. Broken inputs go to the dead-letter topic.

Offsets are committed only after a message's document is indexed (task succeeded) and its dead
letter or its announcement on KAFKA_INDEXED_TOPIC is acknowledged: at-least-once delivery, no
duplicates in the index. Run several processes with the same KAFKA_CONSUMER_GROUP to share the
topic's partitions.

Settings come from the environment and .env: KAFKA_BOOTSTRAP_SERVERS, KAFKA_TOPIC,
KAFKA_DEAD_LETTER_TOPIC, KAFKA_INDEXED_TOPIC, KAFKA_CONSUMER_GROUP, S3_*, MEILI_*, CONSUMER_*, MAX_*,
THUMBNAIL_SIZE, and the per-image budgets PROCESSING_TIMEOUT_SECONDS, MAX_DECODE_BYTES, WORKER_MEMORY_MB.
No message or object can stop it: each ends indexed, dead-lettered with a reason, or retried.
SIGTERM or Ctrl-C stops polling, finishes the messages already polled (each indexed or
dead-lettered) and commits them; a second one exits at once, and what was in flight is
delivered again. With --max-idle-seconds it exits once nothing is in flight and every assigned
partition is committed to its end; a fetch that goes quiet with messages left is a stall, logged
and restarted.

Exit status: 0 stopped cleanly, 1 a service failed at start-up, 2 usage or settings error (also a
MeiliSearch index keyed by another field, an invalid index name, a refused key, a missing bucket),
130 stopped by a second signal.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from imgpipe import cli
from imgpipe.retry import Stopped
from imgpipe.settings import Settings, load_settings

from consumer.stats import Stats

log = logging.getLogger("consumer")

# Command-line option (argparse dest) -> the setting it overrides.
OPTION_SETTINGS = {"workers": "consumer_workers", "batch_size": "consumer_batch_size",
                   "batch_ms": "consumer_batch_ms", "group": "kafka_consumer_group", "topic": "kafka_topic",
                   "index": "meili_index", "metrics_port": "metrics_port"}


def build_parser():
    p = cli.parser("consumer/image_consumer.py", __doc__, [
        "python consumer/image_consumer.py                          # run until stopped",
        "python consumer/image_consumer.py --max-idle-seconds 10    # drain the topic, then exit",
        "python consumer/image_consumer.py --workers 4 --batch-size 500",
        "python consumer/image_consumer.py --group reindex-2026 --summary-json out/consumer.json",
        "python consumer/image_consumer.py --metrics-port 9464    # Prometheus metrics on 127.0.0.1:9464"])
    p.add_argument("--workers", type=int, help="processing worker processes (env CONSUMER_WORKERS; 0 = one per core)")
    p.add_argument("--batch-size", type=int, help="messages per batch at most (env CONSUMER_BATCH_SIZE)")
    p.add_argument("--batch-ms", type=int, help="a trickle's batch waits at most this long to fill; under a backlog "
                   "batches collect for a second (env CONSUMER_BATCH_MS)")
    p.add_argument("--group", help="consumer group id (env KAFKA_CONSUMER_GROUP)")
    p.add_argument("--topic", help="topic to consume (env KAFKA_TOPIC)")
    p.add_argument("--index", help="MeiliSearch index (env MEILI_INDEX)")
    p.add_argument("--max-idle-seconds", type=float, metavar="S",
                   help="exit once no message has arrived for S seconds and nothing is left to consume (batch runs)")
    p.add_argument("--status-interval", type=float, default=10.0, metavar="S",
                   help="seconds between status lines")
    p.add_argument("--summary-json", type=Path, help="also write the final summary to this JSON file")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics on http://127.0.0.1:PORT/metrics (env METRICS_PORT; 0 = off)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when stderr is a terminal)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def install_signal_handlers(stop) -> None:
    def handle(signum, _frame):
        if stop.is_set():
            print("second signal: exiting now (the messages in flight are not committed)", file=sys.stderr)
            os._exit(cli.EXIT_INTERRUPTED)
        print(f"{signal.Signals(signum).name}: finishing the messages already polled, then stopping", file=sys.stderr)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def consume(settings: Settings, workers: int, stop: threading.Event, metrics, max_idle_seconds: float | None,
            status_interval: float, on_progress) -> Stats:
    """Build the loop's collaborators, run it until it stops, and close them."""
    # Images are decoded only in the processing pool's worker processes (consumer/workers.py),
    # each of which applies the decoder limits before it loads OpenCV.
    from concurrent.futures import ThreadPoolExecutor

    from imgpipe import kafka, retry, s3
    from imgpipe.deadletters import DeadLetterWriter

    from consumer.announcer import IndexedAnnouncer
    from consumer.handler import ImageHandler
    from consumer.indexer import Indexer
    from consumer.loop import IO_THREADS_PER_WORKER, ImageConsumerLoop
    from consumer.storage import ObjectStore
    from consumer.workers import ProcessingPool

    # Started first: the workers spend their start-up (interpreter, OpenCV, a warm-up image:
    # about half a second of CPU each) while this process checks the topics, the bucket and the
    # index and joins its group, instead of after (the first image waited for them).
    processing = ProcessingPool(settings, workers)
    try:
        kafka.ensure_topics(settings, [topic for topic in (settings.kafka_topic, settings.kafka_dead_letter_topic,
                                                           settings.kafka_indexed_topic) if topic])
        threads = workers * IO_THREADS_PER_WORKER
        client = s3.client(settings, pool_size=threads + 4)
        store = ObjectStore(client, settings.s3_bucket, stop,
                            s3.FastObjects(settings, client) if settings.s3_fast_path else None)
        store.check_output_bucket()
        indexer = Indexer(settings, stop)
        indexer.ensure_index()
        producer = kafka.producer(settings, **{"linger.ms": 5})  # dead letters and announcements
        dead_letters = DeadLetterWriter(settings, stop, producer)
        consumer = kafka.consumer(settings, **{"max.poll.interval.ms": 900_000})
    except BaseException:  # a failed check (a missing bucket, say): nothing to finish, stop the workers now
        processing.close(wait=False)
        raise
    stats = Stats()
    if metrics is not None:
        retry.retry_observers.append(metrics.retried)
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="image") as pool:
            loop = ImageConsumerLoop(settings, consumer, pool, ImageHandler(settings, store, processing), indexer,
                                     dead_letters, IndexedAnnouncer(settings, stop, producer), stop, stats=stats,
                                     metrics=metrics, max_idle_seconds=max_idle_seconds,
                                     status_interval=status_interval, on_progress=on_progress)
            return loop.run()
    finally:
        processing.close(wait=not stop.is_set())
        producer.flush(10)
        consumer.close()  # leaves the group at once, so partitions move without waiting
        if metrics is not None and metrics.retried in retry.retry_observers:
            retry.retry_observers.remove(metrics.retried)
        stats.worker_peak_rss_mb = processing.peak_worker_rss_mb
        stats.worker_cpu_seconds = processing.cpu_seconds
        stats.dead_letters_minimal = dead_letters.counts.minimal
        stats.dead_letters_refused = dead_letters.counts.refused


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)

    def body() -> int:
        # Checked as the environment is: a bad option is named with the variable behind it.
        settings = load_settings(require_meili_key=True).with_options(args, OPTION_SETTINGS)
        workers = settings.consumer_workers or os.cpu_count() or 1

        metrics = None
        if settings.metrics_port:
            from imgpipe.metrics import ConsumerMetrics, serve

            metrics = ConsumerMetrics()
            serve(metrics.registry, settings.metrics_port)
        stop = threading.Event()
        install_signal_handlers(stop)
        bar = cli.progress(None, "images", unit="img", enabled=args.progress)
        log.info("consuming %s as group %s with %d worker(s); indexing into %s", settings.kafka_topic,
                 settings.kafka_consumer_group, workers, settings.meili_index)
        try:
            stats = consume(settings, workers, stop, metrics, args.max_idle_seconds, args.status_interval, bar.update)
        except Stopped:
            # Stopped while a service was still down during start-up: nothing was consumed.
            print("consumer: stopped before start-up finished (a service was unreachable)", file=sys.stderr)
            return cli.EXIT_OK
        finally:
            bar.close()
        summary = stats.as_dict()
        print(f"consumer: {stats.line()}; {summary['seconds']:.1f} s"
              + (f"; latency p50 {summary['latency_p50_s']:.2f} s, p95 {summary['latency_p95_s']:.2f} s"
                 if summary["latency_p50_s"] is not None else "")
              + "".join(f"\n  dead-lettered at {stage}: {n}" for stage, n in sorted(stats.dead_letter_reasons.items()))
              + (f"\n  dead letters written without the original key and value (refused by the broker): "
                 f"{stats.dead_letters_minimal}" if stats.dead_letters_minimal else "")
              + (f"\n  dead letters the broker refused altogether (originals stay in {settings.kafka_topic}): "
                 f"{stats.dead_letters_refused}" if stats.dead_letters_refused else ""),
              file=sys.stderr)
        cli.write_summary_json(args.summary_json, summary)
        return cli.EXIT_OK

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
