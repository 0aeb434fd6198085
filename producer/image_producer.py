#!/usr/bin/env python3
"""Send one JSON event per S3 object change to Kafka: from a listing of the bucket (once, or
every few seconds with --watch), from the bucket's S3 Event Notifications on an SQS queue, or from
the notifications an S3 server (versitygw, MinIO, Ceph RGW) publishes to a Kafka topic.

Each event carries schema_version, action (upsert or delete), bucket, key, size, etag,
last_modified, event_time and sequencer; the Kafka message key is the object key. Settings come
from the environment and .env (KAFKA_BOOTSTRAP_SERVERS, KAFKA_TOPIC, S3_BUCKET, S3_RAW_PREFIX,
S3_ENDPOINT_URL, SQS_QUEUE_URL, S3_NOTIFICATIONS_TOPIC, ...).

Exit status: 0 all events delivered, 1 some delivery failed, a key was missing, a notification
was malformed or a service is unreachable, 2 usage or settings error.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from imgpipe import cli, kafka, s3
from imgpipe.errors import NOT_FOUND, UserError
from imgpipe.events import ImageEvent, event_for_object, utc_now_iso
from imgpipe.retry import Stopped
from imgpipe.settings import Settings, load_settings
from producer.listing import SentState, head_objects, list_retrying
from producer.sender import EventSender

log = logging.getLogger("producer")


def build_parser():
    p = cli.parser("producer/image_producer.py", __doc__, [
        "python producer/image_producer.py                       # every object under S3_RAW_PREFIX",
        "python producer/image_producer.py --prefix raw/cats/ --limit 100",
        "python producer/image_producer.py --key 'raw/a cat.jpg' --key raw/dog.png",
        "python producer/image_producer.py --watch 10            # keep sending new, changed and deleted objects",
        "python producer/image_producer.py --sqs-queue-url https://sqs.eu-west-1.amazonaws.com/123456789012/images-events",
        "python producer/image_producer.py --notifications-topic   # real time from the local S3 server (versitygw)"])
    p.add_argument("--bucket", help="bucket to list (env S3_BUCKET)")
    p.add_argument("--prefix", help="key prefix to list; with --sqs-queue-url, only notifications under it are "
                                    "sent (env S3_RAW_PREFIX)")
    p.add_argument("--limit", type=int, help="send at most this many events per pass")
    p.add_argument("--key", action="append", default=[], metavar="KEY",
                   help="send just this object key (repeatable); the key is used exactly as given")
    p.add_argument("--topic", help="Kafka topic (env KAFKA_TOPIC)")
    p.add_argument("--rate", type=float, metavar="N", help="send at most N events per second (steady load)")
    p.add_argument("--watch", type=float, nargs="?", const=10.0, metavar="SECONDS",
                   help="keep polling the bucket every SECONDS (default 10) for new, changed and deleted objects")
    p.add_argument("--state-file", type=Path,
                   help="where --watch remembers what it sent (default: under LOCAL_STATE_DIR)")
    p.add_argument("--sqs-queue-url", metavar="URL",
                   help="instead of listing, long-poll this SQS queue of the bucket's S3 Event Notifications "
                        "(env SQS_QUEUE_URL)")
    p.add_argument("--wait-seconds", type=int, default=10, metavar="N",
                   help="with --sqs-queue-url: how long one poll waits for messages, 1-20; a stop takes "
                        "effect within one poll")
    p.add_argument("--notifications-topic", nargs="?", const="", metavar="TOPIC",
                   help="instead of listing, read the S3 server's bucket notifications from this Kafka topic "
                        "(without TOPIC: env S3_NOTIFICATIONS_TOPIC); keys as env S3_NOTIFICATIONS_KEY_ENCODING "
                        "says; commits as group KAFKA_CONSUMER_GROUP-notifications")
    p.add_argument("--skip-backlog", action="store_true",
                   help="with --notifications-topic: first move the group to the end of the topic, so only "
                        "notifications from now on are sent (producer/reconcile.py covers the rest)")
    p.add_argument("--max-idle-seconds", type=float, metavar="N",
                   help="with --sqs-queue-url or --notifications-topic: stop after N seconds without a message "
                        "(default: run until stopped)")
    p.add_argument("--summary-json", type=Path, help="also write the final counts to this JSON file")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics on http://127.0.0.1:PORT/metrics (env METRICS_PORT; 0 = off)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when stderr is a terminal)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def default_state_file(settings: Settings, bucket: str, prefix: str, topic: str) -> Path:
    tag = hashlib.sha256(f"{bucket}\0{prefix}\0{topic}".encode()).hexdigest()[:16]
    return settings.local_state_dir / "producer" / f"sent-{tag}.json"


def s3_errors_explained(source, bucket: str):
    """A missing bucket is the user's to fix (exit 2); other S3 errors are outages (exit 1)."""
    try:
        yield from source
    except s3.S3Error as exc:
        if exc.missing_bucket:
            raise UserError(f"bucket {bucket!r} does not exist") from None
        raise


