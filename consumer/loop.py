"""The consumer loop: poll messages, process each image on the pools, index the documents in
batches, dead-letter what is broken, and commit a partition's offset only past messages that
are finished.

Why this order: Kafka must not be told a message is done before MeiliSearch has its document
(or the dead-letter topic has it). A crash anywhere before the commit means the message is
delivered again; documents have stable ids, so the redelivery replaces rather than duplicates.

Messages do not wait for each other: every image goes to the pools as soon as it is polled,
and a batch for MeiliSearch is whatever has finished since the last one. One slow image holds
back only its own partition's commits (each partition commits up to its oldest unfinished
message), never the other images' indexing. Order is kept where it matters, per object: an
event waits for the event before it of the same object, and only the last one is indexed;
MeiliSearch applies the batches' tasks in the order they were sent.
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
from imgpipe.indexed import IndexedImage
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
# Messages polled and not yet finished, at most, in batches of CONSUMER_BATCH_SIZE.
BATCHES_IN_FLIGHT = 3


@dataclass(eq=False)
class Work:
    """One polled message, from poll to commit."""

    msg: object
    event: ImageEvent | None = None
    future: Future | None = None
    outcome: object = None  # a document, a deleted id (str), a MessageError; None until known
    superseded: bool = False  # a later event of the same object came: this one is not indexed
    started: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple[str, str] | None:
        return (self.event.bucket, self.event.key) if self.event is not None else None

    @property
    def partition(self) -> tuple[str, int]:
        return self.msg.topic(), self.msg.partition()


@dataclass
class Group:
    """Works whose documents and deletions went to MeiliSearch in one task (each)."""

    works: list[Work]
    submitted: Submitted
    checked_at: float = 0.0  # when MeiliSearch was last asked whether the tasks are done


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
        self._consumer = None
        # Every work polled and not yet committed, per partition, in offset order.
        self._by_partition: dict[tuple[str, int], deque[Work]] = {}
        self._processing: list[Work] = []  # handed to the pools, outcome not collected yet
        self._done: list[Work] = []  # outcome known, not yet sent to MeiliSearch
        self._groups: deque[Group] = deque()  # sent to MeiliSearch, not yet confirmed, oldest first
        self._finished: set[int] = set()  # id() of works indexed or dead-lettered, not yet committed
        self._last_of_object: dict[tuple[str, str], Work] = {}  # the newest unfinished event per object
        self._in_flight = 0
        self._announcer = None  # a producer to KAFKA_INDEXED_TOPIC, when set

    # Rebalance callbacks run inside consume(). Before partitions go, every message polled so
    # far is finished and committed, so the member that gets them next starts after our commit.
    def _on_assign(self, consumer, partitions) -> None:
        self._assigned |= {(p.topic, p.partition) for p in partitions}
        self._last_activity = time.monotonic()
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing")

    def _on_revoke(self, consumer, partitions) -> None:
        if partitions:
            try:
                self._drain()
            except Stopped:
                pass  # what is not committed is delivered again
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
        client = s3.client(self.settings, pool_size=threads + 4)
        fast = s3.FastObjects(self.settings, client) if self.settings.s3_fast_path else None
        store = ObjectStore(client, self.settings.s3_bucket, self.stop, fast)
        store.check_output_bucket()
        self._indexer = Indexer(self.settings, self.stop)
        self._indexer.ensure_index()
        processing = ProcessingPool(self.settings, self.workers)
        self._handler = ImageHandler(self.settings, store, processing)
        self._dead_letters = DeadLetterWriter(self.settings, self.stop)
        # The enrichment stages learn from KAFKA_INDEXED_TOPIC what MeiliSearch confirmed.
        self._announcer = None
        if self.settings.kafka_indexed_topic:
            kafka.ensure_topics(self.settings, [self.settings.kafka_indexed_topic])
            self._announcer = kafka.producer(self.settings, **{"linger.ms": 5})
        if self.metrics is not None:
            retry.retry_observers.append(self.metrics.retried)
        consumer = self._consumer = kafka.consumer(self.settings, **{"max.poll.interval.ms": 900_000})
        consumer.subscribe([self.settings.kafka_topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        self._last_activity = time.monotonic()
        limit = BATCHES_IN_FLIGHT * self.settings.consumer_batch_size
        try:
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="image") as pool:
                self._pool = pool
                while not self.stop.is_set():
                    messages = []
                    if self._in_flight < limit:
                        messages = consumer.consume(num_messages=min(self.settings.consumer_batch_size,
                                                                     limit - self._in_flight),
                                                    timeout=self.settings.consumer_batch_ms / 1000)
                        messages = [m for m in messages if self._usable(m)]
                    try:
                        for msg in messages:
                            self._start(msg)
                        self._step(full=self._in_flight >= limit, idle=not messages)
                    except Stopped:
                        log.warning("stopped during an outage: %d message(s) in flight are not committed and "
                                    "will be delivered again", self._in_flight)
                        break
                    if messages or self._in_flight:
                        self._last_activity = time.monotonic()
                    elif self._idle_long_enough():
                        log.info("no message for %.0f s: done", time.monotonic() - self._last_activity)
                        break
                    self._maybe_report_status(consumer)
                else:
                    try:
                        self._drain()  # a stop finishes what was polled, then commits it
                    except Stopped:
                        log.warning("stopped during an outage: the messages in flight are not committed")
        finally:
            for work in self._processing:
                if work.future is not None:
                    work.future.cancel()
            processing.close(wait=not self.stop.is_set())
            self._dead_letters.close()
            if self._announcer is not None:
                self._announcer.flush(10)
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

    # --- one message: start, then collect ---------------------------------------------------------
    def _start(self, msg) -> None:
        """Parse the event and hand it to the pools (after the event before it of the same
        object, which it supersedes); returns at once."""
        self.stats.batch_started(1)
        if self.metrics is not None:
            self.metrics.messages.inc()
        work = Work(msg)
        self._by_partition.setdefault(work.partition, deque()).append(work)
        self._in_flight += 1
        try:
            work.event = parse_event(msg.value())
        except MessageError as exc:
            work.outcome = exc
        except Exception as exc:  # whatever a message holds, it must not escape the loop
            work.outcome = MessageError("validate", f"unreadable message ({type(exc).__name__}: {exc})")
        if work.event is None:
            self._done.append(work)
            return
        before = self._last_of_object.get(work.key)
        if before is not None and before.event.sequencer and work.event.sequencer and \
                compare_sequencers(work.event.sequencer, before.event.sequencer) < 0:
            work.superseded = True  # an older change of the object, delivered late: nothing to do
            self._done.append(work)
            return
        self._last_of_object[work.key] = work
        run = self._handler.delete if work.event.action == DELETE else self._timed
        if before is None:
            work.future = self._pool.submit(run, work.event)
        else:
            # Not before the one before it, so their writes to S3 happen in the same order; and
            # that one is not indexed at all unless it was sent to MeiliSearch already (then
            # MeiliSearch applies the two in order).
            if before in self._processing or before in self._done:
                before.superseded = True
            work.future = Future()
            self._chain(before.future, work.future, run, work.event)
        self._processing.append(work)

    def _chain(self, before: Future, after: Future, run, event: ImageEvent) -> None:
        def start(_):
            try:
                inner = self._pool.submit(run, event)
            except RuntimeError:  # the pool shuts down: the message is delivered again
                after.cancel()
                return
            inner.add_done_callback(lambda f: _copy(f, after))

        before.add_done_callback(start)

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

    def _collect(self, wait: bool) -> None:
        """Move works whose images are done to `_done` (all of them, waiting, when `wait`)."""
        still = []
        for work in self._processing:
            if not wait and not work.future.done():
                still.append(work)
                continue
            try:
                work.outcome = work.future.result()
            except MessageError as exc:
                work.outcome = exc
            except (Stopped, InfrastructureError):
                # Stopped: a stop came during an outage. InfrastructureError that escaped the
                # retries cannot be retried (a broken OpenCV install): stop, commit nothing.
                raise
            except Exception as exc:  # a bug on one odd image must not stop the stream
                msg = work.msg
                log.exception("unexpected error on %s[%d]@%d", msg.topic(), msg.partition(), msg.offset())
                work.outcome = MessageError("process", f"unexpected {type(exc).__name__}: {exc}")
            self._done.append(work)
        self._processing = still

    # --- batches for MeiliSearch, dead letters, commits ---------------------------------------------
    # MeiliSearch spends ~0.2 s of CPU on each batch it indexes, whatever its size (measured: 12 ms
    # per document in tasks of 25, 2 ms in tasks of 200, 0.7 ms when tasks queue up and it merges
    # them): so under load the documents go in large batches, sent while earlier ones are still
    # queued, and a small batch goes only when MeiliSearch has nothing else (a trickle, latency).
    def _step(self, full: bool, idle: bool) -> None:
        """Collect what is done; confirm the batches MeiliSearch finished; send the next one when
        it is due; commit what is finished."""
        self._collect(wait=False)
        if full and not self._done and not self._groups:
            self._collect_oldest()  # nothing else can move: wait for the oldest image
        while self._groups and self._settled(self._groups[0]):
            self._confirm(self._groups.popleft())
        if self._done:
            waited = time.monotonic() - self._done[0].started
            if (len(self._done) >= self.settings.consumer_batch_size or full or (idle and not self._processing)
                    or (not self._groups and waited >= self.settings.consumer_batch_ms / 1000)):
                self._send()
        if self._groups and (full or (idle and not self._processing)):
            self._confirm(self._groups.popleft())  # room for more, or a trickle made searchable now

    def _settled(self, group: Group) -> bool:
        """Has MeiliSearch finished the group's tasks? Asked at most every 50 ms."""
        now = time.monotonic()
        if now - group.checked_at < 0.05:
            return False
        group.checked_at = now
        return self._indexer.settled(group.submitted)

    def _collect_oldest(self) -> None:
        if self._processing:
            self._processing[0].future.exception()  # waits for it, without raising
            self._collect(wait=False)

    def _send(self) -> None:
        works, self._done = self._done, []
        documents = [w.outcome for w in works if isinstance(w.outcome, dict) and not w.superseded]
        deletions = [w.outcome for w in works if isinstance(w.outcome, str) and not w.superseded]
        self._groups.append(Group(works, self._indexer.submit(documents, deletions)))

    def _later_than(self, group: Group) -> list[Work]:
        """Works sent or done after `group`: their documents are newer than the group's."""
        later = [w for g in self._groups if g is not group for w in g.works]
        return [w for w in later + self._done if not w.superseded]

    def _confirm(self, group: Group) -> None:
        """The group's tasks confirmed; refused documents and failed messages dead-lettered and
        acknowledged; then what is finished is committed."""
        later = self._later_than(group)
        superseded = frozenset(w.outcome["id"] if isinstance(w.outcome, dict) else w.outcome for w in later
                               if isinstance(w.outcome, (dict, str)))
        indexed = [w for w in group.works if isinstance(w.outcome, dict) and not w.superseded]
        for position, reason in self._indexer.confirm(group.submitted, superseded).items():
            indexed[position].outcome = MessageError("index", reason)
        written_before = self._dead_letters.counts.written
        for work in group.works:
            if isinstance(work.outcome, MessageError) and not work.superseded:
                msg = work.msg
                log.info("dead-letter %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), work.outcome)
                self._dead_letters.add(msg, work.outcome)
                self.stats.dead_letter_reasons[work.outcome.stage] += 1
                if self.metrics is not None:
                    self.metrics.dead_letters.labels(work.outcome.stage).inc()
        self._dead_letters.flush()
        documents = [w.outcome for w in group.works if isinstance(w.outcome, dict) and not w.superseded]
        deleted = sum(1 for w in group.works if isinstance(w.outcome, str) and not w.superseded)
        self.stats.superseded += sum(1 for w in group.works if w.superseded)
        latencies = self.stats.batch_committed(documents, self._dead_letters.counts.written - written_before, deleted)
        if self.metrics is not None:
            self.metrics.indexed.inc(len(documents))
            self.metrics.deleted.inc(deleted)
            self.metrics.batches.inc()
            for latency in latencies:
                self.metrics.searchable.observe(latency)
        for work in group.works:
            self._finished.add(id(work))
            if work.key is not None and self._last_of_object.get(work.key) is work:
                del self._last_of_object[work.key]
        self._announce(group)
        self._commit_finished()
        if self.on_batch:
            self.on_batch(len(group.works))

    def _announce(self, group: Group) -> None:
        """One IndexedImage per document or deletion MeiliSearch confirmed, acknowledged by the
        broker before the offsets are committed (a crash in between announces again: enrichers
        are idempotent)."""
        if self._announcer is None:
            return
        for work in group.works:
            if work.superseded or work.event is None:
                continue
            if isinstance(work.outcome, dict):
                announcement = IndexedImage.of_document(work.outcome, work.event.sequencer)
            elif isinstance(work.outcome, str):
                announcement = IndexedImage.deletion(work.outcome, work.event.bucket, work.event.key,
                                                     work.event.event_time, work.event.sequencer)
            else:
                continue
            while True:
                try:
                    self._announcer.produce(self.settings.kafka_indexed_topic, key=announcement.message_key,
                                            value=announcement.to_json())
                    break
                except BufferError:
                    self._announcer.poll(0.2)

        def flushed() -> None:
            remaining = self._announcer.flush(10)
            if remaining:
                raise InfrastructureError("kafka", f"{remaining} announcement(s) to "
                                          f"{self.settings.kafka_indexed_topic} not acknowledged yet")

        retry.retry_until_stopped(flushed, self.stop)

    def _commit_finished(self) -> None:
        """Per partition, commit past the finished works at its head (its oldest unfinished
        message, still processing or waiting to be indexed, stops it)."""
        next_offsets: dict[tuple[str, int], int] = {}
        for partition, works in self._by_partition.items():
            while works and id(works[0]) in self._finished:
                work = works.popleft()
                self._finished.discard(id(work))
                self._in_flight -= 1
                next_offsets[partition] = work.msg.offset() + 1
        if not next_offsets:
            return
        try:
            kafka.commit(self._consumer, next_offsets)
        except kafka.KafkaError as exc:
            # The group moved on (rebalance): another member will get these messages again and
            # replace the same documents. At-least-once, never lost.
            log.warning("commit failed (%s); these messages may be delivered again", exc)

    def _drain(self) -> None:
        """Finish every message polled so far."""
        self._collect(wait=True)
        if self._done:
            self._send()
        while self._groups:
            self._confirm(self._groups.popleft())

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


def _copy(source: Future, target: Future) -> None:
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())
