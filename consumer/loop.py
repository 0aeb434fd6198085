"""The consumer loop: poll a batch, process it on a pool of workers, index it, dead-letter what
is broken, and only then commit the batch's offsets.

Why this order: Kafka must not be told a message is done before MeiliSearch has its document
(or the dead-letter topic has it). A crash anywhere before the commit means the batch is
delivered again; documents have stable ids, so the redelivery replaces rather than duplicates.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from imgpipe import kafka, s3
from imgpipe.errors import InfrastructureError, MessageError
from imgpipe.events import parse_event
from imgpipe.retry import Stopped
from imgpipe.settings import Settings

from consumer.deadletter import DeadLetterWriter
from consumer.handler import ImageHandler
from consumer.indexer import Indexer
from consumer.stats import Stats
from consumer.storage import ObjectStore
from consumer.workers import ProcessingPool

log = logging.getLogger("consumer")

JOIN_WAIT_SECONDS = 60.0
# Threads per processing slot: the extra ones wait on S3 while the others use the CPU.
IO_THREADS_PER_WORKER = 4


class BatchConsumer:
    def __init__(self, settings: Settings, workers: int, max_idle_seconds: float | None = None,
                 status_interval: float = 10.0, on_batch=None):
        self.settings = settings
        self.workers = workers
        self.max_idle_seconds = max_idle_seconds
        self.status_interval = status_interval
        self.on_batch = on_batch  # called with the number of messages finished, for progress bars
        self.stop = threading.Event()
        self.stats = Stats()
        self._last_status = time.monotonic()
        self._last_activity = time.monotonic()
        self._assigned: set[tuple[str, int]] = set()

    # Rebalance callbacks run inside consume(), between batches: everything consumed before
    # has been committed by then, so a revoked partition has nothing left to commit.
    def _on_assign(self, consumer, partitions) -> None:
        self._assigned |= {(p.topic, p.partition) for p in partitions}
        self._last_activity = time.monotonic()
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing")

    def _on_revoke(self, consumer, partitions) -> None:
        self._assigned -= {(p.topic, p.partition) for p in partitions}
        self._last_activity = time.monotonic()
        log.info("revoked %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing")

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
        store = ObjectStore(s3.client(self.settings, pool_size=self.workers * IO_THREADS_PER_WORKER + 4),
                            self.settings.s3_bucket, self.stop)
        store.check_output_bucket()
        indexer = Indexer(self.settings, self.stop)
        indexer.ensure_index()
        processing = ProcessingPool(self.settings, self.workers)
        handler = ImageHandler(self.settings, store, processing)
        dead_letters = DeadLetterWriter(self.settings, self.stop)
        consumer = kafka.consumer(self.settings, **{"max.poll.interval.ms": 900_000})
        consumer.subscribe([self.settings.kafka_topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_revoke)
        self._last_activity = time.monotonic()
        try:
            with ThreadPoolExecutor(max_workers=self.workers * IO_THREADS_PER_WORKER,
                                    thread_name_prefix="image") as pool:
                while not self.stop.is_set():
                    messages = consumer.consume(num_messages=self.settings.consumer_batch_size,
                                                timeout=self.settings.consumer_batch_ms / 1000)
                    messages = [m for m in messages if self._usable(m)]
                    if messages:
                        self._last_activity = time.monotonic()
                        try:
                            self._process_batch(consumer, pool, handler, indexer, dead_letters, messages)
                        except Stopped:
                            log.warning("stopped during an outage: the last batch of %d message(s) is not "
                                        "committed and will be delivered again", len(messages))
                            break
                        self._last_activity = time.monotonic()
                    elif self._idle_long_enough():
                        log.info("no message for %.0f s: done", time.monotonic() - self._last_activity)
                        break
                    self._maybe_report_status(consumer)
        finally:
            processing.close(wait=not self.stop.is_set())
            dead_letters.close()
            consumer.close()  # leaves the group at once, so partitions move without waiting
            self.stats.worker_peak_rss_mb = processing.peak_worker_rss_mb
            self.stats.dead_letters_minimal = dead_letters.counts.minimal
            self.stats.dead_letters_refused = dead_letters.counts.refused
        return self.stats

    def _usable(self, msg) -> bool:
        if msg.error() is None:
            return True
        log.warning("Kafka reported: %s", msg.error())
        return False

    def _process_batch(self, consumer, pool, handler, indexer, dead_letters, messages) -> None:
        self.stats.batch_started(len(messages))
        outcomes: list[object] = [None] * len(messages)  # a document or a MessageError, in message order
        futures = {}
        for i, msg in enumerate(messages):
            try:
                event = parse_event(msg.value())
            except MessageError as exc:
                outcomes[i] = exc
                continue
            except Exception as exc:  # whatever a message holds, it must not escape the loop
                outcomes[i] = MessageError("validate", f"unreadable message ({type(exc).__name__}: {exc})")
                continue
            futures[i] = pool.submit(handler.handle, event)
        for i, future in futures.items():
            try:
                outcomes[i] = future.result()
            except MessageError as exc:
                outcomes[i] = exc
            except (Stopped, InfrastructureError):
                # Stopped: a stop came during an outage. InfrastructureError that escaped the
                # retries cannot be retried (a broken OpenCV install): stop, commit nothing.
                for other in futures.values():
                    other.cancel()
                raise
            except Exception as exc:  # a bug on one odd image must not stop the stream
                log.exception("unexpected error on %s[%d]@%d", messages[i].topic(), messages[i].partition(),
                              messages[i].offset())
                outcomes[i] = MessageError("process", f"unexpected {type(exc).__name__}: {exc}")

        # Keep message order: two events of one object in a batch must end with the later one.
        indexed_at = [i for i, o in enumerate(outcomes) if isinstance(o, dict)]
        if indexed_at:
            # MeiliSearch may refuse some documents (found by splitting the batch): dead-letter those.
            for position, reason in indexer.add([outcomes[i] for i in indexed_at]).items():
                outcomes[indexed_at[position]] = MessageError("index", reason)
        documents = [o for o in outcomes if isinstance(o, dict)]
        for msg, outcome in zip(messages, outcomes):
            if isinstance(outcome, MessageError):
                log.info("dead-letter %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), outcome)
                dead_letters.add(msg, outcome)
                self.stats.dead_letter_reasons[outcome.stage] += 1
        written = dead_letters.flush()
        self._commit(consumer, messages)
        self.stats.batch_committed(documents, written)
        if self.on_batch:
            self.on_batch(len(messages))

    def _commit(self, consumer, messages) -> None:
        next_offsets: dict[tuple[str, int], int] = {}
        for msg in messages:
            key = (msg.topic(), msg.partition())
            next_offsets[key] = max(next_offsets.get(key, 0), msg.offset() + 1)
        try:
            kafka.commit(consumer, next_offsets)
        except kafka.KafkaError as exc:
            # The group moved on (rebalance): another member will get these messages again and
            # replace the same documents. At-least-once, never lost.
            log.warning("commit failed (%s); the batch may be delivered again", exc)

    def _maybe_report_status(self, consumer) -> None:
        if time.monotonic() - self._last_status < self.status_interval:
            return
        self._last_status = time.monotonic()
        self.stats.lag = self._lag(consumer)
        log.info("%s", self.stats.line())

    @staticmethod
    def _lag(consumer) -> int | None:
        try:
            assignment = consumer.assignment()
            if not assignment:
                return 0
            total = 0
            for tp in consumer.position(assignment):
                # Cached: the high watermark comes with every fetch; asking the broker costs
                # ~0.5 s per partition, time the loop would not spend on images.
                low, high = consumer.get_watermark_offsets(tp, cached=True)
                position = tp.offset if tp.offset >= 0 else low
                total += max(high - position, 0)
            return total
        except Exception:  # lag is informative only
            return None
