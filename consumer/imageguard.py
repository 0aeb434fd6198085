"""The guard in front of the decoder: what an object claims to be, checked before any pixel is decoded.

A 48 KB PNG can declare 20000x20000 pixels and take gigabytes to decode, so the size limits
are applied to the object and to the dimensions read from its header. The format is sniffed
from the first bytes, never taken from the key's extension.

Pillow reads headers lazily (`Image.open` parses the header and stops), which makes it a
well-kept header parser for all six formats. Its own bomb check is switched off by
`apply_decoder_limits`, because ours replaces it with the configured limit and a precise
reason; nothing here decodes pixels.
"""
from __future__ import annotations

import io
import os
import struct
import sys
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from imgpipe.errors import MessageError

OPENCV_DEFAULT_MAX_IMAGE_PIXELS = 1 << 30
OPENCV_MAX_SIDE = 1 << 20  # CV_IO_MAX_IMAGE_WIDTH / HEIGHT, fixed at build time

# OpenCV's own pixel limit in this process, once apply_decoder_limits() has run.
_opencv_max_image_pixels: int | None = None


def apply_decoder_limits(max_image_pixels: int) -> int:
    """Set the decoders' own limits in this process; call it before the first decode.

    Pillow's bomb check is switched off: it would raise at twice its default of 89 MP whatever
    MAX_IMAGE_PIXELS says, and the guard applies the configured limit with a precise reason.
    OpenCV's ceiling (OPENCV_IO_MAX_IMAGE_PIXELS, a second line of defence) is set to
    `max_image_pixels`; OpenCV reads it once, when cv2 loads, so in a process that has already
    loaded cv2 the ceiling it read stays, and the guard rejects anything above it by name.
    Returns OpenCV's ceiling in force.
    """
    global _opencv_max_image_pixels
    Image.MAX_IMAGE_PIXELS = None
    preset = os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", "").strip()
    if "cv2" not in sys.modules and not preset:
        preset = str(max_image_pixels)
        os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = preset
    _opencv_max_image_pixels = int(preset) if preset.isdigit() else OPENCV_DEFAULT_MAX_IMAGE_PIXELS
    return _opencv_max_image_pixels


def opencv_max_image_pixels() -> int:
    if _opencv_max_image_pixels is None:
        raise RuntimeError("consumer.imageguard.apply_decoder_limits() must run before images are decoded")
    return _opencv_max_image_pixels


SUPPORTED_FORMATS = ("jpeg", "png", "webp", "tiff", "bmp", "gif")
_PILLOW_FORMAT = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "tiff": "TIFF", "bmp": "BMP", "gif": "GIF"}
DISPLAY_NAME = {"jpeg": "JPEG", "png": "PNG", "webp": "WebP", "tiff": "TIFF", "bmp": "BMP", "gif": "GIF"}
EXIF_ORIENTATION_TAG = 0x0112

