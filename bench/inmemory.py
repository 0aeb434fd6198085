"""Floors measured from memory, one thread: bare decoding and the consumer's processing.

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

from bench.corpus import Item
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


def processing_run(items: list[Item], passes: int) -> ProcessingRun:
    """consumer.processing.process_image over the corpus, default options (what users run)."""
    cv2.setNumThreads(1)  # as the consumer does: parallelism is its workers', not OpenCV's
    options = ProcessingOptions()
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
                          "call": "consumer.processing.process_image(data, ProcessingOptions())"})
