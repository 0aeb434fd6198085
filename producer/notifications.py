"""S3 Event Notifications (as SQS or a Kafka topic delivers them) -> image events. Pure: no network.

One SQS (or Kafka) message holds one notification: `{"Records": [...]}`, S3's `s3:TestEvent` (sent when the
configuration is saved), or either wrapped in an SNS envelope when the bucket notifies a topic
that fans out to the queue. `ObjectCreated:*` becomes an upsert; `ObjectRemoved:*` and
`LifecycleExpiration:*` a delete. Keys arrive URL-encoded with `+` for spaces (a real `+` is
`%2B`) and are decoded exactly; S3's `sequencer` is kept, for ordering events of one key.
versitygw writes keys as they are (`url_encoded_keys=False`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import unquote_plus

from imgpipe.events import ImageEvent, compare_sequencers, to_iso

_HEX = frozenset("0123456789abcdefABCDEF")
UPSERT_PREFIXES = ("ObjectCreated:",)
DELETE_PREFIXES = ("ObjectRemoved:", "LifecycleExpiration:")


class MalformedNotification(ValueError):
    """The message is not an S3 notification this producer understands; it stays on the queue."""


@dataclass
class Notification:
    """What one SQS message said: its events, and the records it skipped (with why)."""

    events: list[ImageEvent] = field(default_factory=list)
    test_event: bool = False
    skipped: list[str] = field(default_factory=list)


def _event_time(record: dict) -> str:
    raw = record.get("eventTime")
    if not isinstance(raw, str):
        raise MalformedNotification("a record has no eventTime")
    try:
        return to_iso(datetime.fromisoformat(raw.replace("Z", "+00:00")))
    except ValueError:
        raise MalformedNotification(f"eventTime {raw!r} is not ISO-8601") from None


def _record_event(record: dict, url_encoded_keys: bool = True) -> ImageEvent | str:
    """The event of one record, or the reason it is skipped (not an object change)."""
    if not isinstance(record, dict):
        raise MalformedNotification("a record is not a JSON object")
    name = record.get("eventName")
    if not isinstance(name, str):
        raise MalformedNotification("a record has no eventName")
    name = name.removeprefix("s3:")
    if not name.startswith(UPSERT_PREFIXES + DELETE_PREFIXES):
        return f"{name} is not a creation or a removal"
    s3 = record.get("s3")
    bucket = s3.get("bucket", {}).get("name") if isinstance(s3, dict) else None
    obj = s3.get("object") if isinstance(s3, dict) else None
    if not isinstance(bucket, str) or not bucket or not isinstance(obj, dict) or not isinstance(obj.get("key"), str):
        raise MalformedNotification("a record lacks s3.bucket.name or s3.object.key")
    try:
        key = unquote_plus(obj["key"], encoding="utf-8", errors="strict") if url_encoded_keys else obj["key"]
    except UnicodeDecodeError:
        raise MalformedNotification("an object key is not URL-encoded UTF-8") from None
    if not key:
        raise MalformedNotification("an object key is empty")
    sequencer = obj.get("sequencer")
    if sequencer is not None and (not isinstance(sequencer, str) or not sequencer or not set(sequencer) <= _HEX):
        raise MalformedNotification(f"sequencer {sequencer!r} is not hexadecimal")
    event_time = _event_time(record)
    if name.startswith(DELETE_PREFIXES):
        return ImageEvent.deletion(bucket, key, event_time, sequencer)
    size = obj.get("size", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise MalformedNotification(f"object size {size!r} is not a byte count")
    # A notification carries no LastModified; S3's eventTime is when it finished the write.
    return ImageEvent(bucket=bucket, key=key, size=size, etag=str(obj.get("eTag", "") or "").strip('"'),
                      last_modified=event_time, event_time=event_time, sequencer=sequencer)


def parse_notification(body: str, url_encoded_keys: bool = True) -> Notification:
    """The events of one SQS message body (or Kafka message value); raises MalformedNotification."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, TypeError):
        raise MalformedNotification("the body is not JSON") from None
    except (ValueError, RecursionError) as exc:  # a 5,000-digit integer, deep nesting: what Python refuses
        raise MalformedNotification(f"the body is JSON Python cannot parse ({type(exc).__name__})") from None
    if isinstance(data, dict) and data.get("Type") == "Notification" and isinstance(data.get("Message"), str):
        # an SNS envelope (bucket -> SNS topic -> queue)
        return parse_notification(data["Message"], url_encoded_keys)
    if not isinstance(data, dict):
        raise MalformedNotification(f"the body is a JSON {type(data).__name__}, not an object")
    if data.get("Event") == "s3:TestEvent":
        return Notification(test_event=True)
    records = data.get("Records")
    if not isinstance(records, list) or not records:
        raise MalformedNotification("the body has no Records")
    notification = Notification()
    for record in records:
        outcome = _record_event(record, url_encoded_keys)
        if isinstance(outcome, str):
            notification.skipped.append(outcome)
        else:
            notification.events.append(outcome)
    return notification


def latest_per_key(events: list[ImageEvent]) -> list[int]:
    """For each event, the index of the event sent in its place: itself, or a later event of
    the same object by S3's sequencer (within one receive batch, the later change wins). Events
    without a sequencer cannot be ordered and each stands for itself."""
    latest: dict[tuple[str, str], int] = {}
    for i, event in enumerate(events):
        if event.sequencer is None:
            continue
        where = (event.bucket, event.key)
        best = latest.get(where)
        if best is None or compare_sequencers(event.sequencer, events[best].sequencer) > 0:
            latest[where] = i
    return [i if e.sequencer is None else latest[(e.bucket, e.key)] for i, e in enumerate(events)]
