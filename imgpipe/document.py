"""The metadata document: what the consumer indexes and what export, MapReduce and visualize read.

One document per S3 object. Its `id` is a hash of bucket and key because MeiliSearch ids allow
only `A-Z a-z 0-9 - _` (at most 511 bytes) while S3 keys allow almost anything; hashing also
makes a redelivered event replace the same document instead of adding a second one.
"""
from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

from imgpipe import PIPELINE_VERSION
from imgpipe.events import ImageEvent, to_iso

# Field -> meaning. The order is the CSV column order of mapreduce/export_csv.py.
FIELDS: dict[str, str] = {
    "id": "sha256 of bucket + NUL + key, hex (stable across redeliveries)",
    "bucket": "source bucket",
    "key": "source object key, exactly as S3 has it",
    "file_name": "last path segment of the key",
    "format": "format sniffed from the bytes (consumer.imageguard.FORMATS): jpeg, png, heic, avif, ...",
    "size_bytes": "object size in bytes",
    "size_kb": "object size in KiB (size_bytes / 1024, 2 decimals)",
    "width": "width in pixels, in display orientation (EXIF applied)",
    "height": "height in pixels, in display orientation",
    "channels": "channels of the decoded image (1 gray, 3 colour, 4 with alpha)",
    "bit_depth": "bits per channel of the source (8 or 16)",
    "megapixels": "width * height / 1e6, 3 decimals",
    "mean_brightness": "mean of the grayscale image, 0-255",
    "sharpness": "variance of the Laplacian of the grayscale image",
    "edge_density": "fraction of pixels that are Canny edges, 0-1",
    "dominant_color": "most common colour as #rrggbb",
    "phash": "64-bit perceptual hash (DCT), 16 hex digits",
    "sha256": "sha256 of the object's bytes (finds exact duplicates)",
    "thumbnail_key": "S3 key of the thumbnail (JPEG)",
    "grayscale_key": "S3 key of the grayscale version (JPEG)",
    "etag": "S3 ETag of the object when the event was produced",
    "timestamp": "object's LastModified as Unix seconds (sortable, filterable)",
    "last_modified": "object's LastModified, UTC ISO-8601",
    "event_time": "when S3 made the change (event-driven producer) or the producer listed it, UTC ISO-8601",
    "processed_at": "when the consumer processed the image, UTC ISO-8601",
    "processing_ms": "time spent fetching and processing the image, milliseconds",
    "pipeline_version": "version of the pipeline that built the document",
    # Appended, not inserted: the CSV column order of older exports stays a prefix of this one.
    "size_bin_kb": "lower edge, KiB, of the size-histogram bin the object falls in (SIZE_BIN_EDGES_KB)",
    "processed_hour": "hour of processed_at, 0-23 UTC",
    "frames": "frames, pages, layers or icon sizes in the file (GIF, APNG, TIFF, MPO, ICO, HEIF, ...); "
              "the first frame (PSD: the composite, ICO/ICNS: the largest image) is the one processed",
    # Written by the enricher (enricher/text.py), null until it has read the image; the other
    # enrichment fields (text, text_lines, face_boxes, ...) are in ENRICHMENT_FIELDS, not the CSV.
    "text_chars": "characters (not spaces) of the text read in the image; null until the enricher ran",
}

# Fields an enrichment stage (enricher/) adds to a document after the core consumer indexed it.
# The core never writes them (a new version's document replaces the old one whole, and its
# announcement has the enrichers add them again), and every reader tolerates their absence.
ENRICHMENT_FIELDS: dict[str, str] = {
    "faces": "number of faces YuNet found (absent until the enricher ran; filterable)",
    "face_boxes": "faces found by YuNet: [{x, y, w, h (fractions of the upright image), confidence}]",
    "faces_version": "version of the faces model that wrote faces and face_boxes",
    "text": "the text read in the image (PP-OCR), one line per line; searchable",
    "text_lines": "[{text, box [x, y, w, h] as fractions, confidence}] per line read",
    "text_version": "version of the text model that wrote text, text_lines and text_chars",
    "enrichment_version": "set when every model's fields are of the current version (the backfill's test)",
    "enriched_etag": "the etag of the version the enrichment was computed from",
}

