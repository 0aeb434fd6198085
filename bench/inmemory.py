"""Floors measured from memory, one thread: bare decoding, the consumer's processing, faces.

No network: these are what the pipeline figures are divided by. Each rate is the best of a few
passes over the corpus, the usual way to read a floor on a machine others share.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import cv2
import numpy as np

from consumer.processing import ProcessingOptions, process_image
from imgpipe.errors import MessageError

from bench.corpus import Item, is_face_photo, is_photo_like
from bench.figures import Figure


def _best_rate(work, items: list[Item], passes: int) -> tuple[float, float]:
    """(best items/s over `passes` passes, seconds of that pass)."""
    best_seconds = float("inf")
    for _ in range(max(1, passes)):
        started = time.perf_counter()
        for _, data in items:
            work(data)
        best_seconds = min(best_seconds, time.perf_counter() - started)
    return len(items) / best_seconds, best_seconds


def _decode(data: bytes) -> None:
    try:
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # broken files are part of the corpus; failing on them is their cost
        pass


def decode_floor(items: list[Item], passes: int) -> Figure:
    # Without the pixel limit, the bombs in the corpus would make imdecode allocate gigabytes.
    if not os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS"):
        raise RuntimeError("OPENCV_IO_MAX_IMAGE_PIXELS is not set: call consumer.imageguard.apply_decoder_limits "
                           "before cv2 loads")
    cv2.setNumThreads(1)
    # The broken files make libpng and libjpeg complain on stderr; the table is what matters.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    rate, seconds = _best_rate(_decode, items, passes)
    return Figure("decode_floor", rate, "images/s",
                  detail={"images": len(items), "passes": passes, "seconds": round(seconds, 3),
                          "call": "cv2.imdecode(data, IMREAD_COLOR)", "threads": 1})


@dataclass
class ProcessingRun:
    rate: float
    seconds: float
    outcomes: dict  # key -> features dict, or "stage: reason" for a rejected input


def processing_run(items: list[Item], face_detection: bool, passes: int) -> ProcessingRun:
    """consumer.processing.process_image over the corpus, default options but faces as given."""
    cv2.setNumThreads(1)  # as the consumer does: parallelism is its workers', not OpenCV's
    options = ProcessingOptions(face_detection=face_detection)
    outcomes: dict = {}

    def work(data: bytes) -> None:
        try:
            process_image(data, options)
        except MessageError:  # rejected inputs count, as the consumer's dead letters do
            pass

    rate, seconds = _best_rate(work, items, passes)
    for key, data in items:  # outcomes from one more pass, outside the timing
        try:
            outcomes[key] = process_image(data, options).features
        except MessageError as exc:
            outcomes[key] = f"{exc.stage}: {exc.reason}"
    return ProcessingRun(rate, seconds, outcomes)


def processing_figure(name: str, run: ProcessingRun, decode: Figure, passes: int) -> Figure:
    rejected = sum(1 for o in run.outcomes.values() if isinstance(o, str))
    return Figure(name, run.rate, "images/s", floor=decode.value, floor_name="decode_floor",
                  detail={"images": len(run.outcomes), "rejected_by_guard_or_decoder": rejected,
                          "passes": passes, "seconds": round(run.seconds, 3), "threads": 1,
                          "call": "consumer.processing.process_image(data, ProcessingOptions("
                                  f"face_detection={name.endswith('faces')}))"})


def _astronaut_jpeg() -> bytes:
    from skimage import data

    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(data.astronaut()[:, :, ::-1]),
                               [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return encoded.tobytes()


def _full_resolution_faces(data: bytes) -> int:
    """The reference: the same cascade on the full-size grayscale image, with the 30 px minimum
    common in OpenCV examples (what a working scale is compared with)."""
    from consumer.processing import FACE_CASCADE_FILE, FACE_MIN_NEIGHBORS, FACE_SCALE_FACTOR

    gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        return 0
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + FACE_CASCADE_FILE)
    return len(cascade.detectMultiScale(gray, scaleFactor=FACE_SCALE_FACTOR, minNeighbors=FACE_MIN_NEIGHBORS,
                                        minSize=(30, 30)))


def face_figures(items: list[Item], faces_run: ProcessingRun) -> list[Figure]:
    """Faces found at the consumer's working scale against the full-resolution cascade: on the
    astronaut photo, on the corpus's face photos (one face each), and on photos with no face."""
    from consumer import processing

    scale = {"face_size_px": processing.FACE_SIZE, "min_face_px": processing.FACE_MIN_SIZE,
             "min_neighbors": processing.FACE_MIN_NEIGHBORS, "scale_factor": processing.FACE_SCALE_FACTOR}
    astronaut = _astronaut_jpeg()
    found = process_image(astronaut, ProcessingOptions(face_detection=True)).features["faces"]
    figures = [Figure("faces_astronaut", found, "faces",
                      detail={"expected": 1, "full_resolution": _full_resolution_faces(astronaut),
                              "image": "skimage.data.astronaut() 512x512, JPEG q90", **scale})]

    face_keys = [key for key, _ in items if is_face_photo(key)]
    by_key = dict(items)
    counts = {key: faces_run.outcomes[key] for key in face_keys if isinstance(faces_run.outcomes[key], dict)}
    working = [features["faces"] for features in counts.values()]
    full = [_full_resolution_faces(by_key[key]) for key in counts]
    share = (sum(1 for n in working if n >= 1) / len(working)) if working else None
    share_full = (sum(1 for n in full if n >= 1) / len(full)) if full else None
    figures.append(Figure(
        "faces_face_photos", share, "share found", floor=share_full, floor_name="full-resolution cascade",
        detail={"photos": len(working), "found": sum(1 for n in working if n >= 1),
                "more_than_one": sum(1 for n in working if n > 1),
                "found_full_resolution": sum(1 for n in full if n >= 1),
                "more_than_one_full_resolution": sum(1 for n in full if n > 1),
                "source": "demo corpus photos/astronaut/ (one face each, 70-300 px wide)", **scale}))

    no_face = [o for key, o in faces_run.outcomes.items() if is_photo_like(key) and isinstance(o, dict)]
    figures.append(Figure("faces_false_positives", sum(o["faces"] for o in no_face), "faces",
                          detail={"images": len(no_face), "with_a_face": sum(1 for o in no_face if o["faces"]),
                                  "source": "photo-like images (shapes and noise, no faces)"}))
    return figures
