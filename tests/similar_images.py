"""Originals, their transformed copies and the consumer's inputs for them: the small collection
the descriptor tests (unit and MeiliSearch) rank."""
from __future__ import annotations

import functools

import cv2
import numpy as np

from fixtures.images import photo_like_pixels

PHOTOS = ("astronaut", "coffee", "chelsea", "camera")  # bundled with scikit-image; camera is gray


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def _area(image: np.ndarray, factor: float) -> np.ndarray:
    rows, cols = image.shape[:2]
    return cv2.resize(image, (max(1, round(cols * factor)), max(1, round(rows * factor))),
                      interpolation=cv2.INTER_AREA)


def descriptor_of(data: bytes) -> list[float]:
    """The descriptor the consumer computes for these bytes (consumer.processing, no faces)."""
    from consumer.processing import ProcessingOptions, process_image

    return list(process_image(data, ProcessingOptions()).descriptor)


def copies(image: np.ndarray) -> dict[str, bytes]:
    """Resized, re-encoded, cropped, brightened and slightly tilted copies, as JPEG."""
    rows, cols = image.shape[:2]
    tilt = cv2.warpAffine(image, cv2.getRotationMatrix2D((cols / 2, rows / 2), 3.0, 1.0), (cols, rows),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return {
        "resized50": jpeg(_area(image, 0.5)),
        "resized25": jpeg(_area(image, 0.25)),
        "quality40": jpeg(image, 40),
        "cropped5": jpeg(image[rows * 5 // 200: rows - rows * 5 // 200, cols * 5 // 200: cols - cols * 5 // 200]),
        "brighter20": jpeg(cv2.convertScaleAbs(image, alpha=1.2)),
        "tilted3": jpeg(tilt),
    }


@functools.lru_cache(maxsize=1)
def collection() -> tuple[tuple[str, str, bytes], ...]:
    """(group, kind, bytes): 6 photo-like originals and 4 photographs, each with its copies."""
    import skimage.data

    originals = {f"synthetic{seed}": photo_like_pixels(seed, 640, 480) for seed in range(6)}
    for name in PHOTOS:
        photo = getattr(skimage.data, name)()
        originals[name] = photo if photo.ndim == 2 else cv2.cvtColor(photo, cv2.COLOR_RGB2BGR)
    items = []
    for group, image in originals.items():
        items.append((group, "original", jpeg(image, 95)))
        items += [(group, kind, data) for kind, data in copies(image).items()]
    return tuple(items)
