"""What process_image may be told: sizes and limits, from the settings.

Its own module, without OpenCV, so the consumer's main process (which only hands images to its
workers) builds the options without loading cv2, numpy and the image codecs: a third of a
second of start-up before the first message, measured by `consumer_startup` in bench.
"""
from __future__ import annotations

from dataclasses import dataclass

from imgpipe.settings import Settings

_DEFAULTS = Settings()  # the one place processing defaults live


@dataclass(frozen=True)
class ProcessingOptions:
    thumbnail_size: int = _DEFAULTS.thumbnail_size  # longest side of the thumbnail
    max_image_pixels: int = _DEFAULTS.max_image_pixels
    max_object_bytes: int = _DEFAULTS.max_object_bytes
    grayscale_max_size: int = _DEFAULTS.grayscale_max_size  # longest side of the grayscale version; 0 = full
    max_decode_bytes: int = _DEFAULTS.max_decode_bytes  # decoded pixels, estimated from the header

    def __post_init__(self):
        if self.thumbnail_size < 1 or self.grayscale_max_size < 0:
            raise ValueError(f"invalid sizes: thumbnail_size={self.thumbnail_size}, "
                             f"grayscale_max_size={self.grayscale_max_size}")

    @classmethod
    def from_settings(cls, settings) -> "ProcessingOptions":
        """Options from imgpipe.settings.Settings."""
        return cls(thumbnail_size=settings.thumbnail_size, max_image_pixels=settings.max_image_pixels,
                   max_object_bytes=settings.max_object_bytes,
                   grayscale_max_size=settings.grayscale_max_size, max_decode_bytes=settings.max_decode_bytes)
