"""The enricher loop: poll announcements of indexed images, run the models on their images in
budgeted worker processes, add the fields to the documents, dead-letter what fails, and commit
a batch's offsets only once MeiliSearch's task succeeded and its dead letters are acknowledged.

Why this order: as in the consumer, Kafka is told a message is done only once MeiliSearch has
its result; a crash before the commit re-delivers it, and writing an enrichment twice is
harmless (the same fields again). Two lanes: the live announcements (KAFKA_INDEXED_TOPIC) and
the backfill's (KAFKA_BACKFILL_TOPIC), each in its own consumer group; the backfill lane is
polled only when the live one had nothing, so a backfill of a million documents never delays a
new upload by more than the batch in hand. Batches are processed whole, in offset order per
partition, and an object's announcements share a partition (keyed by object key): they stay in
order, and within a batch only an object's last announcement is enriched.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from imgpipe import kafka, s3
from imgpipe.errors import InfrastructureError, MessageError, ObjectMissing
from imgpipe.deadletters import Stage
from imgpipe.events import DELETE
from imgpipe.indexed import IndexedImage, parse_indexed
from imgpipe.retry import Stopped
from imgpipe.settings import Settings

from consumer.handler import check_bucket_allowed
from consumer.stats import seconds_since
from consumer.storage import ObjectStore
from consumer.workers import ProcessingPool
from enricher import deadletters
from enricher.stats import EnricherStats
from enricher.work import ENRICHMENT_VERSION, DecodeLimits, current_versions, enrich_in_worker, preload
from enricher.writer import Enrichment, EnrichmentWriter, same_etag

log = logging.getLogger("enricher")

JOIN_WAIT_SECONDS = 60.0
IO_THREADS_PER_WORKER = 2
LIVE, BACKFILL = "live", "backfill"


@dataclass(eq=False)
class Item:
    msg: object
    announcement: IndexedImage | None = None
    outcome: object = None  # an Enrichment, a MessageError, or a reason it is skipped (str)


class Enricher:
    def __init__(self, settings: Settings, models: tuple[str, ...], workers: int, group: str,
                 batch_size: int = 32, max_idle_seconds: float | None = None, status_interval: float = 10.0,
                 metrics=None, on_batch=None):
        self.settings = settings
        self.models = models
        self.workers = workers
        self.group = group
        self.batch_size = batch_size
        self.max_idle_seconds = max_idle_seconds
        self.status_interval = status_interval
        self.metrics = metrics
        self.on_batch = on_batch
        self.stop = threading.Event()
        self.stats = EnricherStats()
        versions = current_versions()
        self.versions = {name: v for name, v in versions.items() if name.split("_")[0] in models}
        self._all_versions = versions
        self._limits = DecodeLimits.from_settings(settings)
        self._last_activity = time.monotonic()
        self._last_status = time.monotonic()
        self._assigned: set[tuple[str, int]] = set()

    # --- set-up and the poll loop ----------------------------------------------------------------
    def run(self) -> EnricherStats:
        s = self.settings
        kafka.ensure_topics(s, [s.kafka_indexed_topic, s.kafka_backfill_topic, s.kafka_enricher_dead_letter_topic])
        client = s3.client(s, pool_size=self.workers * IO_THREADS_PER_WORKER + 4)
        self._store = ObjectStore(client, s.s3_bucket, self.stop)
        self._store.check_output_bucket()
        self._writer = EnrichmentWriter(s, self.stop, self._all_versions, ENRICHMENT_VERSION)
        # libgomp (YuNet) and onnxruntime would each start a thread per core in every worker.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        pool = ProcessingPool(s, self.workers, preload=functools.partial(preload, self.models))
        self._pool = pool
        self._dead_letters = deadletters.writer(s, self.stop)
        lanes = {LIVE: (s.kafka_indexed_topic, self.group), BACKFILL: (s.kafka_backfill_topic, f"{self.group}-backfill")}
        self._consumers = {}
        for lane, (topic, group) in lanes.items():
            consumer = kafka.consumer(s, group_id=group, **{"max.poll.interval.ms": 900_000})
            consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
            self._consumers[lane] = consumer
        self._last_activity = time.monotonic()
        try:
            with ThreadPoolExecutor(max_workers=self.workers * IO_THREADS_PER_WORKER,
                                    thread_name_prefix="enrich") as threads:
                self._threads = threads
                while not self.stop.is_set():
                    lane, messages = self._poll()
                    if messages:
                        try:
                            self._process(lane, messages)
                        except Stopped:
                            log.warning("stopped during an outage: the batch in hand is not committed and will be "
                                        "delivered again")
                            break
                        self._last_activity = time.monotonic()
                    elif self._idle_long_enough():
                        log.info("no announcement for %.0f s: done", time.monotonic() - self._last_activity)
                        break
                    self._maybe_report_status()
        finally:
            pool.close(wait=not self.stop.is_set())
            self._dead_letters.close()
            for consumer in self._consumers.values():
                consumer.close()
            self.stats.worker_cpu_seconds = pool.cpu_seconds
        return self.stats

    def _on_assign(self, consumer, partitions) -> None:
        self._assigned |= {(p.topic, p.partition) for p in partitions}
        self._last_activity = time.monotonic()

    def _on_revoke(self, consumer, partitions) -> None:
        # Every batch is committed before the next poll: nothing is held when partitions go.
        self._assigned -= {(p.topic, p.partition) for p in partitions}
        self._last_activity = time.monotonic()

    def _poll(self) -> tuple[str, list]:
        """The live lane first; the backfill's only when the live one has nothing."""
        wait = self.settings.consumer_batch_ms / 1000
        for lane in (LIVE, BACKFILL):
            # A whole window, not kafka.poll_batch: enrichment is not latency-bound, and a window
            # makes fewer, larger partial updates, with an object's announcements that arrive
            # together (an upload, then its deletion) reduced to the last.
            usable = kafka.without_errors(self._consumers[lane].consume(num_messages=self.batch_size, timeout=wait))
            if usable:
                return lane, usable
        return LIVE, []

    def _idle_long_enough(self) -> bool:
        if self.max_idle_seconds is None:
            return False
        idle = time.monotonic() - self._last_activity
        if not self._assigned:
            return idle >= max(self.max_idle_seconds, JOIN_WAIT_SECONDS)
        return idle >= self.max_idle_seconds

    # --- one batch -------------------------------------------------------------------------------
    def _process(self, lane: str, messages: list) -> None:
        if self.stats.first_message_at is None:
            self.stats.first_message_at = time.monotonic()
        self.stats.consumed += len(messages)
        if self.metrics is not None:
            self.metrics.messages.labels(lane).inc(len(messages))
        items = [self._parse(msg) for msg in messages]
        latest: dict[str, Item] = {}
        for item in items:
            if item.outcome is None:
                previous = latest.get(item.announcement.id)
                if previous is not None:
                    previous.outcome = "superseded"  # the same object's later announcement wins
                latest[item.announcement.id] = item
        futures = {id(item): self._threads.submit(self._enrich, item.announcement)
                   for item in latest.values() if item.outcome is None}
        for item in latest.values():
            if id(item) in futures:
                try:
                    item.outcome = futures[id(item)].result()
                except MessageError as exc:
                    item.outcome = exc
                except (Stopped, InfrastructureError):
                    raise
                except Exception as exc:  # a bug on one odd image must not stop the enricher
                    log.exception("unexpected error enriching %s", item.announcement.key)
                    item.outcome = MessageError(Stage.ENRICH_FETCH, f"unexpected {type(exc).__name__}: {exc}")
        self._write(lane, items)
        self._dead_letter(items)
        self._commit(lane, messages)
        self.stats.last_committed_at = time.monotonic()
        if self.on_batch:
            self.on_batch(len(messages))

    def _parse(self, msg) -> Item:
        item = Item(msg)
        try:
            item.announcement = parse_indexed(msg.value())
        except MessageError as exc:
            item.outcome = exc
            return item
        if item.announcement.action == DELETE:
            item.outcome = "deletion"  # nothing to enrich: the document is gone
            return item
        try:
            check_bucket_allowed(item.announcement, self.settings.allowed_buckets)
        except MessageError as exc:
            item.outcome = exc
        return item

    def _fetch(self, bucket: str, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and etag, or None when it is gone; an unreadable object is this
        message's fault."""
        try:
            data, source = self._store.fetch(bucket, key, self.settings.max_object_bytes)
        except ObjectMissing:
            return None
        except MessageError as exc:
            raise MessageError(Stage.ENRICH_FETCH, exc.reason) from None
        return data, source.etag

    def _enrich(self, announcement: IndexedImage):
        """An Enrichment; "stale" when the object changed since it was indexed (its newer version's
        announcement follows), "gone" when it was deleted since (the deletion's announcement
        follows, or reconcile finds it). Runs on an I/O thread; the models run in the pool.
        Both models read the original (enricher/work.py says why)."""
        fetched = self._fetch(announcement.bucket, announcement.key)
        if fetched is None:
            return "gone"
        data, etag = fetched
        if etag and announcement.etag and not same_etag(etag, announcement.etag):
            return "stale"
        output = self._pool.run(enrich_in_worker, self.models, data, self._limits)
        for model, seconds in output.cpu_seconds.items():
            self.stats.model_cpu_seconds[model] += seconds
            self.stats.model_images[model] += 1
            if self.metrics is not None:
                self.metrics.model_seconds.labels(model).observe(seconds)
        return Enrichment(announcement.id, announcement.etag, output.fields)

    def _write(self, lane: str, items: list[Item]) -> None:
        enrichments = [item.outcome for item in items if isinstance(item.outcome, Enrichment)]
        outcome = self._writer.write(enrichments)
        reasons = {doc_id: reason for reason in ("missing", "stale", "undone", "crossed")
                   for doc_id in getattr(outcome, reason)}
        now = time.time()
        for item in items:
            if isinstance(item.outcome, Enrichment) and item.outcome.id in reasons:
                item.outcome = reasons[item.outcome.id]
            if isinstance(item.outcome, Enrichment):
                enrichment = item.outcome
                self.stats.enriched += 1
                self.stats.with_faces += bool(enrichment.fields.get("faces"))
                self.stats.with_text += bool(enrichment.fields.get("text_chars"))
                lag = seconds_since(item.announcement.event_time, now)
                if lag is not None:
                    self.stats.enrichment_lag.add(lag)
                if self.metrics is not None:
                    self.metrics.enriched.labels(lane).inc()
                    if lag is not None and lane == LIVE:
                        self.metrics.enrichment_lag.observe(lag)
                        self.metrics.last_lag_seconds.set(lag)
            elif item.outcome == "deletion":
                self.stats.deletions += 1
            if isinstance(item.outcome, str) and item.outcome != "deletion":
                self.stats.skipped[item.outcome] += 1
                if self.metrics is not None:
                    self.metrics.skipped.labels(item.outcome).inc()

    def _dead_letter(self, items: list[Item]) -> None:
        failed = [item for item in items if isinstance(item.outcome, MessageError)]
        for item in failed:
            msg = item.msg
            log.info("dead-letter %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), item.outcome)
            self._dead_letters.add(msg, item.outcome)
            self.stats.dead_letter_reasons[item.outcome.stage] += 1
            if self.metrics is not None:
                self.metrics.dead_letters.labels(item.outcome.stage).inc()
        if failed:
            self._dead_letters.flush()
        self.stats.dead_lettered += len(failed)

    def _commit(self, lane: str, messages: list) -> None:
        next_offsets: dict[tuple[str, int], int] = {}
        for msg in messages:
            position = (msg.topic(), msg.partition())
            next_offsets[position] = max(next_offsets.get(position, 0), msg.offset() + 1)
        try:
            kafka.commit(self._consumers[lane], next_offsets)
        except kafka.KafkaError as exc:
            log.warning("commit failed (%s); these announcements may be delivered again", exc)

    def _maybe_report_status(self) -> None:
        if time.monotonic() - self._last_status < self.status_interval:
            return
        self._last_status = time.monotonic()
        for lane, consumer in self._consumers.items():
            lag = _lag(consumer)
            if lag is not None:
                self.stats.lag[lane] = lag
                if self.metrics is not None:
                    self.metrics.lag.labels(lane).set(lag)
        log.info("%s", self.stats.line())


def _lag(consumer) -> int | None:
    try:
        assignment = consumer.assignment()
        total = 0
        for tp in consumer.position(assignment) if assignment else []:
            low, high = consumer.get_watermark_offsets(tp, cached=True)
            total += max(high - (tp.offset if tp.offset >= 0 else low), 0)
        return total
    except Exception:  # lag is informative only
        return None
