"""What runs in the enricher's worker processes (consumer/workers.py's pool, with the
consumer's time and memory budgets): decode under the consumer's decoder limits, run the models.

Both models read the original, decoded once: the derived images are too small for faces under
~64 px (enricher/faces.py has the measurements) and for small print.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from imgpipe.errors import InfrastructureError, MessageError

MODELS = ("faces", "text")
# Bumped with FACES_VERSION or TEXT_VERSION: a document whose enrichment_version differs is due
# for the backfill.
ENRICHMENT_VERSION = 1


def current_versions() -> dict[str, int]:
    from enricher.faces import FACES_VERSION
    from enricher.text import TEXT_VERSION

    return {"faces_version": FACES_VERSION, "text_version": TEXT_VERSION}


@dataclass(frozen=True)
class DecodeLimits:
    max_object_bytes: int
    max_image_pixels: int
    max_decode_bytes: int

    @classmethod
    def from_settings(cls, settings) -> "DecodeLimits":
        return cls(settings.max_object_bytes, settings.max_image_pixels, settings.max_decode_bytes)


@dataclass(frozen=True)
class ModelOutput:
    fields: dict
    cpu_seconds: dict  # model -> CPU seconds it took on this image


def preload(models: tuple[str, ...]) -> None:
    """Load the models once per worker, before its memory cap is set (consumer/workers.py)."""
    import numpy as np

    blank = np.full((64, 64, 3), 127, np.uint8)
    if "faces" in models:
        from enricher.faces import detect_faces

        detect_faces(blank)
    if "text" in models:
        from enricher.text import engine

        engine()


def decode_upright(data: bytes, longest: int, limits: DecodeLimits):
    """The image in display orientation, its longest side at most `longest`, as the consumer
    decodes it (guard first, then the decode budget). MessageError for a bad image."""
    from consumer import imageguard, processing
    from enricher.faces import fit_longest

    try:
        header = imageguard.check_image(data, limits.max_object_bytes, limits.max_image_pixels)
        needed = min(longest, max(header.width, header.height))
        decoded, _width, _height = processing._decode(data, header, needed, limits.max_decode_bytes)
        colour, _channels, _depth = processing._normalise(decoded, header)
        return fit_longest(colour, needed) if max(colour.shape[:2]) > needed else colour
    except (MessageError, InfrastructureError):
        raise
    except MemoryError:
        raise MessageError("budget", "ran out of memory while decoding the image") from None
    except Exception as exc:  # a codec surprise: this image's dead letter, not the enricher's end
        raise MessageError("decode", f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1:] or ''}") from None


def run_models(models: tuple[str, ...], data: bytes, limits: DecodeLimits) -> ModelOutput:
    """The models' fields for one image (its encoded bytes), decoded once for all of them."""
    from enricher.faces import FACE_SIZE, detect_faces, face_fields, fit_longest
    from enricher.text import DETECT_LONGEST, read_text, text_fields

    fields: dict = {}
    cpu: dict = {}
    image = decode_upright(data, DETECT_LONGEST if "text" in models else FACE_SIZE, limits)
    if "faces" in models:
        started = time.process_time()
        try:
            fields.update(face_fields(detect_faces(fit_longest(image, min(FACE_SIZE, max(image.shape[:2]))))))
        except Exception as exc:
            raise MessageError("faces", f"the face detector failed: {type(exc).__name__}: {exc}") from None
        cpu["faces"] = time.process_time() - started
    if "text" in models:
        started = time.process_time()
        try:
            fields.update(text_fields(read_text(image)))
        except InfrastructureError:
            raise
        except Exception as exc:
            raise MessageError("text", f"the text reader failed: {type(exc).__name__}: {exc}") from None
        cpu["text"] = time.process_time() - started
    return ModelOutput(fields, cpu)


def enrich_in_worker(models: tuple[str, ...], data: bytes, limits: DecodeLimits):
    """run_models, plus the worker's peak RSS (MB) and CPU seconds, as the pool expects."""
    from consumer.stats import peak_rss_mb

    started = time.process_time()
    output = run_models(models, data, limits)
    return output, peak_rss_mb(), time.process_time() - started