# Formats we recognise only to name them in the rejection reason.
_OTHER_SIGNATURES = (
    (0, b"%PDF", "PDF document"),
    (0, b"8BPS", "Photoshop PSD"),
    (0, b"\x00\x00\x01\x00", "Windows ICO"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (0, b"qoif", "QOI"),
    (0, b"\xff\x0a", "JPEG XL"),
    (4, b"ftypavif", "AVIF"),
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (0, b"<svg", "SVG"),
    (0, b"<?xml", "XML/SVG"),
)


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, before decoding. width/height are as stored (before EXIF orientation)."""

    format: str  # one of SUPPORTED_FORMATS
    width: int
    height: int
    mode: str  # Pillow's mode from the header: L, RGB, RGBA, P, CMYK, I;16, ...
    has_alpha: bool  # an alpha channel or a transparent palette entry
    orientation: int = 1  # EXIF orientation 1-8 (1 when absent or unreadable)
    # What the decoder will hand back per pixel (OpenCV, as processing calls it): channels and
    # bytes per sample, for the decoded-size budget.
    decoded_channels: int = 3
    bytes_per_sample: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as displayed: orientations 5-8 swap the axes."""
        return (self.height, self.width) if self.orientation in (5, 6, 7, 8) else (self.width, self.height)


def sniff_format(data: bytes) -> str | None:
    """The format named by the first bytes, or None when it is not one we process."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:2] == b"BM":
        return "bmp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def _describe_unsupported(data: bytes) -> str:
    for offset, signature, name in _OTHER_SIGNATURES:
        if data[offset:offset + len(signature)] == signature:
            return f"unsupported image format {name} (supported: {', '.join(SUPPORTED_FORMATS)})"
    return f"not an image (starts with {data[:8]!r})"


def webp_declared_size(data: bytes) -> tuple[int, int] | None:
    """Canvas size from a WebP's first chunk, read by hand: Pillow's WebP reader allocates the
    whole canvas as soon as it opens the file, so the limit must be applied before it does."""
    kind = data[12:16]
    try:
        if kind == b"VP8X":
            width = 1 + int.from_bytes(data[24:27], "little")
            height = 1 + int.from_bytes(data[27:30], "little")
            return width, height
        if kind == b"VP8L" and data[20:21] == b"\x2f":
            bits = struct.unpack("<I", data[21:25])[0]
            return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        if kind == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
            width, height = struct.unpack("<HH", data[26:30])
            return width & 0x3FFF, height & 0x3FFF
    except struct.error:
        return None
    return None


def _orientation(image, fmt: str) -> int:
    """EXIF orientation, read only from data the header parse already holds (never loading pixels:
    Pillow's PNG getexif() decodes the whole image when the eXIf chunk comes after the pixels)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data" is Pillow's warning, not ours
            if fmt == "tiff":
                value = image.tag_v2.get(EXIF_ORIENTATION_TAG, 1)
            elif "exif" in image.info:
                exif = Image.Exif()
                exif.load(image.info["exif"])
                value = exif.get(EXIF_ORIENTATION_TAG, 1)
            else:
                return 1
            value = int(value)
    except Exception:  # a malformed EXIF block is common and harmless: ignore the orientation
        return 1
    return value if 1 <= value <= 8 else 1


def _limit_pixels(width: int, height: int, fmt: str, max_image_pixels: int) -> None:
    if width < 1 or height < 1:
        raise MessageError("guard", f"{DISPLAY_NAME[fmt]} header declares an empty {width}x{height} image")
    if width * height > max_image_pixels:
        raise MessageError(
            "guard", f"{width}x{height} = {width * height / 1e6:.1f} megapixels declared in the "
                     f"{DISPLAY_NAME[fmt]} header, limit {max_image_pixels / 1e6:.1f}")


def check_image(data: bytes, max_object_bytes: int, max_image_pixels: int) -> ImageHeader:
    """Read and check the header of `data`; raise MessageError("guard", reason) for anything we
    will not decode: empty, too large, not an image, unreadable header, too many pixels."""
    if len(data) == 0:
        raise MessageError("guard", "empty object (0 bytes)")
    if len(data) > max_object_bytes:
        raise MessageError("guard", f"object is {len(data)} bytes, limit {max_object_bytes}")
    fmt = sniff_format(data)
    if fmt is None:
        raise MessageError("guard", _describe_unsupported(data))
    name = DISPLAY_NAME[fmt]
    if fmt == "webp":
        declared = webp_declared_size(data)
        if declared is None:
            raise MessageError("guard", "truncated or corrupt WebP header (no VP8/VP8L/VP8X chunk)")
        _limit_pixels(*declared, fmt, max_image_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Truncated File Read", corrupt EXIF: the reason says it
            image = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMAT[fmt]])
            width, height = image.size
            mode = image.mode
            has_alpha = "A" in image.getbands() or "transparency" in image.info
    except Exception as exc:  # Pillow raises many kinds for a broken header; all mean the same here
        if isinstance(exc, UnidentifiedImageError):
            detail = "Pillow cannot parse it"  # its own message names a memory address
        else:
            detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise MessageError("guard", f"truncated or corrupt {name} header ({detail})") from None
    _limit_pixels(width, height, fmt, max_image_pixels)
    opencv_limit = opencv_max_image_pixels()
    if max(width, height) > OPENCV_MAX_SIDE:
        raise MessageError("guard", f"{width}x{height} declared in the {name} header: a side above "
                                    f"OpenCV's limit of {OPENCV_MAX_SIDE} px")
    if width * height > opencv_limit:
        raise MessageError(
            "guard", f"{width}x{height} = {width * height / 1e6:.1f} megapixels, above "
                     f"OPENCV_IO_MAX_IMAGE_PIXELS={opencv_limit} (export MAX_IMAGE_PIXELS "
                     f"before the consumer starts to raise both)")
    channels, sample_bytes = _decoded_layout(data, image, fmt, mode, has_alpha)
    return ImageHeader(fmt, width, height, mode, has_alpha, _orientation(image, fmt), channels, sample_bytes)


# Channels OpenCV returns for Pillow's mode with IMREAD_UNCHANGED (PNG, TIFF, WebP, BMP, GIF).
_MODE_CHANNELS = {"1": 1, "L": 1, "P": 3, "LA": 2, "La": 2, "PA": 4, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3,
                  "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 1, "F": 1, "I;16": 1, "I;16B": 1, "I;16L": 1}


def _decoded_layout(data: bytes, image, fmt: str, mode: str, has_alpha: bool) -> tuple[int, int]:
    """(channels, bytes per sample) of the decoded image, read from the header."""
    if fmt == "jpeg":  # IMREAD_COLOR or IMREAD_GRAYSCALE: 8 bits, CMYK comes out as BGR
        return (1 if mode == "L" else 3), 1
    if fmt == "png":
        # Pillow reports a 16-bit RGB PNG as mode RGB: the bit depth is in IHDR itself.
        bit_depth, colour_type = data[24], data[25]
        channels = {0: 1, 2: 3, 3: 4 if has_alpha else 3, 4: 2, 6: 4}.get(colour_type, 4)
        return channels, 2 if bit_depth == 16 else 1
    if fmt == "tiff":
        try:
            bits = image.tag_v2.get(258, (8,))
            samples = int(image.tag_v2.get(277, 1))
            widest = max(bits) if isinstance(bits, (tuple, list)) else int(bits)
        except (TypeError, ValueError):
            return 4, 8  # unreadable tags: assume the widest layout, so the budget errs on the safe side
        return max(1, min(samples, 8)), max(1, -(-int(widest) // 8))
    channels = _MODE_CHANNELS.get(mode, 4)
    return (4 if has_alpha and channels < 4 else channels), 1


def decoded_bytes(header: ImageHeader, scale: int = 1) -> int:
    """Bytes the decoder allocates for the pixels, decoding at 1/scale (JPEG's reduced decodes)."""
    return -(-header.width // scale) * -(-header.height // scale) * header.decoded_channels * header.bytes_per_sample
