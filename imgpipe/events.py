"""The image event: one JSON message per S3 object, shared by producer and consumer.

Version 1 fields: schema_version, bucket, key, size, etag, last_modified, event_time.
The Kafka message key is the object key, so events of one object keep their order.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

from imgpipe.errors import MessageError

SCHEMA_VERSION = 1
# A real event is a few hundred bytes; anything far larger is junk and is not parsed.
MAX_EVENT_BYTES = 64 * 1024
# ensure_ascii=False keeps unicode keys byte-exact (NFC and NFD stay distinct).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_REQUIRED = {"bucket": str, "key": str, "size": int, "etag": str, "last_modified": str, "event_time": str}


@dataclass(frozen=True)
class ImageEvent:
    bucket: str
    key: str
    size: int
    etag: str
    last_modified: str
    event_time: str
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        # vars() not asdict(): the fields are flat, and asdict's deep copy costs 4x the encoding.
        return _ENCODER.encode(vars(self)).encode("utf-8")


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_for_object(bucket: str, obj: dict) -> ImageEvent:
    """An event from one entry of S3 ListObjectsV2 `Contents`."""
    return ImageEvent(bucket=bucket, key=obj["Key"], size=int(obj["Size"]),
                      etag=str(obj.get("ETag", "")).strip('"'),
                      last_modified=to_iso(obj["LastModified"]), event_time=utc_now_iso())


def parse_event(value: bytes | None) -> ImageEvent:
    """Validate a raw Kafka message value; raise MessageError('validate', reason) if it is bad."""
    if value is None:
        raise MessageError("validate", "message has no value")
    if len(value) > MAX_EVENT_BYTES:
        raise MessageError("validate", f"message is {len(value)} bytes, more than the {MAX_EVENT_BYTES} allowed")
    try:
        data = json.loads(value.decode("utf-8"))
    except UnicodeDecodeError:
        raise MessageError("validate", "message is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise MessageError("validate", f"message is not JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(data, dict):
        raise MessageError("validate", f"message is a JSON {type(data).__name__}, not an object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise MessageError("validate", f"unsupported schema_version {version!r} (expected {SCHEMA_VERSION})")
    missing = [name for name in _REQUIRED if name not in data]
    if missing:
        raise MessageError("validate", "missing field(s): " + ", ".join(missing))
    wrong = [f"{name} must be {kind.__name__}, got {type(data[name]).__name__}"
             for name, kind in _REQUIRED.items()
             if not isinstance(data[name], kind) or isinstance(data[name], bool)]
    if wrong:
        raise MessageError("validate", "; ".join(wrong))
    if not data["bucket"] or not data["key"]:
        raise MessageError("validate", "bucket and key must not be empty")
    if data["size"] < 0:
        raise MessageError("validate", f"size must not be negative, got {data['size']}")
    return ImageEvent(**{name: data[name] for name in _REQUIRED}, schema_version=version)
