"""The pure image-processing core of the consumer: bytes in, features and derived JPEGs out.

No network, no Kafka, no S3: `process_image(data)` is what the consumer loop calls for each
object, and what the tests and benchmarks call directly.

Every input passes the guard (consumer.imageguard) before any pixel is decoded; the process
must have called `imageguard.apply_decoder_limits` first (the guard refuses to run otherwise),
best before cv2 is loaded, so that OpenCV's own ceiling is the configured one. A JPEG is then
decoded straight at the smallest scale (1/1, 1/2, 1/4 or 1/8, done inside libjpeg) that still
covers every output; other formats decode at full size. The outputs are sized so that a camera's
JPEG need not be decoded whole: the grayscale preview is 640 px (GRAYSCALE_MAX_SIZE) and the
working image 320 px from a source of at least 640, so a 1280x960 photo decodes at 1/2 and a
4000x3000 one at 1/4. Measured on 1280x960 photo-like JPEGs, one thread: 8.0 ms per image with
a 1024 px preview and a 512 px working scale (full decode), 5.0 ms with these (a 1/2 decode).

Working scale. mean_brightness, sharpness and phash are computed on the grayscale image
area-averaged (INTER_AREA, one step) to WORKING_SIZE = 320 px on its longest side, from a source
of at least 640 px (the original when it is smaller; images under 320 px are used as they are);
edge_density on that working image area-halved to EDGE_SIZE = 160 px. The working image depends
on the image, not on how it was decoded: a 2560 px photo decoded at 1/2 and its 1280 px copy
decoded in full agree within a few percent, so values compare across images of any size.

No detector runs here: face detection (20-50 ms of CPU per photo with a Haar cascade, against
about 11 ms for all of the above) belongs to the enrichment stage (enricher/), which reads the
consumer's announcements; the core stream stays decode, cheap features, derived images, index.
"""
from __future__ import annotations

import hashlib
import io
import logging
import re
import warnings

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from consumer import imageguard
from consumer.descriptor import describe
from consumer.options import ProcessingOptions  # noqa: F401  (its home before; callers import it here)
from consumer.processed import ProcessedImage
from imgpipe.errors import InfrastructureError, MessageError

logger = logging.getLogger(__name__)

WORKING_SIZE = 320  # longest side of the image the statistics are computed on
EDGE_SIZE = 160  # longest side of the image edge density is computed on (half the working size)
THUMBNAIL_QUALITY = 85
GRAYSCALE_QUALITY = 80  # 10% cheaper to encode than 85, and it is a preview
CANNY_THRESHOLDS = (100, 200)

FEATURE_KEYS = ("format", "frames", "size_bytes", "width", "height", "channels", "bit_depth", "megapixels",
                "mean_brightness", "sharpness", "edge_density", "dominant_color", "phash", "sha256")

_JPEG_REDUCED = {
    # (grayscale, scale denominator) -> flag. IMREAD_COLOR/GRAYSCALE and their REDUCED_* forms
    # apply the EXIF orientation; IMREAD_UNCHANGED does not (checked in the tests).
    (False, 1): cv2.IMREAD_COLOR, (False, 2): cv2.IMREAD_REDUCED_COLOR_2,
    (False, 4): cv2.IMREAD_REDUCED_COLOR_4, (False, 8): cv2.IMREAD_REDUCED_COLOR_8,
    (True, 1): cv2.IMREAD_GRAYSCALE, (True, 2): cv2.IMREAD_REDUCED_GRAYSCALE_2,
    (True, 4): cv2.IMREAD_REDUCED_GRAYSCALE_4, (True, 8): cv2.IMREAD_REDUCED_GRAYSCALE_8,
}
# With IMREAD_UNCHANGED (needed to keep alpha and 16-bit samples) OpenCV leaves the EXIF
# orientation to us for PNG and WebP, but its TIFF reader applies it itself.
_ORIENTED_BY_US = {"png", "webp"}


def process_image(data: bytes, options: ProcessingOptions = ProcessingOptions()) -> ProcessedImage:
    """Features, a thumbnail and a grayscale version of one image object.

    Raises MessageError(stage, reason) for a bad input, stage "guard" (rejected from its size
    or header, before decoding), "budget" (decoding it would take more than max_decode_bytes, or
    memory ran out), "decode" (OpenCV could not decode it) or "process". Never
    raises anything else because of the input bytes.
    """
    imageguard.opencv_max_image_pixels()  # a process that skipped apply_decoder_limits() stops here
    try:
        return _process(bytes(data), options)
    except (MessageError, InfrastructureError):
        raise
    except MemoryError:
        raise MessageError("budget", "ran out of memory while processing the image") from None
    except Exception as exc:  # a bug or a codec surprise: dead-letter this image, keep the consumer up
        if _out_of_memory(exc):
            raise MessageError("budget", f"ran out of memory while processing the image ({_last_line(exc)})") \
                from None
        logger.warning("unexpected %s while processing an image", type(exc).__name__, exc_info=True)
        raise MessageError("process", f"{type(exc).__name__}: {_last_line(exc)}") from None


