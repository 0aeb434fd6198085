"""One event, start to finish, in a worker thread: fetch, process, store derived images, build
the document. Indexing and committing happen per batch, in consumer/loop.py."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

from imgpipe import PIPELINE_VERSION
from imgpipe.document import derived_key, document_id, file_name
from imgpipe.errors import MessageError
from imgpipe.events import ImageEvent, to_iso, utc_now_iso
from imgpipe.settings import Settings

from consumer.processing import ProcessedImage, ProcessingOptions, process_image
from consumer.storage import ObjectStore


def check_bucket_allowed(event: ImageEvent, allowed: tuple[str, ...]) -> None:
    """A forged event must not make the consumer read arbitrary buckets with its credentials."""
    if event.bucket not in allowed:
        raise MessageError("validate", f"bucket {event.bucket!r} is not in the allowed buckets "
                           f"({', '.join(allowed)}; set S3_ALLOWED_BUCKETS)")


def to_document(event: ImageEvent, object_meta: dict, image: ProcessedImage, thumbnail_key: str,
                grayscale_key: str, processed_at: str, processing_ms: float) -> dict:
    """The index document of one image (fields documented in imgpipe/document.py)."""
    last_modified = object_meta.get("last_modified")
    if isinstance(last_modified, datetime):
        moment = last_modified if last_modified.tzinfo else last_modified.replace(tzinfo=timezone.utc)
        last_modified_iso = to_iso(moment)
    else:
        last_modified_iso = event.last_modified
        moment = datetime.fromisoformat(event.last_modified.replace("Z", "+00:00"))
    size_bytes = object_meta.get("size", image.features.get("size_bytes", event.size))
    return {
        "id": document_id(event.bucket, event.key),
        "bucket": event.bucket,
        "key": event.key,
        "file_name": file_name(event.key),
        **image.features,
        "size_bytes": size_bytes,
        "size_kb": round(size_bytes / 1024, 2),
        "thumbnail_key": thumbnail_key,
        "grayscale_key": grayscale_key,
        "etag": object_meta.get("etag") or event.etag,
        "timestamp": int(moment.timestamp()),
        "last_modified": last_modified_iso,
        "event_time": event.event_time,
        "processed_at": processed_at,
        "processing_ms": round(processing_ms, 1),
        "pipeline_version": PIPELINE_VERSION,
    }


class ImageHandler:
    """Runs on a pool larger than `workers`: S3 transfers of some images overlap with the
    OpenCV work of others, while the semaphore keeps CPU-bound processing to `workers` at once
    (OpenCV releases the GIL, so each one can use a core)."""

    def __init__(self, settings: Settings, store: ObjectStore, workers: int):
        self.settings = settings
        self.store = store
        self.options = ProcessingOptions.from_settings(settings)
        self._processing_slots = threading.BoundedSemaphore(workers)

    def handle(self, event: ImageEvent) -> dict:
        """Raises MessageError (dead-letter) or, on shutdown during an outage, Stopped."""
        started = time.perf_counter()
        check_bucket_allowed(event, self.settings.allowed_buckets)
        data, meta = self.store.fetch(event.bucket, event.key, self.options.max_object_bytes)
        with self._processing_slots:
            image = process_image(data, self.options)
        prefix = self.settings.s3_processed_prefix
        thumbnail_key = derived_key(prefix, "thumbnails", event.bucket, event.key)
        grayscale_key = derived_key(prefix, "grayscale", event.bucket, event.key)
        self.store.put(thumbnail_key, image.thumbnail_jpeg, "image/jpeg")
        self.store.put(grayscale_key, image.grayscale_jpeg, "image/jpeg")
        elapsed_ms = (time.perf_counter() - started) * 1000
        return to_document(event, meta, image, thumbnail_key, grayscale_key, utc_now_iso(), elapsed_ms)
