"""The event-driven producer: long-poll an SQS queue of S3 Event Notifications, send one event per
object change to Kafka, and only then delete the SQS messages.

Why this order: a message deleted before Kafka acknowledged its events would be lost if the
producer died in between; a message kept too long is only received again, and resending is
harmless (the consumer is idempotent). A malformed message is never deleted here: the queue's
redrive policy moves it to a dead-letter queue after maxReceiveCount receives. No S3 call is
made in this mode: the notification says everything the event needs.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from imgpipe import aws
from imgpipe.errors import NOT_FOUND, UNAVAILABLE, UserError
from imgpipe.events import DELETE
from imgpipe.retry import Stopped, retry_until_stopped
from imgpipe.settings import Settings

from producer.notifications import MalformedNotification, latest_per_key, parse_notification
from producer.sender import EventSender

log = logging.getLogger("producer")

FLUSH_SECONDS = 30.0  # how long a batch's events may wait for Kafka before their messages are left


@dataclass
class QueueReport:
    received: int = 0  # SQS messages
    deleted: int = 0
    test_events: int = 0
    malformed: int = 0  # left on the queue for its redrive policy
    kept: int = 0  # left on the queue because Kafka did not acknowledge their events
    ignored: int = 0  # records that are no object change, or outside the bucket or prefix
    superseded: int = 0  # events replaced by a later event of the same key in one batch
    upserts: int = 0
    deletes: int = 0
    failed: int = 0  # events Kafka refused or did not acknowledge in time
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> str:
        seconds = time.monotonic() - self.started
        return (f"received {self.received} message(s), sent {self.upserts} upsert(s) and {self.deletes} "
                f"delete(s), failed {self.failed}, deleted {self.deleted} message(s); "
                f"{self.test_events} test event(s), {self.ignored} record(s) ignored, {self.superseded} "
                f"superseded, {self.malformed} malformed and {self.kept} unacknowledged message(s) left "
                f"on the queue, in {seconds:.1f} s")

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in ("received", "deleted", "test_events", "malformed", "kept",
                                                      "ignored", "superseded", "upserts", "deletes", "failed")}


def _one_line(text: str, limit: int = 300) -> str:
    """A message body for the log: escaped (no raw newline or control character), and short."""
    shown = repr(text[:limit])
    return shown + (f" ... ({len(text)} characters)" if len(text) > limit else "")


class QueueProducer:
    def __init__(self, settings: Settings, queue_url: str, bucket: str, prefix: str, wait_seconds: int,
                 max_idle_seconds: float | None, stop: threading.Event, metrics=None):
        self.settings = settings
        self.queue_url = queue_url
        self.bucket = bucket
        self.prefix = prefix
        self.wait_seconds = wait_seconds
        self.max_idle_seconds = max_idle_seconds
        self.stop = stop
        self.report = QueueReport()
        self.sqs = aws.queue_client(settings, queue_url)
        self.sender = EventSender(settings, metrics=metrics)

    def check_queue(self) -> None:
        """Fail fast, with one line, on a queue that does not exist or refuses us."""
        try:
            aws.queue_attributes(self.sqs, self.queue_url)
        except aws.AwsError as exc:
            if exc.kind == UNAVAILABLE:
                raise
            what = "does not exist" if exc.kind == NOT_FOUND else f"refused the request ({exc.code})"
            raise UserError(f"SQS queue {self.queue_url} {what}: check SQS_QUEUE_URL, the region "
                            f"({self.settings.aws_region}) and the credentials") from None

    def run(self) -> QueueReport:
        self.check_queue()
        log.info("waiting for S3 notifications of s3://%s/%s on %s; Ctrl-C to stop", self.bucket, self.prefix,
                 self.queue_url)
        idle_since = time.monotonic()
        try:
            while not self.stop.is_set():
                try:
                    messages = retry_until_stopped(
                        lambda: aws.receive_messages(self.sqs, self.queue_url, self.wait_seconds), self.stop)
                except Stopped:
                    break
                if messages:
                    self.handle(messages)
                    idle_since = time.monotonic()
                elif self.max_idle_seconds is not None and time.monotonic() - idle_since >= self.max_idle_seconds:
                    log.info("no notification for %.0f s: done", time.monotonic() - idle_since)
                    break
        finally:
            self.sender.flush(timeout=FLUSH_SECONDS)
        return self.report

    def _wanted(self, event) -> bool:
        return event.bucket == self.bucket and event.key.startswith(self.prefix)

    def handle(self, messages: list[dict]) -> None:
        """One receive batch: parse, send the latest event of each key, wait for Kafka, delete
        the messages whose every event was acknowledged."""
        self.report.received += len(messages)
        events, carried_by, usable = [], [], []  # carried_by[i]: the message index of events[i]
        for m, message in enumerate(messages):
            try:
                notification = parse_notification(message.get("Body", ""))
            except MalformedNotification as exc:
                self.report.malformed += 1
                count = message.get("Attributes", {}).get("ApproximateReceiveCount", "?")
                log.warning("malformed notification %s (received %s time(s)) left on the queue: %s; body %s",
                            message.get("MessageId"), count, exc, _one_line(message.get("Body", "")))
                continue
            usable.append(m)
            self.report.test_events += notification.test_event
            self.report.ignored += len(notification.skipped)
            for event in notification.events:
                if self._wanted(event):
                    events.append(event)
                    carried_by.append(m)
                else:
                    self.report.ignored += 1
        cover = latest_per_key(events)
        acknowledged: dict[int, bool] = {}

        def delivered(i: int, ok: bool) -> None:
            acknowledged[i] = ok
            if ok and events[i].action == DELETE:
                self.report.deletes += 1
            elif ok:
                self.report.upserts += 1

        for i, event in enumerate(events):
            if cover[i] != i:
                self.report.superseded += 1
                continue
            acknowledged[i] = False
            self.sender.send(event, on_result=lambda ok, i=i: delivered(i, ok))
        if acknowledged:
            self.sender.flush(timeout=FLUSH_SECONDS)
        unacknowledged = {carried_by[i] for i, e in enumerate(events) if not acknowledged.get(cover[i])}
        self.report.failed += sum(1 for ok in acknowledged.values() if not ok)
        done = [messages[m] for m in usable if m not in unacknowledged]
        self.report.kept += len(unacknowledged)
        if unacknowledged:
            log.warning("%d message(s) left on the queue: Kafka did not acknowledge their events; they "
                        "come back after the queue's visibility timeout", len(unacknowledged))
        if done:
            try:
                failed = retry_until_stopped(lambda: aws.delete_messages(self.sqs, self.queue_url, done), self.stop)
            except Stopped:
                log.warning("stopped while SQS was failing: %d message(s) not deleted will be received again",
                            len(done))
                return
            for message_id in failed:
                log.warning("SQS did not delete message %s; it will be received again", message_id)
            self.report.deleted += len(done) - len(failed)