def one_pass(settings: Settings, client, bucket: str, prefix: str, keys: list[str], limit: int | None,
             state: SentState | None, show_progress: bool | None, rate: float | None = None,
             stop: threading.Event | None = None, metrics=None) -> tuple[int, int]:
    """Send events for one listing; returns (delivered, failed).

    With a `state` (--watch): only new or changed objects are sent, and after a full listing a
    delete event for each remembered key that is gone. With `stop`: a listing page that fails
    on an outage is retried until it works or a stop comes, and a stop ends the pass early."""
    missing = 0
    pass_started = utc_now_iso()  # a key missing from this listing was gone by then
    bar = cli.progress(None, "events", unit="ev", enabled=show_progress)
    sender = EventSender(settings, on_delivered=bar.update if not bar.disable else None,
                         track_delivered=state is not None, metrics=metrics)
    gone: set[str] = set()
    try:
        if keys:
            source = head_objects(client, bucket, keys)
        elif stop is not None:
            source = list_retrying(client, bucket, prefix, stop)
        else:
            source = s3.list_objects(client, bucket, prefix)
        queued = 0
        started = time.monotonic()
        seen: set[str] | None = set() if state is not None and not keys else None
        try:
            for obj in s3_errors_explained(source, bucket):
                if stop is not None and stop.is_set():
                    seen = None  # cut short: it cannot tell what was deleted
                    break
                if isinstance(obj, str):
                    log.error("%s", obj)
                    missing += 1
                    continue
                if seen is not None:
                    seen.add(obj["Key"])
                if state is not None and not state.is_new(obj):
                    continue
                if limit is not None and queued >= limit:
                    seen = None
                    break
                if rate:
                    # Pace against the start of the pass, so a slow moment is caught up on, not lost.
                    delay = started + queued / rate - time.monotonic()
                    if delay > 0:
                        if stop is None:
                            time.sleep(delay)
                        elif stop.wait(delay):
                            seen = None
                            break
                sender.send(event_for_object(bucket, obj))
                queued += 1
        except Stopped:
            seen = None
            log.warning("stopped while S3 was failing: the rest of this listing is not sent")
        if state is not None and seen is not None:
            # A full listing without a key we delivered before: the object was deleted.
            gone = state.known_keys() - seen
            for key in sorted(gone):
                sender.send(ImageEvent.deletion(bucket, key, pass_started))
    finally:
        sender.flush(timeout=120)
        bar.close()
    report = sender.report
    for error in report.errors:
        log.error("delivery failed: %s", error)
    if state is not None:
        for key, etag in report.delivered_keys:
            if key in gone:
                state.forget(key)  # its delete event is delivered: keep the state file small
            else:
                state.mark(key, etag)
        state.save()
    deletes = sum(1 for key, _ in report.delivered_keys if key in gone)
    print(f"producer: {report.summary()}" + (f" ({deletes} delete(s))" if deletes else "")
          + (f", {missing} key(s) not found" if missing else ""), file=sys.stderr)
    return report.sent, report.failed + missing


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)

    def body() -> int:
        settings = load_settings().with_options(args, {"topic": "kafka_topic", "metrics_port": "metrics_port"})
        cli.check_ranges(args, {"limit": (1, None)})
        if args.rate is not None and args.rate <= 0:
            raise UserError("--rate must be a positive number of events per second")
        if args.watch is not None and args.watch <= 0:
            raise UserError("--watch needs a positive number of seconds")
        bucket = args.bucket or settings.s3_bucket
        prefix = settings.s3_raw_prefix if args.prefix is None else args.prefix
        metrics = None
        if settings.metrics_port:
            from imgpipe.metrics import ProducerMetrics, serve

            metrics = ProducerMetrics()
            serve(metrics.registry, settings.metrics_port)
        if args.notifications_topic is not None:
            return from_topic(settings, args.notifications_topic or settings.s3_notifications_topic, bucket, prefix,
                              metrics)
        if args.skip_backlog:
            raise UserError("--skip-backlog needs --notifications-topic")
        queue_url = args.sqs_queue_url or settings.sqs_queue_url
        if queue_url:
            return from_queue(settings, queue_url, bucket, prefix, metrics)
        if args.max_idle_seconds is not None:
            raise UserError("--max-idle-seconds needs --sqs-queue-url or --notifications-topic")
        kafka.check_topic(settings, settings.kafka_topic)
        client = s3.client(settings)
        if args.watch is None:
            started = time.monotonic()
            sent, failed = one_pass(settings, client, bucket, prefix, args.key, args.limit, None, args.progress,
                                    args.rate, metrics=metrics)
            seconds = time.monotonic() - started
            cli.write_summary_json(args.summary_json, {
                "sent": sent, "failed": failed, "seconds": round(seconds, 3),
                "events_per_second": round(sent / seconds, 1) if seconds > 0 else None})
            return cli.EXIT_FAILURES if failed else cli.EXIT_OK

        state = SentState(args.state_file or default_state_file(settings, bucket, prefix, settings.kafka_topic))
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        log.info("watching s3://%s/%s every %.0f s (state: %s); Ctrl-C to stop", bucket, prefix, args.watch,
                 state.path)
        total_failed = 0
        while not stop.is_set():
            _, failed = one_pass(settings, client, bucket, prefix, args.key, args.limit, state, args.progress, args.rate,
                                 stop, metrics)
            total_failed += failed
            stop.wait(args.watch)
        return cli.EXIT_FAILURES if total_failed else cli.EXIT_OK

    def from_queue(settings: Settings, queue_url: str, bucket: str, prefix: str, metrics) -> int:
        from producer.queue_mode import QueueProducer

        for name in ("watch", "key", "limit", "rate", "state_file"):
            if getattr(args, name):
                raise UserError(f"--{name.replace('_', '-')} lists the bucket; it cannot be combined with "
                                "--sqs-queue-url (or SQS_QUEUE_URL)")
        if not 1 <= args.wait_seconds <= 20:
            raise UserError("--wait-seconds must be between 1 and 20 (SQS's longest poll)")
        kafka.check_topic(settings, settings.kafka_topic)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        report = QueueProducer(settings, queue_url, bucket, prefix, args.wait_seconds, args.max_idle_seconds,
                               stop, metrics).run()
        print(f"producer: {report.summary()}", file=sys.stderr)
        cli.write_summary_json(args.summary_json, report.as_dict())
        return cli.EXIT_FAILURES if report.failed or report.malformed or report.kept else cli.EXIT_OK

    def from_topic(settings: Settings, topic: str, bucket: str, prefix: str, metrics) -> int:
        from producer.topic_mode import TopicProducer, notifications_group, skip_backlog

        for name in ("watch", "key", "limit", "rate", "state_file", "sqs_queue_url"):
            if getattr(args, name):
                raise UserError(f"--{name.replace('_', '-')} cannot be combined with --notifications-topic")
        if not topic:
            raise UserError("--notifications-topic needs a topic: give one, or set S3_NOTIFICATIONS_TOPIC")
        if topic in (settings.kafka_topic, settings.kafka_dead_letter_topic):
            raise UserError(f"--notifications-topic {topic!r} is the producer's own output (KAFKA_TOPIC or "
                            "KAFKA_DEAD_LETTER_TOPIC): read the S3 server's notification topic instead")
        kafka.check_topic(settings, topic)
        kafka.check_topic(settings, settings.kafka_topic)
        try:  # each notification is checked against the bucket: it must be there
            s3.head_bucket(s3.client(settings), bucket)
        except s3.S3Error as exc:
            if exc.missing_bucket or exc.kind == NOT_FOUND:  # HEAD answers a bare 404
                raise UserError(f"bucket {bucket!r} does not exist") from None
            raise
        group = notifications_group(settings)
        if args.skip_backlog:
            ends = skip_backlog(settings, topic, group)
            log.info("skipped the backlog of %s: group %s starts at %s", topic, group,
                     ", ".join(f"partition {p} offset {o}" for p, o in sorted(ends.items())))
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        report = TopicProducer(settings, topic, bucket, prefix, args.max_idle_seconds, stop, metrics, group).run()
        print(f"producer: {report.summary()}", file=sys.stderr)
        cli.write_summary_json(args.summary_json, report.as_dict())
        return cli.EXIT_FAILURES if report.failed or report.dead_lettered else cli.EXIT_OK

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
