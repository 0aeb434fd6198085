"""Known documents and thumbnails for the visualize and search tests (this module holds no tests).

Documents follow imgpipe.document.FIELDS; the values are deterministic so each test can
compute the expected counts itself.
"""
from __future__ import annotations

import os
import random
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from imgpipe import meili, s3
from imgpipe.document import INDEX_SETTINGS, DerivedKeys, ProcessingRun, SourceObject, to_document
from imgpipe.events import ImageEvent, to_iso

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BASE_TIME = 1_764_000_000  # 2025-11-24 16:00:00 UTC
FORMATS = ["jpeg"] * 6 + ["png"] * 3 + ["webp"]
FACES = [0] * 6 + [1, 1, 2, 3, 12]


def make_doc(i: int, settings, *, timestamp: int | None = None, size_kb: float | None = None,
             processed_hour: int | None = None, name: str | None = None, nulls: tuple[str, ...] = ()) -> dict:
    """Document number i, built by the consumer's own to_document; the fields in `nulls` are null
    (a document missing a value, as an older pipeline could write)."""
    rnd = random.Random(i)
    bucket = settings.s3_bucket
    fmt = FORMATS[i % len(FORMATS)]
    key = f"{settings.s3_raw_prefix}{name or f'photo_{i:05d}.{fmt}'}"
    size_bytes = round((size_kb if size_kb is not None else rnd.lognormvariate(5, 1.2)) * 1024)
    width, height = rnd.choice([(640, 480), (1920, 1080), (800, 800), (4032, 3024)])
    stamp = timestamp if timestamp is not None else BASE_TIME + i * 37
    hour = processed_hour if processed_hour is not None else (i * 5) % 24
    processed = datetime(2025, 11, 25, hour, i % 60, 7, 123000, tzinfo=timezone.utc)
    features = {
        "format": fmt, "frames": 1, "size_bytes": size_bytes, "width": width, "height": height, "channels": 3, "bit_depth": 8,
        "megapixels": round(width * height / 1e6, 3), "mean_brightness": round(rnd.uniform(20, 230), 2),
        "sharpness": round(rnd.uniform(1, 900), 3), "edge_density": round(rnd.random(), 4),
        "dominant_color": f"#{rnd.randrange(1 << 24):06x}",
        "phash": f"{rnd.getrandbits(64):016x}", "sha256": f"{i:064x}"}
    moment = datetime.fromtimestamp(stamp, tz=timezone.utc)
    event = ImageEvent(bucket, key, size_bytes, f"{i:032x}", to_iso(moment), to_iso(processed))
    doc = to_document(event, SourceObject(size_bytes, f'"{i:032x}"', moment), features,
                      DerivedKeys.of(settings.s3_processed_prefix, bucket, key),
                      ProcessingRun(to_iso(processed), rnd.uniform(5, 80), pipeline_version="test"))
    doc["faces"] = FACES[i % len(FACES)]  # merged in by the enrichment stage
    doc.update(dict.fromkeys(nulls))
    return doc


def index_documents(settings, docs: list[dict], apply_settings: bool = True) -> None:
    """Apply INDEX_SETTINGS to the isolated index (as the consumer would), or reset its settings to
    MeiliSearch's defaults (an index nobody set up), and add `docs`."""
    client = meili.client(settings, key=settings.meili_master_key)
    index = client.index(settings.meili_index)
    task = index.update_settings(INDEX_SETTINGS) if apply_settings else index.reset_settings()
    done = client.wait_for_task(task.task_uid, timeout_in_ms=60000)
    assert done.status == "succeeded", done.error
    for start in range(0, len(docs), 5000):
        task = index.add_documents(docs[start:start + 5000], primary_key="id")
        done = client.wait_for_task(task.task_uid, timeout_in_ms=120000, interval_in_ms=100)
        assert done.status == "succeeded", done.error


def thumbnail_bytes(i: int, width: int = 256, height: int = 192) -> bytes:
    import cv2

    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x * 255 // width), (y * 255 // height), np.full_like(x, (i * 70) % 256)], axis=-1)
    ok, data = cv2.imencode(".jpg", image.astype(np.uint8))
    assert ok
    return data.tobytes()


def upload_thumbnails(settings, docs: list[dict]) -> None:
    client = s3.client(settings)
    for i, doc in enumerate(docs):
        client.put_object(Bucket=settings.s3_bucket, Key=doc["thumbnail_key"], Body=thumbnail_bytes(i),
                      ContentType="image/jpeg")


def search_only(settings):
    """The same settings without master or admin key: what reading is allowed to use."""
    reader = settings.with_overrides(meili_master_key="", meili_admin_key="")
    assert reader.reading_key and reader.reading_key == settings.meili_search_key
    return reader


def script_env(settings, **extra) -> dict:
    env = dict(os.environ, MEILI_INDEX=settings.meili_index, MEILI_MASTER_KEY="", MEILI_ADMIN_KEY="",
               MEILI_SEARCH_KEY=settings.meili_search_key, S3_BUCKET=settings.s3_bucket)
    env.update(extra)
    return env
