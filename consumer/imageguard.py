"""The guard in front of the decoder: what an object claims to be, checked before any pixel is decoded.

A 48 KB PNG can declare 20000x20000 pixels and take gigabytes to decode, so the size limits
are applied to the object and to the dimensions read from its header. The format is sniffed
from the first bytes, never taken from the key's extension.

Pillow reads headers lazily (`Image.open` parses the header and stops), which makes it a
well-kept header parser for every format in FORMATS (PAM's, which it lacks, is read by hand).
Formats that would run an external program or interpreter (EPS/PS/PDF through Ghostscript, SVG)
are refused by name before any parser sees them. Its own bomb check is switched off by
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

import pillow_heif
import pillow_jxl  # noqa: F401  (registers JPEG XL with Pillow on import)
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


# Pillow's plugins, registered once: pillow-heif adds HEIF (HEIC) and pillow-jxl-plugin JPEG XL to
# Pillow's own. EpsImagePlugin runs Ghostscript, an external interpreter, on whatever a file
# holds: it is unregistered here, and every Image.open names the plugins it may use (`formats=`),
# so no path can reach it. The stub plugins only identify their formats (they need a handler to
# decode), so they would identify a file that can never be decoded.
pillow_heif.register_heif_opener()
# One thread per decode: the consumer's parallelism is its worker processes, one per core.
pillow_heif.options.DECODE_THREADS = 1
Image.init()
_NEVER_OPEN = {"EPS", "PDF", "MPEG", "BUFR", "GRIB", "HDF5", "FITS", "WMF"}
for _name in _NEVER_OPEN:
    Image.OPEN.pop(_name, None)
    if _name in Image.ID:
        Image.ID.remove(_name)


@dataclass(frozen=True)
class Format:
    """One format we read: its name in reasons, the Pillow plugins that may parse its header, and
    the decoder (OpenCV where it decodes the format, fast; Pillow for the rest)."""

    display: str
    pillow: tuple[str, ...]
    decoder: str  # "opencv" or "pillow"


OPENCV, PILLOW = "opencv", "pillow"
# name (the document's `format`) -> Format. The first six are what OpenCV decodes fastest.
FORMATS: dict[str, Format] = {
    "jpeg": Format("JPEG", ("JPEG",), OPENCV),
    "mpo": Format("MPO (multi-picture JPEG)", ("JPEG", "MPO"), OPENCV),
    "png": Format("PNG", ("PNG",), OPENCV),
    "webp": Format("WebP", ("WEBP",), OPENCV),
    "tiff": Format("TIFF", ("TIFF",), OPENCV),
    "bmp": Format("BMP", ("BMP",), OPENCV),
    "gif": Format("GIF", ("GIF",), OPENCV),
    "avif": Format("AVIF", ("AVIF",), OPENCV),
    "jpeg2000": Format("JPEG 2000", ("JPEG2000",), OPENCV),
    "pbm": Format("PBM", ("PPM",), OPENCV),
    "pgm": Format("PGM", ("PPM",), OPENCV),
    "ppm": Format("PPM", ("PPM",), OPENCV),
    "pfm": Format("PFM", ("PPM",), OPENCV),
    "pam": Format("PAM", (), OPENCV),  # Pillow cannot parse P7: its header is read by hand
    "heic": Format("HEIC/HEIF", ("HEIF",), PILLOW),
    "jxl": Format("JPEG XL", ("JXL",), PILLOW),
    "psd": Format("Photoshop PSD", ("PSD",), PILLOW),
    "ico": Format("Windows ICO", ("ICO",), PILLOW),
    "cur": Format("Windows CUR", ("CUR",), PILLOW),
    "icns": Format("Apple ICNS", ("ICNS",), PILLOW),
    "dds": Format("DirectDraw DDS", ("DDS",), PILLOW),
    "qoi": Format("QOI", ("QOI",), PILLOW),
    "pcx": Format("PCX", ("PCX",), PILLOW),
    "sgi": Format("SGI", ("SGI",), PILLOW),
    "xpm": Format("XPM", ("XPM",), PILLOW),
    "xbm": Format("XBM", ("XBM",), PILLOW),
    "tga": Format("TGA", ("TGA",), PILLOW),
}
# The rest of Pillow's readers, found by trying them (formats without a signature of their own).
_OTHER_PILLOW = tuple(sorted(name for name in Image.OPEN
                             if name not in {p for f in FORMATS.values() for p in f.pillow} | _NEVER_OPEN))
for _name in _OTHER_PILLOW:
    FORMATS[_name.lower()] = Format(_name, (_name,), PILLOW)
SUPPORTED_FORMATS = tuple(FORMATS)
DISPLAY_NAME = {name: f.display for name, f in FORMATS.items()}
EXIF_ORIENTATION_TAG = 0x0112

# Formats refused by name, with the reason: decoding them means running an external program or
# an interpreter on the file's contents.
_REFUSED_SIGNATURES = (
    (0, b"%PDF", "PDF document", "Pillow renders PDF only through Ghostscript, an external interpreter"),
    (0, b"%!PS", "PostScript/EPS", "Pillow reads it by running Ghostscript, an external interpreter"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS (DOS binary)", "Pillow reads it by running Ghostscript, an external interpreter"),
)
_SVG_REASON = "SVG is a program for a renderer (scripts, external references), not pixels"
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1",
                b"mif2", b"miaf"}
_AVIF_BRANDS = {b"avif", b"avis"}
_PNM = {b"1": "pbm", b"4": "pbm", b"2": "pgm", b"5": "pgm", b"3": "ppm", b"6": "ppm", b"7": "pam",
        b"f": "pfm", b"F": "pfm"}


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, before decoding. width/height are as stored (before EXIF orientation)."""

    format: str  # one of FORMATS
    width: int
    height: int
    mode: str  # Pillow's mode from the header: L, RGB, RGBA, P, CMYK, I;16, ...
    has_alpha: bool  # an alpha channel or a transparent palette entry
    orientation: int = 1  # EXIF orientation 1-8 (1 when absent or unreadable)
    # What the decoder will hand back per pixel (OpenCV, as processing calls it): channels and
    # bytes per sample, for the decoded-size budget.
    decoded_channels: int = 3
    bytes_per_sample: int = 1
    frames: int = 1  # frames, pages or images in the file (the first, or the largest icon, is used)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as displayed: orientations 5-8 swap the axes."""
        return (self.height, self.width) if self.orientation in (5, 6, 7, 8) else (self.width, self.height)