# The CSV columns of mapreduce/export_csv.py: FIELDS with the enrichment fields where `faces`
# stood before it left the core, so the column order of older exports stays a prefix of this
# one (and the streaming mappers' default order holds); a cell is empty until enrichment ran.
EXPORT_COLUMNS: tuple[str, ...] = (
    *list(FIELDS)[:list(FIELDS).index("dominant_color") + 1], "faces",
    *list(FIELDS)[list(FIELDS).index("dominant_color") + 1:])

# The size histogram counts images per fixed bin, so MeiliSearch can count them with a facet on
# `size_bin_kb` and the chart drawn from the facet equals the one drawn from every document. Ten
# bins per decade (the R10 preferred numbers, each about 26% wider than the last) from 0.01 KiB
# to 100 GiB: 100 bins, equal widths on a log axis; sizes below 0.01 KiB share the bin at 0.
R10 = (1.0, 1.25, 1.6, 2.0, 2.5, 3.15, 4.0, 5.0, 6.3, 8.0)
SIZE_BIN_EDGES_KB: tuple[float, ...] = (0.0,) + tuple(round(m * 10.0 ** d, 6) for d in range(-2, 8) for m in R10)
# Each edge as whole millionths of a KiB times 1024: bytes * 10**6 compare with it exactly.
_SIZE_BIN_THRESHOLDS = tuple(round(edge * 10 ** 6) * 1024 for edge in SIZE_BIN_EDGES_KB)

INDEX_SETTINGS = {
    # Nobody searches facet values or needs word proximity across positions inside a field:
    # both off, measured 0.3 ms less MeiliSearch CPU per document (1.16 -> 0.85 ms, no vectors).
    "facetSearch": False,
    "proximityPrecision": "byAttribute",
    # `text` (read in the image by the enricher) last: a match in the file name ranks first.
    "searchableAttributes": ["file_name", "key", "format", "dominant_color", "bucket", "text"],
    # `id` is filterable so readers with the search-only key can fetch given documents (the
    # duplicate groups' members) by search.
    "filterableAttributes": ["id", "bucket", "format", "faces", "width", "height", "size_kb", "megapixels",
                             "sharpness", "edge_density", "mean_brightness", "timestamp", "sha256",
                             "phash", "channels", "bit_depth", "key", "size_bin_kb", "processed_hour",
                             # The enricher's: etag and the versions to check and find what is due.
                             "etag", "text_chars", "enrichment_version", "faces_version", "text_version"],
    "sortableAttributes": ["timestamp", "size_kb", "width", "height", "faces", "sharpness",
                           "megapixels", "processed_at", "file_name", "text_chars"],
    # Visualize counts with facets (visualize/aggregates.py): size_bin_kb has at most 100 values and
    # processed_hour 24; face counts are read below 10 and counted at 10 and above, so none of them
    # can be cut by MeiliSearch's limit (default 100), which is raised anyway to leave room.
    "faceting": {"maxValuesPerFacet": 200},
}

# The similarity descriptor travels in MeiliSearch's `_vectors` under this embedder (source
# userProvided), not as one of FIELDS: it is not exported to the CSV nor shown in tables. A
# different descriptor would get a new embedder name: MeiliSearch refuses new dimensions for an
# embedder whose documents hold vectors. DESCRIPTOR_DIMENSIONS is consumer.descriptor's (a test
# checks they agree; imgpipe does not import the consumer).
EMBEDDER = "image"
DESCRIPTOR_DIMENSIONS = 255
EMBEDDER_SETTINGS = {"embedders": {EMBEDDER: {"source": "userProvided", "dimensions": DESCRIPTOR_DIMENSIONS}}}

_UNSAFE_SEGMENTS = {"", ".", ".."}
# The stem of a derived image's file name, in UTF-8 bytes: with ".jpg" well under 255.
MAX_STEM_BYTES = 200


def document_id(bucket: str, key: str) -> str:
    return hashlib.sha256(bucket.encode("utf-8") + b"\0" + key.encode("utf-8")).hexdigest()


def file_name(key: str) -> str:
    return key.rstrip("/").rsplit("/", 1)[-1]


def size_bin_kb(size_bytes: int) -> float:
    """The lower edge (KiB) of the SIZE_BIN_EDGES_KB bin holding an object of `size_bytes`;
    integer arithmetic, so the bin of a size is the same wherever it is computed."""
    import bisect

    return SIZE_BIN_EDGES_KB[max(0, bisect.bisect_right(_SIZE_BIN_THRESHOLDS, int(size_bytes) * 10 ** 6) - 1)]


