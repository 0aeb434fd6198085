#!/usr/bin/env python3
"""Consume image events, process each image with OpenCV, store derived images in S3 and index a
metadata document per image in MeiliSearch. Broken inputs go to the dead-letter topic.

Offsets are committed only after a batch is indexed (task succeeded) and its dead letters are
acknowledged: at-least-once delivery, no duplicates in the index. Run several processes with
the same KAFKA_CONSUMER_GROUP to share the topic's partitions.

Settings come from the environment and .env: KAFKA_BOOTSTRAP_SERVERS, KAFKA_TOPIC,
KAFKA_DEAD_LETTER_TOPIC, KAFKA_CONSUMER_GROUP, S3_*, MEILI_*, CONSUMER_*, MAX_*, THUMBNAIL_SIZE,
and the per-image budgets PROCESSING_TIMEOUT_SECONDS, MAX_DECODE_BYTES, WORKER_MEMORY_MB.
No message or object can stop it: each ends indexed, dead-lettered with a reason, or retried.
SIGTERM or Ctrl-C stops polling, finishes the messages already polled (each indexed or
dead-lettered) and commits them; a second one exits at once, and what was in flight is
delivered again.

Exit status: 0 stopped cleanly, 1 a service failed at start-up, 2 usage or settings error (also a
MeiliSearch index keyed by another field, an invalid index name, a refused key, a missing bucket),
130 stopped by a second signal.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from imgpipe import cli
from imgpipe.settings import load_settings

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
    p.add_argument("--batch-ms", type=int, help="wait at most this long to fill a batch (env CONSUMER_BATCH_MS)")
    p.add_argument("--group", help="consumer group id (env KAFKA_CONSUMER_GROUP)")
    p.add_argument("--topic", help="topic to consume (env KAFKA_TOPIC)")
    p.add_argument("--index", help="MeiliSearch index (env MEILI_INDEX)")
    p.add_argument("--max-idle-seconds", type=float, metavar="S",
                   help="exit once no message has arrived for S seconds (batch runs)")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)

    def body() -> int:
        # Checked as the environment is: a bad option is named with the variable behind it.
        settings = load_settings(require_meili_key=True).with_options(args, OPTION_SETTINGS)
        workers = settings.consumer_workers or os.cpu_count() or 1

        # Images are decoded only in the processing pool's worker processes (consumer/workers.py),
        # each of which applies the decoder limits before it loads OpenCV.
        from consumer.loop import BatchConsumer
        from imgpipe.retry import Stopped

        metrics = None
        if settings.metrics_port:
            from imgpipe.metrics import ConsumerMetrics, serve

            metrics = ConsumerMetrics()
            serve(metrics.registry, settings.metrics_port)
        bar = cli.progress(None, "images", unit="img", enabled=args.progress)
        runner = BatchConsumer(settings, workers=workers, max_idle_seconds=args.max_idle_seconds,
                               status_interval=args.status_interval, on_batch=bar.update, metrics=metrics)
        install_signal_handlers(runner.stop)
        log.info("consuming %s as group %s with %d worker(s); indexing into %s", settings.kafka_topic,
                 settings.kafka_consumer_group, workers, settings.meili_index)
        try:
            stats = runner.run()
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
        if args.summary_json:
            args.summary_json.parent.mkdir(parents=True, exist_ok=True)
            args.summary_json.write_text(json.dumps(summary, indent=2))
        return cli.EXIT_OK

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
