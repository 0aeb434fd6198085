"""One event, start to finish, in a worker thread: fetch, process, store derived images, build
the document. Indexing and committing happen per batch, in consumer/loop.py."""
from __future__ import annotations

import threading
import time

from imgpipe.document import DerivedKeys, ProcessingRun, to_document
from imgpipe.errors import MessageError
from imgpipe.events import ImageEvent, utc_now_iso
from imgpipe.settings import Settings

from consumer.processing import ProcessingOptions, process_image
from consumer.storage import ObjectStore


def check_bucket_allowed(event: ImageEvent, allowed: tuple[str, ...]) -> None:
    """A forged event must not make the consumer read arbitrary buckets with its credentials."""
    if event.bucket not in allowed:
        raise MessageError("validate", f"bucket {event.bucket!r} is not in the allowed buckets "
                           f"({', '.join(allowed)}; set S3_ALLOWED_BUCKETS)")


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
        data, source = self.store.fetch(event.bucket, event.key, self.options.max_object_bytes)
        with self._processing_slots:
            image = process_image(data, self.options)
        derived = DerivedKeys.of(self.settings.s3_processed_prefix, event.bucket, event.key)
        self.store.put(derived.thumbnail, image.thumbnail_jpeg, "image/jpeg")
        self.store.put(derived.grayscale, image.grayscale_jpeg, "image/jpeg")
        run = ProcessingRun(utc_now_iso(), (time.perf_counter() - started) * 1000)
        return to_document(event, source, image.features, derived, run)
