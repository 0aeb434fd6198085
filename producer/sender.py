"""Send image events to Kafka and count what the broker acknowledged."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from imgpipe import kafka
from imgpipe.events import DELETE, UPSERT, ImageEvent
from imgpipe.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class DeliveryReport:
    sent: int = 0  # acknowledged by the broker
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    delivered_keys: list[tuple[str, str]] = field(default_factory=list)  # (key, etag)
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def summary(self) -> str:
        rate = self.sent / self.seconds if self.seconds > 0 else 0.0
        return f"sent {self.sent}, failed {self.failed} in {self.seconds:.1f} s ({rate:.0f} events/s)"


class EventSender:
    """An idempotent producer (see imgpipe.kafka.producer_config) with delivery accounting.

    One bound method serves every delivery report: a closure per message would cost more than
    the produce call itself. With `track_delivered`, the (key, etag) of each acknowledged event
    is kept for the --watch state file.
    """

    def __init__(self, settings: Settings, on_delivered=None, track_delivered: bool = False, metrics=None,
                 **config_overrides):
        self.topic = settings.kafka_topic
        self.report = DeliveryReport()
        self.metrics = metrics  # imgpipe.metrics.ProducerMetrics, or None
        self._on_delivered = on_delivered
        self._etags: dict[bytes, str] | None = {} if track_delivered else None
        self._producer = kafka.producer(settings, **config_overrides)

    def _delivered(self, err, msg) -> None:
        self._account(err, msg, UPSERT)

    def _delivered_delete(self, err, msg) -> None:
        self._account(err, msg, DELETE)

    def _account(self, err, msg, action: str) -> None:
        if self.metrics is not None:
            if err is None:
                self.metrics.events.labels(action).inc()
            else:
                self.metrics.failures.inc()
        if err is not None:
            self.report.failed += 1
            if len(self.report.errors) < 20:
                key = (msg.key() or b"").decode("utf-8", "replace")
                self.report.errors.append(f"{key}: {err.str()}")
            return
        self.report.sent += 1
        if self._etags is not None:
            key = msg.key()
            self.report.delivered_keys.append((key.decode("utf-8"), self._etags.pop(key, "")))
        if self._on_delivered is not None:
            self._on_delivered()

    def send(self, event: ImageEvent, on_result: Callable[[bool], None] | None = None) -> None:
        """Queue one event; `on_result(acknowledged)` is called from its delivery report."""
        # The object key is the message key: events of one object land on one partition, in order.
        key = event.key.encode("utf-8")
        if self._etags is not None:
            self._etags[key] = event.etag
        value = event.to_json()
        account = self._delivered_delete if event.action == DELETE else self._delivered
        callback = account
        if on_result is not None:
            def callback(err, msg):
                account(err, msg)
                on_result(err is None)
        kafka.produce(self._producer, self.topic, key, value, on_delivery=callback)
        self._producer.poll(0)

    def flush(self, timeout: float = 60.0) -> int:
        """Wait for every delivery report; returns how many messages are still undelivered."""
        remaining = self._producer.flush(timeout)
        if remaining:
            self.report.failed += remaining
            self.report.errors.append(f"{remaining} message(s) not delivered within {timeout:.0f} s")
        return remaining