def sniff_format(data: bytes) -> str | None:
    """The format named by the first bytes, or None when no signature matches (the formats
    without one, TGA among them, are then identified by Pillow's readers in check_image)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # classic and BigTIFF
        return "tiff"
    if data[:2] == b"BM":
        return "bmp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[4:8] == b"ftyp":
        size = int.from_bytes(data[:4], "big")
        brands = {data[8:12]} | {data[i:i + 4] for i in range(16, min(max(size, 16), 256), 4)}
        if data[8:12] in _AVIF_BRANDS:
            return "avif"
        if data[8:12] in _HEIF_BRANDS:
            return "heic"
        if brands & _AVIF_BRANDS:
            return "avif"
        if brands & _HEIF_BRANDS:
            return "heic"
        return None
    if data[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or data[:4] == b"\xff\x4f\xff\x51":
        return "jpeg2000"
    if data[:2] == b"\xff\x0a" or data[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "jxl"
    if data[:6] == b"P7 332":  # an XV thumbnail, not a PAM
        return "xvthumb"
    if data[:1] == b"P" and data[1:2] in _PNM and data[2:3] in (b" ", b"\t", b"\n", b"\r"):
        return _PNM[data[1:2]]
    if data[:4] == b"8BPS":
        return "psd"
    # An uncompressed TGA can start with the same four bytes; an icon directory holds an image.
    if data[:4] == b"\x00\x00\x01\x00" and data[4:6] != b"\x00\x00":
        return "ico"
    if data[:4] == b"\x00\x00\x02\x00" and data[4:6] != b"\x00\x00":
        return "cur"
    if data[:4] == b"icns":
        return "icns"
    if data[:4] == b"DDS ":
        return "dds"
    if data[:4] == b"qoif":
        return "qoi"
    if data[:1] == b"\x0a" and data[1:2] in b"\x00\x02\x03\x04\x05" and data[2:3] == b"\x01":
        return "pcx"
    if data[:2] == b"\x01\xda":
        return "sgi"
    if data[:9] == b"/* XPM */":
        return "xpm"
    if data.lstrip()[:7] == b"#define" and b"_width" in data[:200]:
        return "xbm"
    return None


def _refused(data: bytes) -> str | None:
    """The reason a format is refused by name, or None."""
    for offset, signature, name, why in _REFUSED_SIGNATURES:
        if data[offset:offset + len(signature)] == signature:
            return f"refused {name}: {why}"
    head = data[:1024].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head) or \
            (head.startswith(b"<!doctype svg")):
        return f"refused SVG: {_SVG_REASON}"
    return None


def _identify(data: bytes) -> str | None:
    """A format without a signature of its own (TGA, IM, ...), as Pillow's readers identify it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=["TGA", *_OTHER_PILLOW])
            return image.format.lower() if image.format else None
    except Exception:  # none of them parses it: not an image we read
        return None


