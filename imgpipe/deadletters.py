"""Reading the dead-letter topic: each dead letter with its headers (stage, reason, failed_at,
source_* ...; see consumer/deadletter.py, which writes them) and the original key and value it
carries, for redrive and the dashboard."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Iterator

from imgpipe import cli, kafka
from imgpipe.events import parse_iso
from imgpipe.settings import Settings


@dataclass(frozen=True)
class DeadLetter:
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
        return self.headers.get("stage", "")

    @property
    def reason(self) -> str:
        return self.headers.get("reason", "")

    @property
    def failed_at(self) -> datetime | None:
        return parse_iso(self.headers.get("failed_at", ""))

    @property
    def cut(self) -> bool:
        """The dead letter holds only part (or none) of the original key or value."""
        return any(h in self.headers for h in ("key_truncated", "value_truncated", "original_dropped"))

    @property
    def source(self) -> tuple[str, int, int] | None:
        try:
            return (self.headers["source_topic"], int(self.headers["source_partition"]),
                    int(self.headers["source_offset"]))
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