def _process(data: bytes, options: ProcessingOptions) -> ProcessedImage:
    header = imageguard.check_image(data, options.max_object_bytes, options.max_image_pixels)
    longest = max(header.width, header.height)
    thumb_long = min(options.thumbnail_size, longest)
    gray_long = longest if options.grayscale_max_size == 0 else min(options.grayscale_max_size, longest)
    work_long = min(WORKING_SIZE, longest)
    # The working image is one area-average from at least twice its size: a detour through an
    # intermediate just above it (a 1/4 JPEG decode of a 1280 px photo, 320 px) would blur it and
    # lower the sharpness by a third, making values depend on the decode path.
    work_source_long = min(2 * WORKING_SIZE, longest)

    decoded, width, height = _decode(data, header, max(thumb_long, gray_long, work_source_long),
                                     options.max_decode_bytes)
    colour, channels, bit_depth = _normalise(decoded, header)
    gray_full = colour if colour.ndim == 2 else cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)

    grayscale = _resize(gray_full, fit(width, height, gray_long))
    work_source = grayscale if gray_long >= work_source_long else gray_full
    work = _area_resize(work_source, fit(width, height, work_long))
    thumbnail = _resize(colour, fit(width, height, thumb_long))

    features = {
        "format": header.format,
        "frames": header.frames,
        "size_bytes": len(data),
        "width": width,
        "height": height,
        "channels": channels,
        "bit_depth": bit_depth,
        "megapixels": round(width * height / 1e6, 3),
        **working_scale_features(work),
        "dominant_color": dominant_color(thumbnail),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return ProcessedImage({key: features[key] for key in FEATURE_KEYS},
                          thumbnail_jpeg=_encode_jpeg(thumbnail, THUMBNAIL_QUALITY),
                          grayscale_jpeg=_encode_jpeg(grayscale, GRAYSCALE_QUALITY),
                          descriptor=tuple(describe(work, thumbnail)))


# --- decoding -----------------------------------------------------------------------------------

def _decode(data: bytes, header: imageguard.ImageHeader, needed_long: int, max_decode_bytes: int):
    """Decode in display orientation, as small as `needed_long` allows; return (image, width, height)
    with width/height the full display size (from the header, axes as actually decoded).
    Refused before decoding when the decoded pixels alone would exceed `max_decode_bytes`.

    OpenCV decodes the formats it reads (fast, JPEG at a reduced scale); Pillow the rest, and
    any file of a format both read that OpenCV gives up on (Pillow is more lenient)."""
    name = imageguard.DISPLAY_NAME[header.format]
    spec = imageguard.FORMATS[header.format]
    scale = 1
    if header.format in ("jpeg", "mpo"):
        stored_long = max(header.width, header.height)
        scale = next(s for s in (8, 4, 2, 1) if -(-stored_long // s) >= needed_long)
        flag = _JPEG_REDUCED[(header.mode == "L", scale)]
    else:
        flag = cv2.IMREAD_UNCHANGED
    needed = imageguard.decoded_bytes(header, scale)
    if needed > max_decode_bytes:
        raise MessageError("budget", f"decoding needs {needed / 2**20:,.0f} MiB ({header.width}x{header.height}"
                           f"{'' if scale == 1 else f' at 1/{scale}'} x {header.decoded_channels} channel(s) x "
                           f"{header.bytes_per_sample} byte(s)), above MAX_DECODE_BYTES = "
                           f"{max_decode_bytes / 2**20:,.0f} MiB")
    image = None
    if spec.decoder == imageguard.OPENCV:
        opencv_error = "OpenCV could not decode it"
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        except cv2.error as exc:
            if _out_of_memory(exc):
                raise
            opencv_error = _last_line(exc)
        if image is not None and image.size == 0:
            image = None
        if image is None and (not spec.pillow or header.format in ("jpeg", "mpo")):
            raise MessageError("decode", f"truncated or corrupt {name} ({opencv_error})")
        if image is not None and header.format in _ORIENTED_BY_US:
            image = apply_orientation(image, header.orientation)
    if image is None:  # Pillow's format, or OpenCV gave up on one Pillow reads too
        scale = 1
        image = apply_orientation(_pillow_decode(data, header, name), header.orientation)
    # The decoder, not our reading of the EXIF block, decides whether the axes were swapped.
    stored_rows, stored_cols = -(-header.height // scale), -(-header.width // scale)
    swapped = image.shape[:2] == (stored_cols, stored_rows) and stored_rows != stored_cols
    width, height = (header.height, header.width) if swapped else (header.width, header.height)
    return image, width, height


# Pillow modes turned into a layout OpenCV's functions take (8 or 16-bit gray, BGR, BGRA; LA is
# gray + alpha); anything not listed goes through RGBA.
_PILLOW_CONVERT = {"1": "L", "P": "RGB", "PA": "RGBA", "La": "LA", "RGBa": "RGBA", "CMYK": "RGB", "YCbCr": "RGB",
                   "LAB": "RGB", "HSV": "RGB", "RGBX": "RGB"}
_PILLOW_KEEP = {"L", "LA", "RGB", "RGBA", "I", "F", "I;16", "I;16B", "I;16L"}


def _pillow_decode(data: bytes, header: imageguard.ImageHeader, name: str) -> np.ndarray:
    """The first frame (PSD: the composite; ICO/ICNS: the largest image) decoded by Pillow, as an
    array in OpenCV's channel order. Only the plugins of the header's format may run."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=list(imageguard.FORMATS[header.format].pillow))
            image.load()
            mode = image.mode
            if mode == "P" and header.has_alpha:
                image = image.convert("RGBA")
            elif mode not in _PILLOW_KEEP:
                image = image.convert(_PILLOW_CONVERT.get(mode, "RGBA"))
            array = np.asarray(image)
    except MemoryError:
        raise
    except Exception as exc:  # Pillow's decoders raise OSError, ValueError, SyntaxError, struct.error, ...
        if isinstance(exc, UnidentifiedImageError):
            detail = "Pillow cannot parse it"
        else:
            detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise MessageError("decode", f"truncated or corrupt {name} ({detail})") from None
    if array.dtype.byteorder == ">" or array.dtype == np.int32:
        array = _widen_integers(array)
    if array.ndim == 3 and array.shape[2] == 3:
        array = array[:, :, ::-1]
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, [2, 1, 0, 3]]
    if array.size == 0:
        raise MessageError("decode", f"truncated or corrupt {name} (no pixels)")
    return np.ascontiguousarray(array)


def _widen_integers(array: np.ndarray) -> np.ndarray:
    """Pillow's 32-bit integer and big-endian 16-bit samples as native uint16 (most hold 16 bits)."""
    if array.dtype.kind == "u" or (array.size and int(array.min()) >= 0 and int(array.max()) <= 65535):
        return array.astype(np.uint16)
    return _to_uint8(array.astype(np.int32))


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a stored image into display orientation (EXIF orientation 1-8)."""
    if orientation == 2:
        return cv2.flip(image, 1)
    if orientation == 3:
        return cv2.rotate(image, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(image, 0)
    if orientation == 5:
        return cv2.transpose(image)
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.transpose(image), -1)
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return image


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return cv2.convertScaleAbs(image, alpha=255.0 / 65535.0)
    if np.issubdtype(image.dtype, np.floating):
        # Float TIFFs are conventionally 0-1; anything larger is taken as 0-255.
        finite = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(finite.max()) if finite.size else 0.0
        return np.clip(finite * (255.0 if peak <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    info = np.iinfo(image.dtype)
    shifted = image.astype(np.float64) - info.min
    return np.clip(shifted * (255.0 / (info.max - info.min)), 0, 255).astype(np.uint8)


def _normalise(image: np.ndarray, header: imageguard.ImageHeader):
    """Any layout OpenCV returns -> (gray uint8 HxW or BGR uint8 HxWx3, channels, bit_depth).

    Alpha is composited on white here, once, so every later step sees an opaque image.
    """
    bit_depth = int(image.dtype.itemsize * 8)
    image = _to_uint8(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return image, 1, bit_depth
    bands = image.shape[2]
    if bands == 2:  # gray + alpha
        gray, alpha = image[:, :, 0], image[:, :, 1]
        return _over_white(gray, alpha), 4 if header.has_alpha else 1, bit_depth
    if bands >= 4:
        composited = _over_white(image[:, :, :3], image[:, :, 3])
        return composited, 4 if header.has_alpha else 3, bit_depth
    return image, 3, bit_depth


def _over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """colour*a + 255*(1-a) in uint8, as premultiplied colour + (255 - alpha): no float copies."""
    if colour.ndim == 3:
        alpha = cv2.merge([alpha] * colour.shape[2])
    premultiplied = cv2.multiply(colour, alpha, scale=1.0 / 255.0)
    return cv2.add(premultiplied, cv2.bitwise_not(alpha))


# --- sizes ----------------------------------------------------------------------------------------

def fit(width: int, height: int, longest: int) -> tuple[int, int]:
    """(w, h) with the longer side = `longest` and the aspect ratio kept; never 0 on either side."""
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (w, h) without aliasing, fast: halve with 2x2 box averages while the image is
    at least twice the target, then one bilinear step of less than 2x.

    OpenCV's INTER_AREA is fast for an exact 2x but 3-5x slower for a factor like 2.5 or 5,
    which alone would cost as much as the rest of the processing of a photo.
    """
    target_w, target_h = size
    rows, cols = image.shape[:2]
    while cols >= 2 * target_w and rows >= 2 * target_h:
        cols, rows = cols // 2, rows // 2
        image = cv2.resize(image, (cols, rows), interpolation=cv2.INTER_AREA)
    if (cols, rows) == size:
        return image
    # One side can still be 2x+ too large on extreme aspect ratios (8000x10 -> 256x1).
    factor = max(cols / target_w, rows / target_h)
    interpolation = cv2.INTER_AREA if factor >= 2 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)


def _area_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One INTER_AREA step: the box filter that defines the working scale."""
    if image.shape[1::-1] == size:
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


# --- features ------------------------------------------------------------------------------------

def working_scale_features(work: np.ndarray) -> dict:
    """Brightness, sharpness and pHash of the working-scale grayscale image, and edge density of
    its area-halved copy (EDGE_SIZE): Canny's edge tracing cost 0.4-1.5 ms on a 512 px photo,
    as much as the rest of the statistics together, and 5-8x less at 256 px."""
    laplacian = cv2.Laplacian(work, cv2.CV_16S)  # ksize 1: fits int16, exact, fast
    _, std = cv2.meanStdDev(laplacian)
    edge_long = min(EDGE_SIZE, max(work.shape[:2]))
    edges = cv2.Canny(_area_resize(work, fit(work.shape[1], work.shape[0], edge_long)), *CANNY_THRESHOLDS)
    return {
        "mean_brightness": round(float(cv2.mean(work)[0]), 2),
        "sharpness": round(float(std[0, 0]) ** 2, 2),
        "edge_density": round(cv2.countNonZero(edges) / edges.size, 4),
        "phash": phash(work),
    }


def phash(gray: np.ndarray) -> str:
    """64-bit DCT perceptual hash as 16 hex digits: the signs of the 8x8 lowest frequencies of a
    32x32 reduction against their median (the classic pHash; robust to re-encoding and scaling)."""
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].ravel()
    return np.packbits(low > np.median(low)).tobytes().hex()


def hamming(hash_a: str, hash_b: str) -> int:
    """Number of differing bits between two hex pHashes."""
    return bin(int(hash_a, 16) ^ int(hash_b, 16)).count("1")


def dominant_color(image: np.ndarray) -> str:
    """Most common colour as #rrggbb: the fullest cell of an 8x8x8 colour histogram over a small
    copy, reported as the mean of the pixels in that cell (cheap, deterministic, no k-means)."""
    small = _resize(image, fit(image.shape[1], image.shape[0], min(64, max(image.shape[:2]))))
    pixels = small.reshape(-1, 3) if small.ndim == 3 else np.repeat(small.reshape(-1, 1), 3, axis=1)
    cells = pixels >> 5
    index = (cells[:, 0].astype(np.int32) << 6) | (cells[:, 1].astype(np.int32) << 3) | cells[:, 2]
    best = int(np.bincount(index, minlength=512).argmax())
    blue, green, red = (int(round(v)) for v in pixels[index == best].mean(axis=0))
    return f"#{red:02x}{green:02x}{blue:02x}"


def _encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise MessageError("process", f"OpenCV could not encode a {image.shape[1]}x{image.shape[0]} JPEG")
    return encoded.tobytes()


def _out_of_memory(exc: BaseException) -> bool:
    """OpenCV reports a failed allocation (the worker's memory cap) as cv2.error, not MemoryError."""
    text = str(exc).lower()
    return isinstance(exc, cv2.error) and ("insufficient memory" in text or "failed to allocate" in text
                                           or "out of memory" in text or "bad_alloc" in text)


def _last_line(exc: BaseException) -> str:
    # cv2.error spreads over several lines; the last one says what went wrong, after a prefix
    # naming OpenCV's source file that means nothing to whoever reads the dead-letter reason.
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return re.sub(r"^OpenCV\([^)]*\) \S+: error: ", "", text.splitlines()[-1].strip())[:300]
