"""The dead-letter topic: each message that cannot be processed, with why, where and when.

The value and key are the original message's, unchanged, so a fixed consumer can replay it.
Headers say what failed: error class, reason, stage, attempts, time and the original position.
"""
from __future__ import annotations

import logging
import threading

from imgpipe import kafka
from imgpipe.errors import InfrastructureError, MessageError
from imgpipe.events import MAX_EVENT_BYTES, utc_now_iso
from imgpipe.retry import retry_until_stopped
from imgpipe.settings import Settings

log = logging.getLogger(__name__)


def dead_letter_headers(msg, error: MessageError, attempts: int) -> list[tuple[str, bytes]]:
    return [
        ("error_class", type(error).__name__.encode()),
        ("stage", error.stage.encode()),
        ("reason", error.reason.encode("utf-8", "replace")[:2000]),
        ("attempts", str(attempts).encode()),
        ("failed_at", utc_now_iso().encode()),
        ("source_topic", (msg.topic() or "").encode()),
        ("source_partition", str(msg.partition()).encode()),
        ("source_offset", str(msg.offset()).encode()),
    ]


class DeadLetterWriter:
    def __init__(self, settings: Settings, stop: threading.Event):
        self.topic = settings.kafka_dead_letter_topic
        self.stop = stop
        self._producer = kafka.producer(settings, **{"linger.ms": 5})
        self._pending: list[tuple[bytes | None, bytes | None, list]] = []
        self._failed: list[tuple[bytes | None, bytes | None, list]] = []

    def add(self, msg, error: MessageError, attempts: int = 1) -> None:
        value, headers = msg.value(), dead_letter_headers(msg, error, attempts)
        if value is not None and len(value) > MAX_EVENT_BYTES:
            # Junk this large may not fit the broker's message limit; the first bytes tell what it
            # was, and the full value stays in the source topic at the offset in the headers.
            headers += [("value_truncated", b"true"), ("original_size", str(len(value)).encode())]
            value = value[:MAX_EVENT_BYTES]
        self._pending.append((msg.key(), value, headers))

    def _produce(self, record) -> None:
        key, value, headers = record

        def on_delivery(err, _msg) -> None:
            if err is not None:
                self._failed.append(record)

        while True:
            try:
                self._producer.produce(self.topic, key=key, value=value, headers=headers, on_delivery=on_delivery)
                return
            except BufferError:
                self._producer.poll(0.2)

    def flush(self) -> int:
        """Write everything added since the last flush and wait until the broker acknowledged it.

        Returns how many were written; a broker outage is retried until it recovers or we stop.
        """
        records, self._pending = self._pending, []
        if not records:
            return 0
        for record in records:
            self._produce(record)

        def wait_for_acks() -> None:
            # librdkafka retries on its own until message.timeout.ms; what it finally gave up
            # on comes back through the delivery callback and is produced again here.
            again, self._failed = self._failed, []
            for record in again:
                self._produce(record)
            remaining = self._producer.flush(10)
            if remaining or self._failed:
                raise InfrastructureError("kafka", f"dead-letter write to {self.topic} not acknowledged yet "
                                          f"({remaining + len(self._failed)} pending)")

        retry_until_stopped(wait_for_acks, self.stop)
        return len(records)

    def close(self) -> None:
        self._producer.flush(10)