def _describe_unsupported(data: bytes) -> str:
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
    if max(width, height) > 1 << 31:  # e.g. a PAM header declaring a 20-digit width
        raise MessageError("guard", f"{DISPLAY_NAME[fmt]} header declares an impossible {width}x{height} image")
    if width < 1 or height < 1:
        raise MessageError("guard", f"{DISPLAY_NAME[fmt]} header declares an empty {width}x{height} image")
    if width * height > max_image_pixels:
        raise MessageError(
            "guard", f"{width}x{height} = {width * height / 1e6:.1f} megapixels declared in the "
                     f"{DISPLAY_NAME[fmt]} header, limit {max_image_pixels / 1e6:.1f}")


def header_by_hand(data: bytes, fmt: str) -> tuple[int, int, str] | None:
    """(width, height, Pillow-style mode) read from a PNG, BMP or JPEG 2000 header by hand, or None."""
    try:
        if fmt == "png" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return width, height, {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}.get(data[25], "RGBA")
        if fmt == "bmp":
            size = struct.unpack("<I", data[14:18])[0]
            if size == 12:
                width, height = struct.unpack("<HH", data[18:22])
                return width, height, "RGB"
            width, height = struct.unpack("<ii", data[18:26])
            bits = struct.unpack("<H", data[28:30])[0]
            return abs(width), abs(height), "RGBA" if bits == 32 else "RGB"
        if fmt == "jpeg2000":
            at = data.find(b"ihdr", 0, 512)
            if at >= 0:
                height, width = struct.unpack(">II", data[at + 4:at + 12])
                return width, height, "RGBA"
            if data[:4] == b"\xff\x4f\xff\x51":
                x, y, x0, y0 = struct.unpack(">IIII", data[8:24])
                return x - x0, y - y0, "RGBA"
    except struct.error:
        return None
    return None


