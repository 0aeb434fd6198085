"""The dead-letter topic: each message that cannot be processed, with why, where and when.

A dead letter keeps what is needed to find and redrive the original: the source topic,
partition and offset, and the original key and value when they fit. A key or value too large
for a dead letter is cut, with its full length and sha256 in headers; the whole original stays
in the source topic at the offset the headers name. Headers also say what failed: error class,
stage, reason, attempts and time.

A dead letter can always be written: when the broker refuses one for its content (too large,
say), a minimal one (headers only) is written instead, and if even that is refused the failure
is logged and counted, never retried forever. A broker outage is retried until it recovers.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field

from imgpipe import kafka
from imgpipe.cli import printable
from imgpipe.errors import REJECTED, InfrastructureError, MessageError
from imgpipe.events import MAX_EVENT_BYTES, utc_now_iso
from imgpipe.retry import retry_until_stopped
from imgpipe.settings import Settings

log = logging.getLogger(__name__)

MAX_DEAD_LETTER_KEY_BYTES = 4096  # a real key is an S3 key, at most 1024 bytes
MAX_REASON_BYTES = 2000


@dataclass
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    where: str  # "topic[partition]@offset" of the original, for logs
    minimal: bool = False  # already the headers-only fallback


@dataclass
class DeadLetterCounts:
    written: int = 0
    minimal: int = 0  # written without the original key and value, which the broker refused
    refused: int = 0  # not written at all: logged with the original's position
    refused_positions: list[str] = field(default_factory=list)


def _cut(name: str, data: bytes | None, limit: int) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    if data is None or len(data) <= limit:
        return data, []
    return data[:limit], [(f"{name}_truncated", b"true"), (f"original_{name}_bytes", str(len(data)).encode()),
                          (f"original_{name}_sha256", hashlib.sha256(data).hexdigest().encode())]


def dead_letter_headers(msg, error: MessageError, attempts: int) -> list[tuple[str, bytes]]:
    return [
        ("error_class", type(error).__name__.encode()),
        ("stage", error.stage.encode()),
        ("reason", error.reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]),
        ("attempts", str(attempts).encode()),
        ("failed_at", utc_now_iso().encode()),
        ("source_topic", (msg.topic() or "").encode("utf-8", "replace")),
        ("source_partition", str(msg.partition()).encode()),
        ("source_offset", str(msg.offset()).encode()),
    ]


class DeadLetterWriter:
    def __init__(self, settings: Settings, stop: threading.Event):
        self.topic = settings.kafka_dead_letter_topic
        self.stop = stop
        self.counts = DeadLetterCounts()
        self._producer = kafka.producer(settings, **{"linger.ms": 5})
        self._pending: list[DeadLetter] = []
        self._failed: list[tuple[DeadLetter, object]] = []  # (letter, librdkafka error)

    def add(self, msg, error: MessageError, attempts: int = 1) -> None:
        key, key_headers = _cut("key", msg.key(), MAX_DEAD_LETTER_KEY_BYTES)
        value, value_headers = _cut("value", msg.value(), MAX_EVENT_BYTES)
        where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
        self._pending.append(DeadLetter(key, value, dead_letter_headers(msg, error, attempts) + key_headers
                                        + value_headers, where))

    def _produce(self, letter: DeadLetter) -> None:
        def on_delivery(err, _msg) -> None:
            if err is not None:
                self._failed.append((letter, err))

        while True:
            try:
                self._producer.produce(self.topic, key=letter.key, value=letter.value, headers=letter.headers,
                                       on_delivery=on_delivery)
                return
            except BufferError:
                self._producer.poll(0.2)
            except Exception as exc:  # refused before it left (KafkaException: too large, bad argument)
                error = kafka.translate(exc, "writing a dead letter to", self.topic)
                if error.kind != REJECTED:
                    raise error from None
                self._failed.append((letter, exc.args[0] if exc.args else exc))
                return

    def _refused(self, letter: DeadLetter, err) -> DeadLetter | None:
        """What to write instead of a dead letter the broker refused for its content: the headers
        alone, once; None when even those were refused."""
        name = err.name() if hasattr(err, "name") else type(err).__name__
        if letter.minimal:
            self.counts.refused += 1
            self.counts.refused_positions.append(letter.where)
            log.error("the dead-letter topic %s refused even a headers-only dead letter for %s (%s); the "
                      "original stays at that offset", self.topic, printable(letter.where), name)
            return None
        log.warning("the dead-letter topic %s refused the dead letter of %s (%s); writing it without the "
                    "original key and value", self.topic, printable(letter.where), name)
        self.counts.minimal += 1
        headers = [(k, v) for k, v in letter.headers if not k.startswith(("key_", "value_", "original_"))]
        headers += [("original_dropped", name.encode()),
                    ("original_key_bytes", str(len(letter.key or b"")).encode()),
                    ("original_value_bytes", str(len(letter.value or b"")).encode())]
        return DeadLetter(None, None, headers, letter.where, minimal=True)

    def flush(self) -> int:
        """Write everything added since the last flush and wait until the broker acknowledged it.

        Returns how many were written; a broker outage is retried until it recovers or we stop.
        """
        letters, self._pending = self._pending, []
        if not letters:
            return 0
        refused_before = self.counts.refused
        for letter in letters:
            self._produce(letter)

        def wait_for_acks() -> None:
            # librdkafka retries on its own until message.timeout.ms; what it finally gave up on
            # comes back through the delivery callback: refused for its content -> written in
            # the minimal form at once; anything else -> produced again after a back-off.
            while True:
                remaining = self._producer.flush(10)
                failed, self._failed = self._failed, []
                again = []
                for letter, err in failed:
                    if kafka.error_kind(err.name() if hasattr(err, "name") else "") == REJECTED:
                        replacement = self._refused(letter, err)
                        if replacement is not None:
                            self._produce(replacement)
                    else:
                        again.append(letter)
                for letter in again:
                    self._produce(letter)
                if not failed and not remaining:
                    return
                if again or remaining:
                    raise InfrastructureError("kafka", f"dead-letter write to {self.topic} not acknowledged yet "
                                              f"({remaining + len(again)} pending)")

        retry_until_stopped(wait_for_acks, self.stop)
        written = len(letters) - (self.counts.refused - refused_before)
        self.counts.written += written
        return written

    def close(self) -> None:
        self._producer.flush(10)
