"""The backfill: announce, on its own topic (KAFKA_BACKFILL_TOPIC), every document that lacks
the current enrichment, at a bounded rate. The enricher reads that topic in its own lane and
only when the live one is empty, so a backfill never delays new uploads.

Every document is read once (imgpipe.meili.DocumentReader pages the whole index) and the due
ones are chosen here: a filter on the version would shrink while the enricher works through it,
and offset paging over a shrinking set skips documents.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from imgpipe import kafka, meili
from imgpipe.errors import InfrastructureError
from imgpipe.indexed import IndexedImage
from imgpipe.retry import retry_until_stopped
from imgpipe.settings import Settings

log = logging.getLogger("enricher.backfill")

FIELDS = ["id", "bucket", "key", "etag", "event_time", "thumbnail_key", "grayscale_key", "width", "height",
          "enrichment_version", "faces_version", "text_version"]


@dataclass
class BackfillStats:
    scanned: int = 0
    due: int = 0  # counted up front (a filter), for the ETA
    announced: int = 0
    seconds: float = 0.0

    def line(self, rate: float) -> str:
        left = max(self.due - self.announced, 0)
        eta = left / rate if rate > 0 else 0.0
        return (f"backfill: scanned {self.scanned}, announced {self.announced} of ~{self.due} due, "
                f"ETA {eta / 60:.1f} min at {rate:g}/s")


def due_filter(versions: dict[str, int]) -> str:
    """Documents whose fields of these versions are missing or older."""
    return " OR ".join(f"{name} NOT EXISTS OR {name} != {version}" for name, version in versions.items())


def is_due(document: dict, versions: dict[str, int]) -> bool:
    return any(document.get(name) != version for name, version in versions.items())


def announcement(document: dict) -> IndexedImage:
    return IndexedImage.of_document({k: v for k, v in document.items() if v is not None})


class RateLimit:
    """At most `per_second` calls of wait() per second, on average, from the start."""

    def __init__(self, per_second: float, stop: threading.Event):
        self.interval = 1.0 / per_second
        self.stop = stop
        self.next_at = time.monotonic()

    def wait(self) -> None:
        delay = self.next_at - time.monotonic()
        if delay > 0:
            self.stop.wait(delay)
        self.next_at = max(self.next_at + self.interval, time.monotonic() - 1.0)


def run_backfill(settings: Settings, versions: dict[str, int], rate: float, stop: threading.Event,
                 limit: int | None = None, on_progress=None, status_interval: float = 10.0) -> BackfillStats:
    stats = BackfillStats()
    started = time.monotonic()
    try:
        stats.due = meili.documents_where(settings, settings.meili_index, due_filter(versions), ["id"], 1)[1]
    except meili.MeiliError as exc:
        log.info("cannot count the documents due (%s); no ETA", exc.code)
    kafka.ensure_topics(settings, [settings.kafka_backfill_topic])
    producer = kafka.producer(settings, **{"linger.ms": 20})
    failed: list = []
    limiter = RateLimit(rate, stop)
    last_status = time.monotonic()
    reader = meili.DocumentReader(settings, settings.meili_index, fields=FIELDS, fallback_to_indexing_key=True)
    try:
        for document in reader:
            if stop.is_set() or (limit is not None and stats.announced >= limit):
                break
            stats.scanned += 1
            if not is_due(document, versions) or not document.get("key"):
                continue
            limiter.wait()
            message = announcement(document)
            while True:
                try:
                    producer.produce(settings.kafka_backfill_topic, key=message.message_key, value=message.to_json(),
                                     on_delivery=lambda err, _m: err is not None and failed.append(err))
                    break
                except BufferError:
                    producer.poll(0.2)
            producer.poll(0)
            stats.announced += 1
            if on_progress:
                on_progress(1)
            if time.monotonic() - last_status >= status_interval:
                last_status = time.monotonic()
                log.info("%s", stats.line(rate))

        def flushed() -> None:
            remaining = producer.flush(10)
            if remaining:
                raise InfrastructureError("kafka", f"{remaining} backfill announcement(s) not acknowledged yet")

        retry_until_stopped(flushed, stop)
    finally:
        producer.flush(5)
    if failed:
        raise InfrastructureError("kafka", f"{len(failed)} backfill announcement(s) were not delivered "
                                  f"({failed[0]}); run the backfill again (it is idempotent)")
    stats.seconds = time.monotonic() - started
    return stats
