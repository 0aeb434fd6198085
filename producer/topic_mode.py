"""The notifications producer: read the S3 server's bucket notifications from a Kafka topic (as
versitygw, MinIO or Ceph RGW publish them), send one image event per changed object to
KAFKA_TOPIC, and only then commit the notifications' offsets.

Why this order: offsets committed before Kafka acknowledged the events would lose them if the
producer died in between; a batch read again is only sent again, which is harmless (the consumer
is idempotent). A notification that cannot be read is dead-lettered with its reason.

Why the bucket judges, not the notification: such a server promises less than AWS. versitygw
sends each notification from its own goroutine (two changes of one key can reach the topic in
either order), its `sequencer` is a counter that restarts with the server, and its eventTime has
whole seconds. So a notification only says *which* object changed: its state is read back with one
HEAD (exists: an upsert with the real size, ETag and LastModified; gone: a delete), and no
sequencer is forwarded. Whatever order the notifications arrive in, the last event of a key says
what the bucket holds. What a notification never said (Kafka was down) producer/reconcile.py finds.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from imgpipe import kafka, s3
from imgpipe.deadletters import VALUE_TRUNCATED, Stage, dead_letter_headers
from imgpipe.errors import MessageError
from imgpipe.events import DELETE, MAX_EVENT_BYTES, ImageEvent, event_for_object, parse_iso, to_iso
from imgpipe.retry import Stopped, retry_until_stopped
from imgpipe.settings import Settings
from producer.notifications import MalformedNotification, parse_notification
from producer.sender import EventSender

log = logging.getLogger("producer")

FLUSH_SECONDS = 30.0  # how long a batch's events may wait for Kafka before the batch is read again
BATCH_MESSAGES = 500
STATUS_EVERY_SECONDS = 10.0
MAX_NOTIFICATION_BYTES = 256 * 1024  # a notification is a few hundred bytes: anything far larger is junk
DEAD_LETTER_STAGE = Stage.NOTIFICATION


def refined_event_time(event_time: str, timestamp: tuple[int, int]) -> str:
    """The notification's eventTime, to the millisecond where the server wrote whole seconds
    (versitygw): the Kafka message's CreateTime when it falls in that second (the server wrote it
    right after the change). Latency measured from a time cut to the second would be up to 1 s long."""
    moment = parse_iso(event_time)
    kind, millis = timestamp
    if moment is None or moment.microsecond or kind != 1 or millis <= 0:  # 1: TIMESTAMP_CREATE_TIME
        return event_time
    created = datetime.fromtimestamp(millis / 1000, tz=timezone.utc)
    return to_iso(created) if 0 <= (created - moment).total_seconds() < 1 else event_time


def notifications_group(settings: Settings) -> str:
    """The consumer group that reads the notifications: the image consumer's group name, suffixed."""
    return f"{settings.kafka_consumer_group}-notifications"


def skip_backlog(settings: Settings, topic: str, group: str) -> dict[int, int]:
    """Commit `group`'s offsets to the end of `topic`: what the topic holds now is not sent (a
    fresh start; reconcile covers it). Returns partition -> offset committed."""
    ends = kafka.end_offsets(settings, topic)
    reader = kafka.consumer(settings, group_id=group)
    try:
        kafka.commit(reader, {(topic, p): offset for p, offset in ends.items()})
    finally:
        reader.close()
    return ends


@dataclass
class TopicReport:
    read: int = 0  # notification messages
    test_events: int = 0
    ignored: int = 0  # records that are no object change, or outside the bucket or prefix
    dead_lettered: int = 0  # malformed notifications
    superseded: int = 0  # later notifications of the same key in one batch: one event says its state
    corrected: int = 0  # the bucket said otherwise than the notification (created but gone, removed but there)
    upserts: int = 0
    deletes: int = 0
    failed: int = 0  # events or dead letters Kafka refused or did not acknowledge in time (batch read again)
    committed: int = 0  # notifications whose offsets are committed
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> str:
        seconds = time.monotonic() - self.started
        return (f"read {self.read} notification(s), sent {self.upserts} upsert(s) and {self.deletes} delete(s) "
                f"({self.corrected} corrected by the bucket, {self.superseded} superseded), {self.failed} failed; "
                f"{self.test_events} test event(s), {self.ignored} record(s) ignored, {self.dead_lettered} "
                f"dead-lettered; {self.committed} committed, in {seconds:.1f} s")

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in (
            "read", "test_events", "ignored", "dead_lettered", "superseded", "corrected", "upserts", "deletes",
            "failed", "committed")}