def pam_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, depth, maxval) of a PAM (P7) header, read by hand: Pillow has no reader."""
    end = data.find(b"ENDHDR", 0, 4096)
    if end < 0:
        return None
    values = {}
    for line in data[3:end].split(b"\n"):
        parts = line.split(b"#", 1)[0].split()
        if len(parts) == 2 and parts[0] in (b"WIDTH", b"HEIGHT", b"DEPTH", b"MAXVAL") and parts[1].isdigit():
            values[parts[0]] = int(parts[1])
    if len(values) != 4:
        return None
    return values[b"WIDTH"], values[b"HEIGHT"], values[b"DEPTH"], values[b"MAXVAL"]


_PAM_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def _frames(image, fmt: str) -> int:
    """Frames, pages, layers or icon sizes the file holds, read from the header where Pillow has it."""
    try:
        if fmt in ("ico", "cur", "icns"):
            return max(1, len(image.info.get("sizes") or ()))
        return max(1, int(getattr(image, "n_frames", 1) or 1))
    except Exception:  # a broken frame table: the first frame is still what we use
        return 1


def check_image(data: bytes, max_object_bytes: int, max_image_pixels: int) -> ImageHeader:
    """Read and check the header of `data`; raise MessageError("guard", reason) for anything we
    will not decode: empty, too large, refused or unknown format, unreadable header, too many pixels."""
    if len(data) == 0:
        raise MessageError("guard", "empty object (0 bytes)")
    if len(data) > max_object_bytes:
        raise MessageError("guard", f"object is {len(data)} bytes, limit {max_object_bytes}")
    refused = _refused(data)
    if refused:
        raise MessageError("guard", refused)
    fmt = sniff_format(data) or _identify(data)
    if fmt is None:
        raise MessageError("guard", _describe_unsupported(data))
    name = DISPLAY_NAME[fmt]
    if fmt == "webp":
        declared = webp_declared_size(data)
        if declared is None:
            raise MessageError("guard", "truncated or corrupt WebP header (no VP8/VP8L/VP8X chunk)")
        _limit_pixels(*declared, fmt, max_image_pixels)
    image = None
    if fmt == "pam":
        declared = pam_header(data)
        if declared is None or declared[2] not in _PAM_MODES or not 0 < declared[3] < 65536:
            raise MessageError("guard", "truncated or corrupt PAM header (WIDTH, HEIGHT, DEPTH 1-4, MAXVAL, ENDHDR)")
        width, height, depth, maxval = declared
        mode, has_alpha = _PAM_MODES[depth], depth in (2, 4)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. "Truncated File Read", corrupt EXIF: the reason says it
                image = Image.open(io.BytesIO(data), formats=list(FORMATS[fmt].pillow))
                width, height = image.size
                mode = image.mode
                has_alpha = "A" in image.getbands() or "transparency" in image.info
        except Exception as exc:  # Pillow raises many kinds for a broken header; all mean the same here
            if isinstance(exc, UnidentifiedImageError):
                detail = "Pillow cannot parse it"  # its own message names a memory address
            else:
                detail = " ".join(str(exc).split())[:200] or type(exc).__name__
            # Pillow is stricter than OpenCV about some BMP, PNG and JPEG 2000 headers (a BMP
            # bitfield layout, an unknown PNG compression byte): read their size by hand and let
            # OpenCV try, within the budgets. A PNG text chunk over Pillow's limit stays refused.
            by_hand = None if "MAX_TEXT_CHUNK" in detail else header_by_hand(data, fmt)
            if by_hand is None:
                raise MessageError("guard", f"truncated or corrupt {name} header ({detail})") from None
            image, (width, height, mode) = None, by_hand
            has_alpha = mode in ("RGBA", "LA")
        if image is not None and fmt == "jpeg" and image.format == "MPO":
            fmt, name = "mpo", DISPLAY_NAME["mpo"]
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
    if fmt == "pam":
        channels, sample_bytes = len(mode), 2 if maxval > 255 else 1
        return ImageHeader(fmt, width, height, mode, has_alpha, 1, channels, sample_bytes)
    channels, sample_bytes = _decoded_layout(data, image, fmt, mode, has_alpha)
    # Decoders that apply the file's own rotation themselves (HEIF's irot/imir, AVIF, JPEG XL)
    # report the displayed size: an EXIF orientation left in their metadata must not turn it again.
    orientation = 1 if fmt in ("heic", "avif", "jxl") or image is None else _orientation(image, fmt)
    return ImageHeader(fmt, width, height, mode, has_alpha, orientation, channels, sample_bytes,
                       _frames(image, fmt))


# Channels OpenCV returns for Pillow's mode with IMREAD_UNCHANGED (PNG, TIFF, WebP, BMP, GIF).
_MODE_CHANNELS = {"1": 1, "L": 1, "P": 3, "LA": 2, "La": 2, "PA": 4, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3,
                  "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 1, "F": 1, "I;16": 1, "I;16B": 1, "I;16L": 1}


def _decoded_layout(data: bytes, image, fmt: str, mode: str, has_alpha: bool) -> tuple[int, int]:
    """(channels, bytes per sample) of the decoded image, read from the header."""
    if fmt in ("jpeg", "mpo"):  # IMREAD_COLOR or IMREAD_GRAYSCALE: 8 bits, CMYK comes out as BGR
        return (1 if mode == "L" else 3), 1
    if fmt == "png":
        # Pillow reports a 16-bit RGB PNG as mode RGB: the bit depth is in IHDR itself.
        bit_depth, colour_type = data[24], data[25]
        channels = {0: 1, 2: 3, 3: 4 if has_alpha else 3, 4: 2, 6: 4}.get(colour_type, 4)
        return channels, 2 if bit_depth == 16 else 1
    if fmt == "tiff" and image is not None:
        try:
            bits = image.tag_v2.get(258, (8,))
            samples = int(image.tag_v2.get(277, 1))
            widest = max(bits) if isinstance(bits, (tuple, list)) else int(bits)
        except (TypeError, ValueError):
            return 4, 8  # unreadable tags: assume the widest layout, so the budget errs on the safe side
        return max(1, min(samples, 8)), max(1, -(-int(widest) // 8))
    if fmt == "pfm":
        return (3 if data[1:2] == b"F" else 1), 4
    if fmt == "avif":  # 10 and 12-bit AVIF decode to 16-bit samples; Pillow reports them as 8-bit modes
        return (4 if has_alpha else 3), 2
    if FORMATS[fmt].decoder == PILLOW:
        # Pillow holds 4 bytes a pixel for any multi-band mode (1 for L/P/1, 2 for I;16, 4 for I/F),
        # and the array handed to OpenCV is a second copy: both count.
        per_pixel = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
        return 2, per_pixel
    channels = _MODE_CHANNELS.get(mode, 4)
    sample_bytes = 2 if mode.startswith("I;16") else 4 if mode in ("I", "F") else 1
    return (4 if has_alpha and channels < 4 else channels), sample_bytes


def decoded_bytes(header: ImageHeader, scale: int = 1) -> int:
    """Bytes the decoder allocates for the pixels, decoding at 1/scale (JPEG's reduced decodes)."""
    return -(-header.width // scale) * -(-header.height // scale) * header.decoded_channels * header.bytes_per_sample
