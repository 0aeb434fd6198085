"""The consumer loop: poll a batch, process it on the pools, index it, dead-letter what is broken,
and only then commit the batch's offsets.

Why this order: Kafka must not be told a message is done before MeiliSearch has its document
(or the dead-letter topic has it). A crash anywhere before the commit means the batch is
delivered again; documents have stable ids, so the redelivery replaces rather than duplicates.

Batches overlap so the cores never wait: while batch N's index task runs in MeiliSearch, batch
N+1's images are being processed, and batch N+2's are already queued behind them. Batches are
finished (task confirmed, dead letters acknowledged, offsets committed) strictly in the order
they were polled, and at most MAX_BATCHES_IN_FLIGHT are open at once.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from imgpipe import kafka, retry, s3
from imgpipe.errors import InfrastructureError, MessageError
from imgpipe.events import DELETE, ImageEvent, compare_sequencers, parse_event
from imgpipe.retry import Stopped
from imgpipe.settings import Settings

from consumer.deadletter import DeadLetterWriter
from consumer.handler import ImageHandler
from consumer.indexer import Indexer, Submitted
from consumer.stats import Stats
from consumer.storage import ObjectStore
from consumer.workers import ProcessingPool

log = logging.getLogger("consumer")

JOIN_WAIT_SECONDS = 60.0
# Threads per processing slot: the extra ones wait on S3 while the others use the CPU.
IO_THREADS_PER_WORKER = 4
# Batches polled and not yet committed: the one being indexed, the one being processed, one queued.
MAX_BATCHES_IN_FLIGHT = 3
SUPERSEDED = "superseded"  # the outcome of an event replaced by a later one of the same object


@dataclass
class Batch:
    messages: list
    outcomes: list  # per message: a document, a deleted id (str), SUPERSEDED, a MessageError, or None
    futures: dict[int, Future] = field(default_factory=dict)
    submitted: Submitted | None = None
    started: float = field(default_factory=time.monotonic)

    def document_ids(self) -> frozenset[str]:
        ids = {o["id"] for o in self.outcomes if isinstance(o, dict)}
        ids |= {o for o in self.outcomes if isinstance(o, str) and o != SUPERSEDED}
        return frozenset(ids)


def latest_per_object(events: dict[int, ImageEvent]) -> set[int]:
    """Positions of the events to act on: the last one of each object in the batch (by S3's
    sequencer where both have one, else by position, which Kafka keeps in order per key)."""
    latest: dict[tuple[str, str], int] = {}
    for i, event in events.items():
        seen = latest.get((event.bucket, event.key))
        if seen is not None:
            before = events[seen]
            if before.sequencer and event.sequencer and compare_sequencers(event.sequencer, before.sequencer) < 0:
                continue
        latest[(event.bucket, event.key)] = i
    return set(latest.values())


class BatchConsumer:
    def __init__(self, settings: Settings, workers: int, max_idle_seconds: float | None = None,
                 status_interval: float = 10.0, on_batch=None, metrics=None):
        self.settings = settings
        self.workers = workers
        self.max_idle_seconds = max_idle_seconds
        self.status_interval = status_interval
        self.on_batch = on_batch  # called with the number of messages finished, for progress bars
        self.metrics = metrics  # imgpipe.metrics.ConsumerMetrics, or None
        self.stop = threading.Event()
        self.stats = Stats()
        self._last_status = time.monotonic()
        self._last_activity = time.monotonic()
        self._assigned: set[tuple[str, int]] = set()
        self._open: deque[Batch] = deque()  # polled, not yet processed and submitted, oldest first
        self._indexing: Batch | None = None  # submitted to MeiliSearch, not yet confirmed and committed
        self._consumer = None

    # Rebalance callbacks run inside consume(). Before partitions go, every batch polled so far is
    # finished and committed, so the member that gets them next starts after our last commit.
    def _on_assign(self, consumer, partitions) -> None:
        self._assigned |= {(p.topic, p.partition) for p in partitions}
        self._last_activity = time.monotonic()
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing")

    def _on_revoke(self, consumer, partitions) -> None:
        if partitions:
            try:
                self._drain()
            except Stopped:
                pass  # the batch is not committed and will be delivered again
        self._assigned -= {(p.topic, p.partition) for p in partitions}
        self._last_activity = time.monotonic()
        log.info("revoked %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing")

    def _on_lost(self, consumer, partitions) -> None:
        # Lost, not revoked: another member may own them already; what we hold is delivered again.
        self._assigned -= {(p.topic, p.partition) for p in partitions}
        self._last_activity = time.monotonic()
        log.warning("lost %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing")

    def _idle_long_enough(self) -> bool:
        """--max-idle-seconds counts from the last message or partition change. Until partitions
        are assigned (a restarted group can wait for a dead member's session to expire) the
        consumer is waiting, not idle, up to JOIN_WAIT_SECONDS."""
        if self.max_idle_seconds is None:
            return False
        idle = time.monotonic() - self._last_activity
        if not self._assigned:
            return idle >= max(self.max_idle_seconds, JOIN_WAIT_SECONDS)
        return idle >= self.max_idle_seconds

    def run(self) -> Stats:
        kafka.ensure_topics(self.settings, [self.settings.kafka_topic, self.settings.kafka_dead_letter_topic])
        threads = self.workers * IO_THREADS_PER_WORKER
        store = ObjectStore(s3.client(self.settings, pool_size=threads + 4), self.settings.s3_bucket, self.stop)
        store.check_output_bucket()
        self._indexer = Indexer(self.settings, self.stop)
        self._indexer.ensure_index()
        processing = ProcessingPool(self.settings, self.workers)
        self._handler = ImageHandler(self.settings, store, processing)
        self._dead_letters = DeadLetterWriter(self.settings, self.stop)
        if self.metrics is not None:
            retry.retry_observers.append(self.metrics.retried)
        consumer = self._consumer = kafka.consumer(self.settings, **{"max.poll.interval.ms": 900_000})
        consumer.subscribe([self.settings.kafka_topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        self._last_activity = time.monotonic()
        try:
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="image") as pool:
                self._pool = pool
                while not self.stop.is_set():
                    room = len(self._open) + (self._indexing is not None) < MAX_BATCHES_IN_FLIGHT
                    messages = []
                    if room:
                        messages = consumer.consume(num_messages=self.settings.consumer_batch_size,
                                                    timeout=self.settings.consumer_batch_ms / 1000)
                        messages = [m for m in messages if self._usable(m)]
                    try:
                        if messages:
                            self._last_activity = time.monotonic()
                            self._open.append(self._start(messages))
                        if not room:
                            self._advance()  # the pipeline is full: the oldest batch must move on
                        elif messages:
                            # Move on whatever is ready without waiting; the rest keeps processing.
                            while self._open and self._processed(self._open[0]):
                                self._advance()
                        else:
                            # Nothing new: a trickle must not wait for more to come.
                            while self._open:
                                self._advance()
                            if self._indexing is not None:
                                self._finish(self._indexing)
                    except Stopped:
                        log.warning("stopped during an outage: %d batch(es) in flight are not committed and "
                                    "will be delivered again", len(self._open) + (self._indexing is not None))
                        break
                    if messages or self._open or self._indexing is not None:
                        self._last_activity = time.monotonic()
                    elif self._idle_long_enough():
                        log.info("no message for %.0f s: done", time.monotonic() - self._last_activity)
                        break
                    self._maybe_report_status(consumer)
                else:
                    try:
                        self._drain()  # a stop finishes what was polled, then commits it
                    except Stopped:
                        log.warning("stopped during an outage: the batches in flight are not committed")
        finally:
            for batch in self._open:
                for future in batch.futures.values():
                    future.cancel()
            processing.close(wait=not self.stop.is_set())
            self._dead_letters.close()
            consumer.close()  # leaves the group at once, so partitions move without waiting
            if self.metrics is not None and self.metrics.retried in retry.retry_observers:
                retry.retry_observers.remove(self.metrics.retried)
            self.stats.worker_peak_rss_mb = processing.peak_worker_rss_mb
            self.stats.worker_cpu_seconds = processing.cpu_seconds
            self.stats.dead_letters_minimal = self._dead_letters.counts.minimal
            self.stats.dead_letters_refused = self._dead_letters.counts.refused
        return self.stats

    def _usable(self, msg) -> bool:
        if msg.error() is None:
            return True
        log.warning("Kafka reported: %s", msg.error())
        return False

    # --- one batch, in three steps ------------------------------------------------------------
    def _start(self, messages) -> Batch:
        """Parse the events and hand every image to the pools; returns at once."""
        self.stats.batch_started(len(messages))
        if self.metrics is not None:
            self.metrics.messages.inc(len(messages))
        batch = Batch(messages, [None] * len(messages))
        events: dict[int, ImageEvent] = {}
        for i, msg in enumerate(messages):
            try:
                events[i] = parse_event(msg.value())
            except MessageError as exc:
                batch.outcomes[i] = exc
            except Exception as exc:  # whatever a message holds, it must not escape the loop
                batch.outcomes[i] = MessageError("validate", f"unreadable message ({type(exc).__name__}: {exc})")
        acting = latest_per_object(events)
        for i, event in events.items():
            if i not in acting:
                batch.outcomes[i] = SUPERSEDED
            elif event.action == DELETE:
                batch.futures[i] = self._pool.submit(self._handler.delete, event)
            else:
                batch.futures[i] = self._pool.submit(self._timed, event)
        return batch

    def _timed(self, event: ImageEvent) -> dict:
        if self.metrics is None:
            return self._handler.handle(event)
        self.metrics.in_flight.inc()
        started = time.monotonic()
        try:
            return self._handler.handle(event)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.processing.observe(time.monotonic() - started)

    @staticmethod
    def _processed(batch: Batch) -> bool:
        return all(future.done() for future in batch.futures.values())

    def _advance(self) -> None:
        """The oldest open batch: wait for its images, submit it to MeiliSearch, then finish the
        batch submitted before it (so that one's task ran while this one was processed)."""
        batch = self._open.popleft()
        self._collect(batch)
        documents = [o for o in batch.outcomes if isinstance(o, dict)]
        deletions = [o for o in batch.outcomes if isinstance(o, str) and o != SUPERSEDED]
        batch.submitted = self._indexer.submit(documents, deletions)
        if self._indexing is not None:
            self._finish(self._indexing, later=batch)
        self._indexing = batch

    def _collect(self, batch: Batch) -> None:
        for i, future in batch.futures.items():
            try:
                batch.outcomes[i] = future.result()
            except MessageError as exc:
                batch.outcomes[i] = exc
            except (Stopped, InfrastructureError):
                # Stopped: a stop came during an outage. InfrastructureError that escaped the
                # retries cannot be retried (a broken OpenCV install): stop, commit nothing.
                for other in batch.futures.values():
                    other.cancel()
                raise
            except Exception as exc:  # a bug on one odd image must not stop the stream
                msg = batch.messages[i]
                log.exception("unexpected error on %s[%d]@%d", msg.topic(), msg.partition(), msg.offset())
                batch.outcomes[i] = MessageError("process", f"unexpected {type(exc).__name__}: {exc}")
        batch.futures = {}

    def _finish(self, batch: Batch, later: Batch | None = None) -> None:
        """Confirm the batch's index tasks, dead-letter what failed, commit its offsets."""
        superseded = later.document_ids() if later is not None else frozenset()
        indexed_at = [i for i, o in enumerate(batch.outcomes) if isinstance(o, dict)]
        # MeiliSearch may refuse some documents (found by splitting the batch): dead-letter those.
        for position, reason in self._indexer.confirm(batch.submitted, superseded).items():
            batch.outcomes[indexed_at[position]] = MessageError("index", reason)
        documents = [o for o in batch.outcomes if isinstance(o, dict)]
        for msg, outcome in zip(batch.messages, batch.outcomes):
            if isinstance(outcome, MessageError):
                log.info("dead-letter %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), outcome)
                self._dead_letters.add(msg, outcome)
                self.stats.dead_letter_reasons[outcome.stage] += 1
                if self.metrics is not None:
                    self.metrics.dead_letters.labels(outcome.stage).inc()
        written = self._dead_letters.flush()
        self._commit(batch.messages)
        deleted = sum(1 for o in batch.outcomes if isinstance(o, str) and o != SUPERSEDED)
        self.stats.superseded += sum(1 for o in batch.outcomes if o == SUPERSEDED)
        latencies = self.stats.batch_committed(documents, written, deleted)
        if self.metrics is not None:
            self.metrics.indexed.inc(len(documents))
            self.metrics.deleted.inc(deleted)
            self.metrics.batches.inc()
            for latency in latencies:
                self.metrics.searchable.observe(latency)
        if self._indexing is batch:
            self._indexing = None
        if self.on_batch:
            self.on_batch(len(batch.messages))

    def _drain(self) -> None:
        """Finish every batch polled so far, in order."""
        while self._open:
            self._advance()
        if self._indexing is not None:
            self._finish(self._indexing)

    def _commit(self, messages) -> None:
        next_offsets: dict[tuple[str, int], int] = {}
        for msg in messages:
            key = (msg.topic(), msg.partition())
            next_offsets[key] = max(next_offsets.get(key, 0), msg.offset() + 1)
        try:
            kafka.commit(self._consumer, next_offsets)
        except kafka.KafkaError as exc:
            # The group moved on (rebalance): another member will get these messages again and
            # replace the same documents. At-least-once, never lost.
            log.warning("commit failed (%s); the batch may be delivered again", exc)

    def _maybe_report_status(self, consumer) -> None:
        if time.monotonic() - self._last_status < self.status_interval:
            return
        self._last_status = time.monotonic()
        lag = self._lag(consumer)
        self.stats.lag = None if lag is None else sum(lag.values())
        if self.metrics is not None and lag is not None:
            self.metrics.set_lag(lag)
        log.info("%s", self.stats.line())

    @staticmethod
    def _lag(consumer) -> dict[tuple[str, int], int] | None:
        try:
            assignment = consumer.assignment()
            lag = {}
            for tp in consumer.position(assignment) if assignment else []:
                # Cached: the high watermark comes with every fetch; asking the broker costs
                # ~0.5 s per partition, time the loop would not spend on images.
                low, high = consumer.get_watermark_offsets(tp, cached=True)
                position = tp.offset if tp.offset >= 0 else low
                lag[(tp.topic, tp.partition)] = max(high - position, 0)
            return lag
        except Exception:  # lag is informative only
            return None