def hour_of(iso_time: str) -> int | None:
    """The UTC hour (0-23) of an ISO-8601 time (no zone means UTC), None when it is not one."""
    try:
        moment = datetime.fromisoformat(str(iso_time).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo is None else moment.astimezone(timezone.utc)).hour


def derived_key(processed_prefix: str, kind: str, bucket: str, key: str, extension: str = "jpg") -> str:
    """Key of a derived image (kind: 'thumbnails' or 'grayscale').

    `{prefix}{kind}/{id[:16]}/{stem}.{extension}`: the id part makes it unique per source
    object, and the readable stem keeps only the file name with anything that could act as a
    path (`/`, `..`, control characters) removed, so no key can escape the prefix.
    """
    stem = posixpath.splitext(file_name(key))[0]
    stem = re.sub(r"[\x00-\x1f\x7f/\\]", "_", stem)
    # Cut by UTF-8 bytes, never inside a character: file systems (and so S3 servers that store
    # objects as files, like versitygw) refuse a path segment over 255 bytes.
    stem = stem.encode("utf-8")[:MAX_STEM_BYTES].decode("utf-8", "ignore")
    if stem in _UNSAFE_SEGMENTS or set(stem) <= {"."}:
        stem = "image"
    return f"{processed_prefix}{kind}/{document_id(bucket, key)[:16]}/{stem}.{extension}"


@dataclass(frozen=True)
class DerivedKeys:
    """Where the derived images of one source object go."""

    thumbnail: str
    grayscale: str

    @classmethod
    def of(cls, processed_prefix: str, bucket: str, key: str) -> "DerivedKeys":
        return cls(derived_key(processed_prefix, "thumbnails", bucket, key),
                   derived_key(processed_prefix, "grayscale", bucket, key))


@dataclass(frozen=True)
class SourceObject:
    """What S3 said about the object when it was fetched: it wins over the event, which may be
    older (the object can change between the event and the fetch)."""

    size: int
    etag: str = ""
    last_modified: datetime | None = None


@dataclass(frozen=True)
class ProcessingRun:
    """When and how fast the image was processed, and by which version of the pipeline."""

    processed_at: str  # UTC ISO-8601
    processing_ms: float
    pipeline_version: str = PIPELINE_VERSION


def to_document(event: ImageEvent, source: SourceObject, features: dict, derived: DerivedKeys,
                run: ProcessingRun, descriptor: Sequence[float] | None = None) -> dict:
    """The index document of one image: FIELDS in their order, then `_vectors`.

    `features` are the processing core's (format, width, height, ... sha256: see FIELDS); the
    rest comes from the event, the fetched object, the derived keys and the run. `_vectors` holds
    the descriptor under EMBEDDER, or None (no descriptor: MeiliSearch then leaves the document
    out of similar searches, and still accepts it once the embedder exists).
    """
    if source.last_modified is not None:
        moment = source.last_modified if source.last_modified.tzinfo else \
            source.last_modified.replace(tzinfo=timezone.utc)
        last_modified = to_iso(moment)
    else:
        last_modified = event.last_modified
        moment = datetime.fromisoformat(event.last_modified.replace("Z", "+00:00"))
    document = {
        **features,
        "id": document_id(event.bucket, event.key),
        "bucket": event.bucket,
        "key": event.key,
        "file_name": file_name(event.key),
        "size_bytes": source.size,
        "size_kb": round(source.size / 1024, 2),
        "thumbnail_key": derived.thumbnail,
        "grayscale_key": derived.grayscale,
        "etag": source.etag or event.etag,
        "timestamp": int(moment.timestamp()),
        "last_modified": last_modified,
        "event_time": event.event_time,
        "processed_at": run.processed_at,
        "processing_ms": round(run.processing_ms, 1),
        "pipeline_version": run.pipeline_version,
        "size_bin_kb": size_bin_kb(source.size),
        "processed_hour": hour_of(run.processed_at),
        "text_chars": None,  # the enricher's, once it has read the image
    }
    missing = [name for name in FIELDS if name not in document]
    if missing:
        raise ValueError(f"features lack {', '.join(missing)}")
    vector = list(descriptor) if descriptor else None
    return {**{name: document[name] for name in FIELDS}, "_vectors": {EMBEDDER: vector}}
