"""The consumer loop: poll messages, start each image on the pools, send what finished to
MeiliSearch, confirm its tasks, write dead letters and announcements, and commit each
partition's offset only past messages that are finished. The rules of what may happen when are
consumer/ledger.py's; this module does the I/O they call for.

Why this order: Kafka must not be told a message is done before MeiliSearch has its document
(or the dead-letter topic has it, or the indexed topic has its announcement). A crash anywhere
before the commit means the message is delivered again; documents have stable ids, so the
redelivery replaces rather than duplicates.

Messages do not wait for each other: every image goes to the pools as soon as it is polled,
and a batch for MeiliSearch is whatever has finished since the last one. One slow image holds
back only its own partition's commits, never the other images' indexing.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass, field
from typing import Callable

from imgpipe import kafka
from imgpipe.deadletters import DeadLetterWriter, Stage
from imgpipe.errors import InfrastructureError, MessageError
from imgpipe.events import DELETE, ImageEvent, parse_event
from imgpipe.indexed import IndexedImage
from imgpipe.retry import Stopped
from imgpipe.settings import Settings

from consumer.announcer import IndexedAnnouncer
from consumer.handler import ImageHandler
from consumer.indexer import Indexer
from consumer.ledger import Batch, DeadLettered, Deleted, Indexed, Ledger, MessageRef, Outcome, Superseded, Work
from consumer.stats import Stats

log = logging.getLogger("consumer")

JOIN_WAIT_SECONDS = 60.0
# Threads per processing slot: the extra ones wait on S3 while the others use the CPU.
IO_THREADS_PER_WORKER = 4
# Messages polled and not yet finished, at most, in batches of CONSUMER_BATCH_SIZE.
BATCHES_IN_FLIGHT = 3
# Before revoked partitions go, their images still being processed finish their writes to S3,
# so the next owner's writes of the same objects land after ours.
REVOKE_WAIT_SECONDS = 60.0
# Nothing fetched for this long while the assigned partitions have lag: the fetch stalled.
STALL_SECONDS = 10.0
STALL_RECOVERIES = 5  # in a row without a message, then the consumer gives up (exit 1)
# The longest a turn of the loop waits for Kafka while images run or batches are in MeiliSearch.
BUSY_POLL_SECONDS = 0.02
# How often MeiliSearch is asked whether a batch's task finished (a small GET; its tasks of a few
# documents take 50-200 ms; every 25 ms cost more CPU for no latency measured).
SETTLED_CHECK_SECONDS = 0.05
# Under a backlog (more than half a batch of images polled and still running), how long a small
# batch waits to grow (consumer/ledger.py says why).
BACKLOG_BATCH_SECONDS = 1.0


@dataclass(eq=False)
class ImageConsumerLoop:
    """The loop and what it talks to, built by consumer/image_consumer.py's main()."""

    settings: Settings
    consumer: object  # a subscribed-to-be confluent_kafka Consumer
    pool: Executor  # threads that run ImageHandler (S3 and the processing pool)
    handler: ImageHandler
    indexer: Indexer
    dead_letters: DeadLetterWriter
    announcer: IndexedAnnouncer
    stop: threading.Event
    stats: Stats = field(default_factory=Stats)
    metrics: object = None  # imgpipe.metrics.ConsumerMetrics, or None
    max_idle_seconds: float | None = None
    status_interval: float = 10.0
    on_progress: Callable[[int], object] | None = None  # messages finished, for progress bars

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.settings.consumer_batch_size, self.settings.consumer_batch_ms / 1000,
                             backlog_running=self.settings.consumer_batch_size // 2,
                             backlog_batch_seconds=BACKLOG_BATCH_SECONDS)
        self.limit = BATCHES_IN_FLIGHT * self.settings.consumer_batch_size
        self._futures: dict[Work, Future] = {}  # started, outcome not collected yet
        self._commit_failed: dict[tuple[str, int], int] = {}  # offsets whose commit failed: tried again
        self._assigned: set[tuple[str, int]] = set()
        self._last_activity = self._last_status = self._last_lag_check = time.monotonic()
        self._stalls = 0  # recoveries in a row without a message since

    def run(self) -> Stats:
        self.consumer.subscribe([self.settings.kafka_topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        self._last_activity = time.monotonic()
        try:
            while not self.stop.is_set():
                messages = self._poll()
                try:
                    for msg in messages:
                        self._start(msg)
                    self._advance(idle=not messages)
                except Stopped:
                    log.warning("stopped during an outage: %d message(s) in flight are not committed and "
                                "will be delivered again", self.ledger.in_flight)
                    break
                if messages or self.ledger.in_flight:
                    self._last_activity = time.monotonic()
                    if messages:
                        self._stalls = 0
                elif self._idle_and_nothing_left():
                    log.info("no message for %.0f s and no lag: done", time.monotonic() - self._last_activity)
                    break
                self._report_status()
            else:
                try:
                    self._drain()  # a stop finishes what was polled, then commits it
                except Stopped:
                    log.warning("stopped during an outage: the messages in flight are not committed")
        finally:
            for future in self._futures.values():
                future.cancel()
        return self.stats

    def _poll(self) -> list:
        """What Kafka has now, up to a batch. While images run or batches wait for MeiliSearch the
        wait is short (BUSY_POLL_SECONDS), so that what finishes is sent and confirmed at once:
        with CONSUMER_BATCH_MS per turn, a trickle paid several turns of latency per image."""
        room = self.limit - self.ledger.in_flight
        if room <= 0:
            # Full: _advance() waits for what runs, or the ledger holds a backlog's batch for its
            # window; a short wait here keeps the loop from spinning meanwhile.
            self.stop.wait(BUSY_POLL_SECONDS)
            return []
        busy = bool(self._futures or self.ledger.batches or self.ledger.done_count)
        wait = BUSY_POLL_SECONDS if busy else self.settings.consumer_batch_ms / 1000
        return kafka.poll_batch(self.consumer, min(self.settings.consumer_batch_size, room), wait)

    def _advance(self, idle: bool) -> None:
        """Collect what is done; confirm the batches MeiliSearch finished; send the next one when
        it is due; commit what is finished."""
        full = self.ledger.in_flight >= self.limit
        self._collect()
        if full and not self.ledger.done_count and not self.ledger.batches:
            self._wait_for_oldest()  # nothing else can move
        while self.ledger.batches and self._settled(self.ledger.batches[0]):
            self._confirm(self.ledger.batches[0])
        if self.ledger.batch_due(time.monotonic(), full, idle):
            self._send()
        if self.ledger.batches and full:
            self._confirm(self.ledger.batches[0])  # waits: nothing else makes room

    # --- one message: start, then collect ------------------------------------------------------------
    def _start(self, msg) -> None:
        """Parse the event and hand it to the pools, after the event before it of the same object."""
        self.stats.message_polled()
        if self.metrics is not None:
            self.metrics.messages.inc()
        event, failure = None, None
        try:
            event = parse_event(msg.value())
        except MessageError as exc:
            failure = DeadLettered(exc.stage, exc.reason)
        except Exception as exc:  # whatever a message holds, it must not escape the loop
            failure = DeadLettered(Stage.VALIDATE, f"unreadable message ({type(exc).__name__}: {exc})")
        work = self.ledger.add(MessageRef(msg.topic(), msg.partition(), msg.offset()), event, msg, time.monotonic())
        if failure is not None:
            self.ledger.finish(work, failure)
            return
        if work.outcome is not None:
            return  # superseded on arrival: nothing to run
        run = self._delete if event.action == DELETE else self._process
        before = self._futures.get(work.waits_for)
        if before is None:
            self._futures[work] = self.pool.submit(run, event)
        else:
            # Not before the one before it, so their writes to S3 happen in the same order.
            self._futures[work] = self._after(before, run, event)

    def _after(self, before: Future, run, event: ImageEvent) -> Future:
        after = Future()

        def start(_):
            try:
                inner = self.pool.submit(run, event)
            except RuntimeError:  # the pool shuts down: the message is delivered again
                after.cancel()
                return
            inner.add_done_callback(lambda f: _copy(f, after))

        before.add_done_callback(start)
        return after

    def _process(self, event: ImageEvent) -> Outcome:
        if self.metrics is None:
            return Indexed(self.handler.handle(event))
        self.metrics.in_flight.inc()
        started = time.monotonic()
        try:
            return Indexed(self.handler.handle(event))
        finally:
            self.metrics.in_flight.dec()
            self.metrics.processing.observe(time.monotonic() - started)

    def _delete(self, event: ImageEvent) -> Outcome:
        return Deleted(self.handler.delete(event))

    def _collect(self, wait_for_all: bool = False) -> None:
        """Hand the outcomes of finished images to the ledger (of all of them, waiting, when asked)."""
        for work, future in list(self._futures.items()):
            if not wait_for_all and not future.done():
                continue
            del self._futures[work]
            self.ledger.finish(work, self._outcome(work, future))
            self.stats.image_finished()

    @staticmethod
    def _outcome(work: Work, future: Future) -> Outcome:
        try:
            return future.result()
        except MessageError as exc:
            return DeadLettered(exc.stage, exc.reason)
        except (Stopped, InfrastructureError):
            # Stopped: a stop came during an outage. InfrastructureError that escaped the
            # retries cannot be retried (a broken OpenCV install): stop, commit nothing.
            raise
        except Exception as exc:  # a bug on one odd image must not stop the stream
            log.exception("unexpected error on %s", work.ref)
            return DeadLettered(Stage.PROCESS, f"unexpected {type(exc).__name__}: {exc}")

    def _wait_for_oldest(self) -> None:
        running = self.ledger.running
        if running and running[0] in self._futures:
            self._futures[running[0]].exception()  # waits for it, without raising
            self._collect()

    # --- MeiliSearch, dead letters, announcements, commits -------------------------------------------
    def _settled(self, batch: Batch) -> bool:
        """Has MeiliSearch finished the batch's tasks? Asked at most every SETTLED_CHECK_SECONDS."""
        now = time.monotonic()
        if now - batch.checked_at < SETTLED_CHECK_SECONDS:
            return False
        batch.checked_at = now
        return self.indexer.settled(batch.task)

    def _send(self) -> None:
        batch = self.ledger.take_batch(time.monotonic())
        batch.task = self.indexer.submit(batch.documents, batch.deletion_ids)

    def _confirm(self, batch: Batch) -> None:
        """Wait for the batch's tasks; dead-letter what failed and announce what is indexed, wait
        until Kafka acknowledged both; then commit what is finished."""
        refused = self.indexer.confirm(batch.task, self.ledger.newer_ids(batch))
        self.ledger.confirm(batch, refused)
        reported = batch.reported()
        documents, deleted, superseded = [], 0, 0
        for work in reported:
            match work.outcome:
                case Indexed(document):
                    documents.append(document)
                    self.announcer.add(IndexedImage.of_document(document, work.event.sequencer))
                case Deleted(document_id):
                    deleted += 1
                    event = work.event
                    self.announcer.add(IndexedImage.deletion(document_id, event.bucket, event.key,
                                                             event.event_time, event.sequencer))
                case DeadLettered(stage, reason):
                    log.info("dead-letter %s: %s: %s", work.ref, stage, reason)
                    self.dead_letters.add(work.handle, MessageError(stage, reason))
                    self.stats.dead_letter_reasons[stage] += 1
                    if self.metrics is not None:
                        self.metrics.dead_letters.labels(stage).inc()
                case Superseded():
                    superseded += 1
        dead_lettered = self.dead_letters.flush()
        self.announcer.flush()
        self.stats.superseded += superseded
        latencies = self.stats.batch_confirmed(documents, dead_lettered, deleted)
        if self.metrics is not None:
            self.metrics.indexed.inc(len(documents))
            self.metrics.deleted.inc(deleted)
            self.metrics.batches.inc()
            for latency in latencies:
                self.metrics.searchable.observe(latency)
        self._commit()
        if self.on_progress:
            self.on_progress(len(reported))

    def _commit(self) -> None:
        offsets = {**self._commit_failed, **self.ledger.commit_offsets()}
        if not offsets:
            return
        try:
            kafka.commit(self.consumer, offsets)
            self._commit_failed = {}
        except kafka.KafkaError as exc:
            # The broker is away, or the group moved on (rebalance): tried again with the next
            # commit; meanwhile a crash or another member gets these messages again and replaces
            # the same documents. At-least-once, never lost.
            log.warning("commit failed (%s); trying again with the next commit", exc)
            self._commit_failed = offsets

    def _drain(self) -> None:
        """Finish every message polled so far."""
        self._collect(wait_for_all=True)
        if self.ledger.done_count:
            self._send()
        while self.ledger.batches:
            self._confirm(self.ledger.batches[0])

    # --- rebalances ------------------------------------------------------------------------------------
    # They run inside consume(). What is finished is committed before partitions go; what is not
    # is left to the next owner, which gets it again from the committed offset.
    def _on_assign(self, consumer, partitions) -> None:
        self._assigned |= {(p.topic, p.partition) for p in partitions}
        self._last_activity = time.monotonic()
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing")

    def _on_revoke(self, consumer, partitions) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        if gone and not self.stop.is_set():
            self._commit()
        running = [self._futures[w] for w in self._give_up(gone, "revoked") if w in self._futures]
        if running:
            wait(running, timeout=REVOKE_WAIT_SECONDS)

    def _on_lost(self, consumer, partitions) -> None:
        # Lost, not revoked: another member may own them already; nothing can be committed.
        self._give_up({(p.topic, p.partition) for p in partitions}, "lost")

    def _give_up(self, gone: set[tuple[str, int]], how: str) -> list[Work]:
        self._assigned -= gone
        self._last_activity = time.monotonic()
        self._commit_failed = {tp: offset for tp, offset in self._commit_failed.items() if tp not in gone}
        dropped = self.ledger.drop(gone)
        log.log(logging.WARNING if how == "lost" else logging.INFO, "%s %s%s", how,
                ", ".join(f"{t}[{p}]" for t, p in sorted(gone)) or "nothing",
                f"; {len(dropped)} message(s) in flight are left to the next owner" if dropped else "")
        return dropped

    # --- idle, stalls, status ------------------------------------------------------------------------------
    def _idle_and_nothing_left(self) -> bool:
        """--max-idle-seconds ends the consumer only when nothing is in flight (the caller knows)
        and the assigned partitions have no lag, all committed. Quiet with lag is a stall: logged
        and recovered, whether or not an idle limit is set. Until partitions are assigned (a
        restarted group can wait for a dead member's session to expire) the consumer is
        waiting, not idle, up to JOIN_WAIT_SECONDS."""
        now = time.monotonic()
        quiet = now - self._last_activity
        if self.max_idle_seconds is not None:
            limit = self.max_idle_seconds if self._assigned else max(self.max_idle_seconds, JOIN_WAIT_SECONDS)
            if quiet >= limit:
                return not self._assigned or self._no_lag()
        if quiet >= STALL_SECONDS and now - self._last_lag_check >= STALL_SECONDS and self._assigned:
            self._no_lag()
        return False

    def _no_lag(self) -> bool:
        """True when every assigned partition is committed up to its high watermark; otherwise the
        fetch has stalled: log it and restart it."""
        self._last_lag_check = time.monotonic()
        self._commit()  # what failed to commit before (the broker was away)
        lag = kafka.committed_lag(self.consumer)
        if lag is None:
            log.warning("cannot read the committed offsets and watermarks (broker unreachable?); waiting")
            self._last_activity = time.monotonic()
            return False
        behind = {tp: n for tp, n in lag.items() if n}
        if not behind:
            return True
        self._stalls += 1
        described = ", ".join(f"{t}[{p}] {n}" for (t, p), n in sorted(behind.items()))
        if self._stalls > STALL_RECOVERIES:
            raise InfrastructureError("kafka", f"the fetch stalled {STALL_RECOVERIES} times in a row with lag "
                                               f"({described}); the messages stay in the topic, uncommitted")
        log.warning("fetch stalled: no message for %.0f s with lag %d (%s); restarting the fetch from the "
                    "committed offsets (recovery %d of %d)", time.monotonic() - self._last_activity,
                    sum(behind.values()), described, self._stalls, STALL_RECOVERIES)
        kafka.restart_fetch(self.consumer, [self.settings.kafka_topic], behind, hard=self._stalls > 1,
                            on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        self._last_activity = time.monotonic()
        return False

    def _report_status(self) -> None:
        if time.monotonic() - self._last_status < self.status_interval:
            return
        self._last_status = time.monotonic()
        lag = kafka.cached_lag(self.consumer)
        self.stats.lag = None if lag is None else sum(lag.values())
        if self.metrics is not None and lag is not None:
            self.metrics.set_lag(lag)
        log.info("%s", self.stats.line())


def _copy(source: Future, target: Future) -> None:
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())
