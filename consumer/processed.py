"""What process_image answers: the worker's result, as the consumer's main process receives it.

Its own module, without OpenCV, for the same reason as consumer/options.py: pebble unpickles each
result in the main process, which imports the module the result's class is defined in. Defined
in consumer/processing.py, the first result loaded cv2, numpy and every Pillow plug-in into the
main process while the first images ran: a third of a second of its CPU, measured (py-spy), and
memory it never uses.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessedImage:
    features: dict  # consumer.processing.FEATURE_KEYS -> int/float/str (meanings in imgpipe.document.FIELDS)
    thumbnail_jpeg: bytes
    grayscale_jpeg: bytes
    # The similarity descriptor (consumer/descriptor.py): DESCRIPTOR_DIMENSIONS floats, unit norm.
    descriptor: tuple[float, ...] = ()
