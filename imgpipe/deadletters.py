"""The dead-letter contract: the stages a message can fail at, the headers a dead letter carries,
and both writing dead letters (the consumer, the enrichers) and reading them (redrive, the
dashboard, the demo). One definition, imported by writers and readers alike.

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

import enum
import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterator

from imgpipe import cli, kafka
from imgpipe.errors import MessageError
from imgpipe.events import MAX_EVENT_BYTES, parse_iso, utc_now_iso
from imgpipe.settings import Settings

log = logging.getLogger(__name__)


class Stage(enum.StrEnum):
    """Where a message failed, in pipeline order. A stage of a new consumer (an enricher) is one
    more line here; MessageError(stage, reason) takes a Stage or its text."""

    NOTIFICATION = "notification"  # an S3 server's bucket notification the producer cannot read
    VALIDATE = "validate"  # the event itself (not JSON, missing fields, a bucket not allowed)
    FETCH = "fetch"  # the object is gone or unreadable
    GUARD = "guard"  # refused before decoding (not an image, too many pixels, a bomb)
    BUDGET = "budget"  # over the time or memory budget of one image
    DECODE = "decode"  # corrupt or truncated image data
    PROCESS = "process"  # OpenCV or our own code failed on it
    STORE = "store"  # the derived images could not be written
    INDEX = "index"  # MeiliSearch refused the document
    ENRICH = "enrich"  # an enrichment stage failed on it (none of the more precise stages below)
    ENRICH_FETCH = "enrich-fetch"  # the enricher could not read the image it needs
    FACES = "faces"  # the faces model failed on it
    TEXT = "text"  # the text model failed on it


# The headers of a dead letter.
ERROR_CLASS = "error_class"
STAGE = "stage"
REASON = "reason"
ATTEMPTS = "attempts"
FAILED_AT = "failed_at"
SOURCE_TOPIC = "source_topic"
SOURCE_PARTITION = "source_partition"
SOURCE_OFFSET = "source_offset"
KEY_TRUNCATED = "key_truncated"
VALUE_TRUNCATED = "value_truncated"
ORIGINAL_DROPPED = "original_dropped"  # a minimal dead letter: the broker refused the original's key and value
REDRIVEN_FROM = "redriven_from"  # on an event redrive.py sent again: the dead letter it came from

MAX_DEAD_LETTER_KEY_BYTES = 4096  # a real key is an S3 key, at most 1024 bytes
MAX_REASON_BYTES = 2000


# --- writing ------------------------------------------------------------------------------------
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
        (ERROR_CLASS, type(error).__name__.encode()),
        (STAGE, str(error.stage).encode()),
        (REASON, error.reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]),
        (ATTEMPTS, str(attempts).encode()),
        (FAILED_AT, utc_now_iso().encode()),
        (SOURCE_TOPIC, (msg.topic() or "").encode("utf-8", "replace")),
        (SOURCE_PARTITION, str(msg.partition()).encode()),
        (SOURCE_OFFSET, str(msg.offset()).encode()),
    ]


@dataclass(frozen=True)
class _Letter(kafka.Outgoing):
    where: str = ""  # "topic[partition]@offset" of the original, for logs
    minimal: bool = False  # already the headers-only fallback


class DeadLetterWriter:
    """Dead letters for one topic, written in groups: add() each, then flush() returns once the
    broker acknowledged them all."""

    def __init__(self, settings: Settings, stop: threading.Event, producer=None):
        self.topic = settings.kafka_dead_letter_topic
        self.stop = stop
        self.counts = DeadLetterCounts()
        self._producer = producer or kafka.producer(settings, **{"linger.ms": 5})
        self._pending: list[_Letter] = []

    def add(self, msg, error: MessageError, attempts: int = 1) -> None:
        key, key_headers = _cut("key", msg.key(), MAX_DEAD_LETTER_KEY_BYTES)
        value, value_headers = _cut("value", msg.value(), MAX_EVENT_BYTES)
        where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
        self._pending.append(_Letter(key, value, dead_letter_headers(msg, error, attempts) + key_headers
                                     + value_headers, where))

    def _refused(self, letter: _Letter, name: str) -> _Letter | None:
        """What to write instead of a dead letter the broker refused for its content: the headers
        alone, once; None when even those were refused."""
        if letter.minimal:
            self.counts.refused += 1
            self.counts.refused_positions.append(letter.where)
            log.error("the dead-letter topic %s refused even a headers-only dead letter for %s (%s); the "
                      "original stays at that offset", self.topic, cli.printable(letter.where), name)
            return None
        log.warning("the dead-letter topic %s refused the dead letter of %s (%s); writing it without the "
                    "original key and value", self.topic, cli.printable(letter.where), name)
        self.counts.minimal += 1
        headers = [(k, v) for k, v in letter.headers if not k.startswith(("key_", "value_", "original_"))]
        headers += [(ORIGINAL_DROPPED, name.encode()),
                    ("original_key_bytes", str(len(letter.key or b"")).encode()),
                    ("original_value_bytes", str(len(letter.value or b"")).encode())]
        return _Letter(None, None, headers, letter.where, minimal=True)

    def flush(self) -> int:
        """Write everything added since the last flush and wait until the broker acknowledged it.

        Returns how many were written; a broker outage is retried until it recovers or we stop.
        """
        letters, self._pending = self._pending, []
        if not letters:
            return 0
        written = kafka.deliver(self._producer, self.topic, letters, self.stop, refused=self._refused)
        self.counts.written += written
        return written

    def close(self) -> None:
        self._producer.flush(10)


# --- reading ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeadLetter:
    """One dead letter as read back."""

    partition: int  # in the dead-letter topic
    offset: int
    headers: dict[str, str]
    key: bytes | None
    value: bytes | None

    @classmethod
    def of(cls, msg) -> "DeadLetter":
        headers = {k: (v or b"").decode("utf-8", "replace") for k, v in (msg.headers() or [])}
        return cls(msg.partition(), msg.offset(), headers, msg.key(), msg.value())

    @property
    def stage(self) -> str:
        return self.headers.get(STAGE, "")

    @property
    def reason(self) -> str:
        return self.headers.get(REASON, "")

    @property
    def failed_at(self) -> datetime | None:
        return parse_iso(self.headers.get(FAILED_AT, ""))

    @property
    def cut(self) -> bool:
        """The dead letter holds only part (or none) of the original key or value."""
        return any(h in self.headers for h in (KEY_TRUNCATED, VALUE_TRUNCATED, ORIGINAL_DROPPED))

    @property
    def source(self) -> tuple[str, int, int] | None:
        try:
            return (self.headers[SOURCE_TOPIC], int(self.headers[SOURCE_PARTITION]),
                    int(self.headers[SOURCE_OFFSET]))
        except (KeyError, ValueError):
            return None

    @property
    def object_key(self) -> str | None:
        """The S3 key the original event named, when its value is an event that says."""
        try:
            key = json.loads(self.value or b"")["key"]
        except (ValueError, TypeError, KeyError):
            return None
        return key if isinstance(key, str) else None

    def shown_key(self) -> str:
        text = (self.key or b"").decode("utf-8", "replace")
        return cli.printable(text[:80] + ("…" if len(text) > 80 or self.cut else ""))


def read_all(settings: Settings) -> Iterator[DeadLetter]:
    """Every dead letter of KAFKA_DEAD_LETTER_TOPIC, from its start to its end as it is now."""
    for msg in kafka.iter_messages(settings, settings.kafka_dead_letter_topic):
        yield DeadLetter.of(msg)


def read_latest(settings: Settings, count: int, timeout: float = 10.0) -> list[DeadLetter]:
    """The last `count` dead letters, newest first; reads at most `count` per partition."""
    return [DeadLetter.of(msg) for msg in kafka.read_latest(settings, settings.kafka_dead_letter_topic, count, timeout)]
