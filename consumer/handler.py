"""One event, start to finish, in a worker thread: fetch, process, store derived images, build
the document. Indexing and committing happen per batch, in consumer/loop.py."""
from __future__ import annotations

import time

from imgpipe.document import DerivedKeys, ProcessingRun, document_id, to_document
from imgpipe.errors import MessageError
from imgpipe.events import ImageEvent, utc_now_iso
from imgpipe.settings import Settings

from consumer.storage import ObjectStore
from consumer.workers import ProcessingPool


def check_bucket_allowed(event: ImageEvent, allowed: tuple[str, ...]) -> None:
    """A forged event must not make the consumer read arbitrary buckets with its credentials."""
    if event.bucket not in allowed:
        raise MessageError("validate", f"bucket {event.bucket!r} is not in the allowed buckets "
                           f"({', '.join(allowed)}; set S3_ALLOWED_BUCKETS)")


class ImageHandler:
    """Runs on a thread pool larger than the processing pool: S3 transfers of some images overlap
    with the OpenCV work of others, which runs in the pool's worker processes, `workers` at once."""

    def __init__(self, settings: Settings, store: ObjectStore, processing: ProcessingPool):
        self.settings = settings
        self.store = store
        self.processing = processing

    def delete(self, event: ImageEvent) -> str:
        """Remove the derived images of a deleted object; returns its document id, for the index."""
        check_bucket_allowed(event, self.settings.allowed_buckets)
        derived = DerivedKeys.of(self.settings.s3_processed_prefix, event.bucket, event.key)
        self.store.delete([derived.thumbnail, derived.grayscale])
        return document_id(event.bucket, event.key)

    def handle(self, event: ImageEvent) -> dict:
        """Raises MessageError (dead-letter) or, on shutdown during an outage, Stopped."""
        started = time.perf_counter()
        check_bucket_allowed(event, self.settings.allowed_buckets)
        data, source = self.store.fetch(event.bucket, event.key, self.settings.max_object_bytes)
        image = self.processing.process(data)
        derived = DerivedKeys.of(self.settings.s3_processed_prefix, event.bucket, event.key)
        self.store.put(derived.thumbnail, image.thumbnail_jpeg, "image/jpeg")
        self.store.put(derived.grayscale, image.grayscale_jpeg, "image/jpeg")
        run = ProcessingRun(utc_now_iso(), (time.perf_counter() - started) * 1000)
        return to_document(event, source, image.features, derived, run, image.descriptor)