class TopicProducer:
    def __init__(self, settings: Settings, topic: str, bucket: str, prefix: str, max_idle_seconds: float | None,
                 stop: threading.Event, metrics=None, group: str | None = None):
        self.settings = settings
        self.topic = topic
        self.bucket = bucket
        self.prefix = prefix
        self.max_idle_seconds = max_idle_seconds
        self.stop = stop
        self.group = group or notifications_group(settings)
        self.url_encoded_keys = settings.s3_notifications_key_encoding == "url"
        self.report = TopicReport()
        self.s3 = s3.client(settings)
        self.sender = EventSender(settings, metrics=metrics)
        self.dead_letters = kafka.producer(settings, **{"linger.ms": 5})
        self.reader = kafka.consumer(settings, group_id=self.group)
        self._last_status = time.monotonic()

    # --- the loop --------------------------------------------------------------------------------
    def run(self) -> TopicReport:
        # Logged as the consumer logs it: a notification PUT before the group assigned the topic
        # waits for the join (bench/upload_latency.py starts uploading only after this line).
        self.reader.subscribe([self.topic], on_assign=lambda _c, partitions: log.info(
            "assigned %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"))
        log.info("reading S3 notifications of s3://%s/%s from Kafka topic %s (group %s); Ctrl-C to stop",
                 self.bucket, self.prefix, self.topic, self.group)
        idle_since = time.monotonic()
        try:
            while not self.stop.is_set():
                messages = self._next_batch()
                if messages:
                    self._handle_until_done(messages)
                    idle_since = time.monotonic()
                elif self.max_idle_seconds is not None and time.monotonic() - idle_since >= self.max_idle_seconds:
                    log.info("no notification for %.0f s: done", time.monotonic() - idle_since)
                    break
                self._status_line()
        finally:
            self.sender.flush(timeout=FLUSH_SECONDS)
            self.dead_letters.flush(FLUSH_SECONDS)
            self.reader.close()
        return self.report

    def _next_batch(self) -> list:
        """What is there now, up to BATCH_MESSAGES, waiting up to 1 s for the first."""
        return kafka.poll_batch(self.reader, BATCH_MESSAGES, 1.0)

    def _handle_until_done(self, messages: list) -> None:
        """Handle one batch; if Kafka did not acknowledge all of it, read it again from the last
        commit (a new member of the group starts there) after a pause, until it is done or a stop
        comes. Nothing is committed past a failure."""
        pause = 1.0
        while not self.handle(messages):
            log.warning("Kafka did not acknowledge every event of this batch: reading it again in %.0f s", pause)
            self.reader.close()
            if self.stop.wait(pause):
                self.reader = kafka.consumer(self.settings, group_id=self.group)  # run() closes it
                return
            pause = min(pause * 2, 30.0)
            self.reader = kafka.consumer(self.settings, group_id=self.group)
            self.reader.subscribe([self.topic])
            messages = []
            while not messages and not self.stop.is_set():
                messages = self._next_batch()

    def _status_line(self) -> None:
        if time.monotonic() - self._last_status < STATUS_EVERY_SECONDS:
            return
        self._last_status = time.monotonic()
        r = self.report
        print(f"producer: {r.read} notification(s) read, {r.upserts} upsert(s), {r.deletes} delete(s), "
              f"{r.ignored} ignored, {r.dead_lettered} dead-lettered, lag {self._lag()}", file=sys.stderr, flush=True)

    def _lag(self) -> str:
        try:
            lag = 0
            for tp in self.reader.position(self.reader.assignment()):
                high = self.reader.get_watermark_offsets(tp, timeout=2)[1]
                lag += max(0, high - tp.offset) if tp.offset >= 0 else high
            return str(lag)
        except Exception:  # the status line must never stop the producer
            return "?"

    # --- one batch -------------------------------------------------------------------------------
    def handle(self, messages: list) -> bool:
        """Parse, dead-letter what is malformed, send the bucket's state of each key the batch
        names, wait for Kafka, then commit. True when the batch is done (committed)."""
        latest: dict[tuple[str, str], ImageEvent] = {}  # the last notification of each key
        read = ignored = tests = superseded = 0
        letters: list[tuple[object, str]] = []
        for msg in messages:
            read += 1
            try:
                notification = self._parse(msg.value())
            except MalformedNotification as exc:
                letters.append((msg, str(exc)))
                continue
            tests += notification.test_event
            ignored += len(notification.skipped)
            for event in notification.events:
                event = replace(event, event_time=refined_event_time(event.event_time, msg.timestamp()))
                if event.bucket == self.bucket and event.key.startswith(self.prefix):
                    where = (event.bucket, event.key)
                    if where in latest:
                        superseded += 1
                    latest.pop(where, None)
                    latest[where] = event  # re-inserted: keys keep the order of their last notification
                else:
                    ignored += 1
        acknowledged: list[bool] = []
        sent: list[tuple[ImageEvent, bool]] = []  # (event, the bucket said otherwise than the notification)
        try:
            for event in latest.values():
                confirmed = self._as_the_bucket_says(event)
                sent.append((confirmed, confirmed.action != event.action))
                acknowledged.append(False)
                self.sender.send(confirmed, on_result=lambda ok, i=len(acknowledged) - 1: acknowledged.__setitem__(i, ok))
        except Stopped:
            log.warning("stopped while S3 was failing: this batch of notifications is not committed")
            return True  # nothing more to do here; the next start reads it again
        for msg, reason in letters:
            self._dead_letter(msg, reason, acknowledged)
        self.sender.flush(timeout=FLUSH_SECONDS)
        self.dead_letters.flush(FLUSH_SECONDS)
        if not all(acknowledged):
            self.report.failed += acknowledged.count(False)
            return False
        self.report.read += read
        self.report.ignored += ignored
        self.report.test_events += tests
        self.report.dead_lettered += len(letters)
        self.report.superseded += superseded
        self.report.corrected += sum(1 for _, corrected in sent if corrected)
        self.report.deletes += sum(1 for event, _ in sent if event.action == DELETE)
        self.report.upserts += sum(1 for event, _ in sent if event.action != DELETE)
        next_offsets: dict[tuple[str, int], int] = {}
        for msg in messages:
            next_offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
        try:
            retry_until_stopped(lambda: kafka.commit(self.reader, next_offsets), self.stop)
        except Stopped:
            log.warning("stopped while Kafka was failing: this batch is read (and sent) again on the next start")
            return True
        self.report.committed += read
        return True

    def _parse(self, value: bytes | None):
        if value is None:
            raise MalformedNotification("the message has no value")
        if len(value) > MAX_NOTIFICATION_BYTES:
            raise MalformedNotification(f"the message is {len(value)} bytes, more than the "
                                        f"{MAX_NOTIFICATION_BYTES} a notification may have")
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedNotification(f"the message is not UTF-8 text (byte {exc.start})") from None
        return parse_notification(text, self.url_encoded_keys)

    def _as_the_bucket_says(self, event: ImageEvent) -> ImageEvent:
        """The event of what the bucket holds under this key now (see the module docstring); raises
        Stopped when a stop comes while S3 is failing."""
        # An outage is waited out; a refusal (credentials, policy) is not, and stops the producer.
        found = retry_until_stopped(lambda: s3.head(self.s3, event.bucket, event.key), self.stop, only_transient=True)
        if found is None:
            return ImageEvent.deletion(event.bucket, event.key, event.event_time)
        confirmed = event_for_object(event.bucket, found)
        return ImageEvent(bucket=confirmed.bucket, key=confirmed.key, size=confirmed.size, etag=confirmed.etag,
                          last_modified=confirmed.last_modified, event_time=event.event_time)

    def _dead_letter(self, msg, reason: str, acknowledged: list[bool]) -> None:
        log.warning("malformed notification at %s[%d]@%d dead-lettered: %s", msg.topic(), msg.partition(),
                    msg.offset(), reason)
        value = msg.value()
        headers = dead_letter_headers(msg, MessageError(DEAD_LETTER_STAGE, reason), 1)
        if value is not None and len(value) > MAX_EVENT_BYTES:
            headers.append((VALUE_TRUNCATED, b"true"))
            headers.append(("original_value_bytes", str(len(value)).encode()))
            value = value[:MAX_EVENT_BYTES]
        acknowledged.append(False)
        i = len(acknowledged) - 1

        def delivered(err, _msg) -> None:
            acknowledged[i] = err is None

        self.dead_letters.produce(self.settings.kafka_dead_letter_topic, key=msg.key(), value=value,
                                  headers=headers, on_delivery=delivered)
        self.dead_letters.poll(0)
