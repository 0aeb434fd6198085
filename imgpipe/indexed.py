"""The "indexed" announcement: what the core consumer tells the enrichment stages.

After MeiliSearch confirmed the task that holds an object's document (or its deletion), the core
consumer sends one message per object to KAFKA_INDEXED_TOPIC, keyed by the object key like the
image events, so an object's announcements stay in order. The enrichers consume this topic, never
the image events: an enrichment can then never race the document it adds fields to (a partial
update of a missing id would create a document holding only the enrichment).

Fields: schema_version, action ("upsert" or "delete"), id (the document id), bucket, key, etag
(of the version that was indexed: an enricher compares it with the document before it writes),
sequencer (S3's, or null), event_time, and for an upsert the derived images an enricher may read
instead of the original (thumbnail_key, grayscale_key) with the upright width and height.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from imgpipe.errors import MessageError
from imgpipe.events import DELETE, UPSERT

SCHEMA_VERSION = 1
MAX_ANNOUNCEMENT_BYTES = 16 * 1024
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class IndexedImage:
    id: str
    bucket: str
    key: str
    action: str = UPSERT
    etag: str = ""
    sequencer: str | None = None
    event_time: str = ""
    thumbnail_key: str = ""
    grayscale_key: str = ""
    width: int = 0
    height: int = 0
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def of_document(cls, document: dict, sequencer: str | None = None) -> "IndexedImage":
        """The announcement of an indexed document (as imgpipe.document.to_document builds it)."""
        return cls(id=document["id"], bucket=document["bucket"], key=document["key"], action=UPSERT,
                   etag=document.get("etag", ""), sequencer=sequencer,
                   event_time=document.get("event_time", ""),
                   thumbnail_key=document.get("thumbnail_key", ""),
                   grayscale_key=document.get("grayscale_key", ""),
                   width=int(document.get("width", 0)), height=int(document.get("height", 0)))

    @classmethod
    def deletion(cls, document_id: str, bucket: str, key: str, event_time: str,
                 sequencer: str | None = None) -> "IndexedImage":
        return cls(id=document_id, bucket=bucket, key=key, action=DELETE, event_time=event_time,
                   sequencer=sequencer)

    @property
    def message_key(self) -> bytes:
        return self.key.encode("utf-8")

    def to_json(self) -> bytes:
        return _ENCODER.encode(vars(self)).encode("utf-8")


_FIELDS = {"id": str, "bucket": str, "key": str, "action": str, "etag": str, "event_time": str,
           "thumbnail_key": str, "grayscale_key": str, "width": int, "height": int}


def parse_indexed(value: bytes | None) -> IndexedImage:
    """Validate one message of the indexed topic; raise MessageError('validate', reason) if bad."""
    if value is None:
        raise MessageError("validate", "message has no value")
    if len(value) > MAX_ANNOUNCEMENT_BYTES:
        raise MessageError("validate", f"message is {len(value)} bytes, more than the "
                                       f"{MAX_ANNOUNCEMENT_BYTES} allowed")
    try:
        data = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MessageError("validate", f"message is not JSON text ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise MessageError("validate", f"message is a JSON {type(data).__name__}, not an object")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise MessageError("validate", f"unsupported schema_version {data.get('schema_version')!r} "
                                       f"(expected {SCHEMA_VERSION})")
    missing = [name for name in ("id", "bucket", "key", "action") if not data.get(name)]
    if missing:
        raise MessageError("validate", "missing field(s): " + ", ".join(missing))
    if data["action"] not in (UPSERT, DELETE):
        raise MessageError("validate", f"action must be upsert or delete, got {data['action']!r}")
    wrong = [f"{name} must be {kind.__name__}" for name, kind in _FIELDS.items()
             if name in data and (not isinstance(data[name], kind) or isinstance(data[name], bool))]
    sequencer = data.get("sequencer")
    if sequencer is not None and not isinstance(sequencer, str):
        wrong.append("sequencer must be a string or null")
    if wrong:
        raise MessageError("validate", "; ".join(wrong))
    return IndexedImage(**{name: data[name] for name in _FIELDS if name in data}, sequencer=sequencer)
