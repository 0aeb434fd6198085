"""The image event: one JSON message per change of an S3 object, shared by producer and consumer.

Version 2 fields: schema_version, action ("upsert": the object was created or changed, "delete":
it is gone), bucket, key, size, etag, last_modified, event_time, and sequencer (S3's ordering
value for one key, a hex string, or null when the event comes from a listing). A delete needs
only bucket, key and event_time; its size, etag and last_modified are 0, "" and "".
Version 1 (no action, no sequencer) is still accepted and means an upsert.
The Kafka message key is the object key, so events of one object keep their order.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

from imgpipe.errors import MessageError

SCHEMA_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
UPSERT = "upsert"
DELETE = "delete"
ACTIONS = (UPSERT, DELETE)
# A real event is a few hundred bytes; anything far larger is junk and is not parsed.
MAX_EVENT_BYTES = 64 * 1024
MAX_KEY_BYTES = 1024  # S3's limit on an object key
MAX_OBJECT_SIZE = 5 * 1024 ** 4  # S3's limit on an object, 5 TiB
# ensure_ascii=False keeps unicode keys byte-exact (NFC and NFD stay distinct).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_REQUIRED = {"bucket": str, "key": str, "size": int, "etag": str, "last_modified": str, "event_time": str}
_REQUIRED_FOR_DELETE = {"bucket": str, "key": str, "event_time": str}
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True)
class ImageEvent:
    bucket: str
    key: str
    size: int
    etag: str
    last_modified: str
    event_time: str
    schema_version: int = SCHEMA_VERSION
    action: str = UPSERT
    sequencer: str | None = None

    @classmethod
    def deletion(cls, bucket: str, key: str, event_time: str, sequencer: str | None = None) -> "ImageEvent":
        return cls(bucket=bucket, key=key, size=0, etag="", last_modified="", event_time=event_time,
                   action=DELETE, sequencer=sequencer)

    def to_json(self) -> bytes:
        # vars() not asdict(): the fields are flat, and asdict's deep copy costs 4x the encoding.
        return _ENCODER.encode(vars(self)).encode("utf-8")


def compare_sequencers(a: str, b: str) -> int:
    """-1, 0 or 1 as S3 sequencer `a` is earlier than, the same as or later than `b` (only
    meaningful for two events of one key). S3's rule: right-pad the shorter with zeros, then
    compare as text."""
    width = max(len(a), len(b))
    a, b = a.upper().ljust(width, "0"), b.upper().ljust(width, "0")
    return (a > b) - (a < b)


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime | None:
    """A UTC ISO-8601 time ('2026-11-25T16:40:31.123Z', offsets allowed), or None if it is not one."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, TypeError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


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
    except UnicodeDecodeError as exc:
        raise MessageError("validate", f"message is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise MessageError("validate", f"message is not JSON ({exc.msg} at position {exc.pos})") from None
    except RecursionError:
        raise MessageError("validate", "message is JSON nested too deeply to parse") from None
    except Exception as exc:  # e.g. an integer of more than 4300 digits (ValueError): whatever Python refuses
        raise MessageError("validate", f"message is JSON Python cannot parse ({type(exc).__name__}: "
                                       f"{str(exc)[:200]})") from None
    if not isinstance(data, dict):
        raise MessageError("validate", f"message is a JSON {type(data).__name__}, not an object")
    version = data.get("schema_version")
    if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
        raise MessageError("validate", f"unsupported schema_version {version!r} (expected 1 or 2)")
    action, sequencer = UPSERT, None
    if version >= 2:
        action, sequencer = data.get("action"), data.get("sequencer")
        if action not in ACTIONS:
            raise MessageError("validate", f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
        if sequencer is not None and (not isinstance(sequencer, str) or not sequencer
                                      or not set(sequencer) <= _HEX or len(sequencer) > 64):
            raise MessageError("validate", "sequencer must be a hexadecimal string (or null)")
    required = _REQUIRED if action == UPSERT else _REQUIRED_FOR_DELETE
    missing = [name for name in required if name not in data]
    if missing:
        raise MessageError("validate", "missing field(s): " + ", ".join(missing))
    wrong = [f"{name} must be {kind.__name__}, got {type(data[name]).__name__}"
             for name, kind in _REQUIRED.items()
             if name in data and (not isinstance(data[name], kind) or isinstance(data[name], bool))]
    if wrong:
        raise MessageError("validate", "; ".join(wrong))
    if not data["bucket"] or not data["key"]:
        raise MessageError("validate", "bucket and key must not be empty")
    for name, kind in _REQUIRED.items():
        if kind is str and name in data:
            try:
                data[name].encode("utf-8")
            except UnicodeEncodeError:  # "\ud800" is valid JSON, but no S3 key or document can hold it
                raise MessageError("validate", f"{name} is not valid Unicode (it holds a lone surrogate)") from None
    if len(data["key"].encode("utf-8")) > MAX_KEY_BYTES:
        raise MessageError("validate", f"key is longer than S3's {MAX_KEY_BYTES} bytes")
    if "size" in data and not 0 <= data["size"] <= MAX_OBJECT_SIZE:
        raise MessageError("validate", f"size must be between 0 and S3's {MAX_OBJECT_SIZE} bytes, got "
                                       f"{str(data['size'])[:40]}")
    for name in ("last_modified", "event_time") if action == UPSERT else ("event_time",):
        if parse_iso(data[name]) is None:
            raise MessageError("validate", f"{name} is not an ISO-8601 time: {data[name][:40]!r}")
    if action == DELETE:
        return ImageEvent.deletion(data["bucket"], data["key"], data["event_time"], sequencer)
    return ImageEvent(**{name: data[name] for name in _REQUIRED}, schema_version=version, sequencer=sequencer)
