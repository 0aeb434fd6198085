"""Deterministic sample images: photo-like JPEGs and a zoo of awkward and broken files.

Tests, the demo and the benchmarks all draw from here, so "the image that broke the
consumer" is reproducible from a name and a seed. Nothing is read from disk or network.
"""
from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np

PHOTO_WIDTH = 1280
PHOTO_HEIGHT = 960


def photo_like_pixels(seed: int, width: int = PHOTO_WIDTH, height: int = PHOTO_HEIGHT) -> np.ndarray:
    """A BGR uint8 image that compresses like a photo: smooth light, soft shapes, sensor noise."""
    import cv2

    rng = np.random.default_rng(seed)
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    top, bottom, side = (rng.uniform(20, 235, 3).astype(np.float32) for _ in range(3))
    image = top * (1 - ys) + bottom * ys + (side - 128) * 0.4 * xs
    scale = max(1, min(width, height))
    for _ in range(int(rng.integers(6, 14))):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        size = int(rng.integers(scale // 20 + 1, scale // 4 + 2))
        if rng.random() < 0.5:
            cv2.circle(image, centre, size, colour, -1, cv2.LINE_AA)
        else:
            axes = (size, int(rng.integers(1, size + 1)))
            cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    for _ in range(int(rng.integers(2, 5))):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(image, p1, p2, colour, max(1, scale // 200), cv2.LINE_AA)
    # Out-of-focus shapes, then grain: real photos are neither flat nor pure noise.
    image = cv2.GaussianBlur(image, (0, 0), 1.5)
    image += rng.standard_normal(image.shape, dtype=np.float32) * 5.0
    return np.clip(image, 0, 255).astype(np.uint8)


def photo_like_jpeg(seed: int, width: int = PHOTO_WIDTH, height: int = PHOTO_HEIGHT,
                    quality: int = 90) -> bytes:
    """A photo-like JPEG (about 150-400 KB at 1280x960, quality 90), same bytes for the same seed."""
    import cv2

    ok, encoded = cv2.imencode(".jpg", photo_like_pixels(seed, width, height),
                               [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


def pil_bytes(image, fmt: str, **params) -> bytes:
    """A Pillow image saved to bytes in `fmt` (JPEG, PNG, WEBP, TIFF, BMP, GIF) with `params`."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def photo_like_pil(seed: int, width: int, height: int):
    """photo_like_pixels as an RGB Pillow image, for formats OpenCV cannot write the same way."""
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(photo_like_pixels(seed, width, height)[:, :, ::-1]))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int, idat: bytes = b"") -> bytes:
    """A tiny PNG whose header declares width x height RGB pixels (a decompression bomb shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", idat or zlib.compress(b"\0" * 4096, 9)) + _png_chunk(b"IEND", b""))


def single_colour_bilevel_png(width: int, height: int) -> bytes:
    """A real, valid 1-bit PNG of one colour: width*height pixels in a few KB of deflate."""
    row = b"\0" + b"\0" * ((width + 7) // 8)
    packer = zlib.compressobj(9)
    rows_per_chunk = max(1, (1 << 20) // len(row))
    body = []
    for start in range(0, height, rows_per_chunk):
        body.append(packer.compress(row * min(rows_per_chunk, height - start)))
    body.append(packer.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(body))
            + _png_chunk(b"IEND", b""))


def exif_with_orientation(orientation: int) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def oriented_marker_image(width: int = 600, height: int = 400):
    """RGB image, mid-grey, with a pure red block in the stored top-left corner.

    After EXIF orientation 6 (rotate 90 degrees clockwise for display) the block is top-right.
    """
    from PIL import Image

    pixels = np.full((height, width, 3), 128, np.uint8)
    block = max(1, min(width, height) // 6)
    pixels[:block, :block] = (255, 0, 0)
    return Image.fromarray(pixels)


def _animated_gif() -> bytes:
    from PIL import Image

    frames = []
    for index, colour in enumerate([(220, 30, 30), (30, 200, 30), (30, 30, 220)]):
        frame = Image.new("RGB", (120, 80), colour)
        frame.paste((255, 255, 255), (index * 30, 10, index * 30 + 30, 40))
        frames.append(frame.convert("P", palette=Image.Palette.ADAPTIVE))
    return pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


@functools.lru_cache(maxsize=1)
def _build_awkward() -> tuple[tuple[str, bytes, tuple], ...]:
    from PIL import Image

    ok = {"ok": True}
    photo_small = photo_like_jpeg(7, 320, 240, 85)
    png_small = pil_bytes(photo_like_pil(8, 300, 200), "PNG")
    rgba = photo_like_pil(9, 256, 192).convert("RGBA")
    alpha = np.zeros((192, 256), np.uint8)
    alpha[:, 128:] = 255  # left half fully transparent: composited on white
    rgba.putalpha(Image.fromarray(alpha))
    gray16 = Image.fromarray((np.linspace(0, 65535, 200 * 150).reshape(150, 200)).astype(np.uint16))
    samples = {
        # --- must be rejected, with a reason that says why ---
        "empty.jpg": (b"", {"ok": False, "stage": "guard", "reason_contains": "empty object"}),
        "text-with-image-extension.png": (b"hello world, I am not a picture\n",
                                          {"ok": False, "stage": "guard", "reason_contains": "not an image"}),
        "html-error-page.jpg": (b"<html><body>403 Forbidden</body></html>",
                                {"ok": False, "stage": "guard", "reason_contains": "not an image"}),
        "truncated.jpg": (photo_small[: len(photo_small) // 2],
                          {"ok": False, "stage": "decode", "reason_contains": "truncated or corrupt JPEG"}),
        "truncated.png": (png_small[: len(png_small) // 2],
                          {"ok": False, "stage": "decode", "reason_contains": "truncated or corrupt PNG"}),
        "jpeg-signature-only.jpg": (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
                                    {"ok": False, "stage": "guard", "reason_contains": "JPEG header"}),
        "png-signature-only.png": (b"\x89PNG\r\n\x1a\n",
                                   {"ok": False, "stage": "guard", "reason_contains": "PNG header"}),
        "bomb-20000x20000.png": (png_declaring(20000, 20000),
                                 {"ok": False, "stage": "guard", "reason_contains": "400.0 megapixels"}),
        "huge-12000x12000-one-colour.png": (single_colour_bilevel_png(12000, 12000),
                                            {"ok": False, "stage": "guard",
                                             "reason_contains": "144.0 megapixels"}),
        # --- must be processed, with these facts ---
        "photo.jpg": (photo_small, {**ok, "format": "jpeg", "width": 320, "height": 240, "channels": 3}),
        "jpeg-named-as.png": (photo_small, {**ok, "format": "jpeg", "width": 320, "height": 240}),
        "grayscale.jpg": (pil_bytes(photo_like_pil(10, 240, 180).convert("L"), "JPEG", quality=85),
                          {**ok, "format": "jpeg", "width": 240, "height": 180, "channels": 1,
                           "bit_depth": 8}),
        "cmyk.jpg": (pil_bytes(Image.new("RGB", (160, 120), (200, 30, 30)).convert("CMYK"), "JPEG",
                                quality=90),
                     {**ok, "format": "jpeg", "width": 160, "height": 120, "channels": 3,
                      "dominant_near": "#c81e1e"}),
        "exif-rotated-6.jpg": (pil_bytes(oriented_marker_image(600, 400), "JPEG", quality=90,
                                          exif=exif_with_orientation(6)),
                               {**ok, "format": "jpeg", "width": 400, "height": 600}),
        "progressive.jpg": (pil_bytes(photo_like_pil(11, 400, 300), "JPEG", quality=85, progressive=True),
                            {**ok, "format": "jpeg", "width": 400, "height": 300}),
        "1x1.png": (pil_bytes(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"),
                    {**ok, "format": "png", "width": 1, "height": 1, "dominant_near": "#0ac81e"}),
        "8000x10.jpg": (photo_like_jpeg(12, 8000, 10, 85),
                        {**ok, "format": "jpeg", "width": 8000, "height": 10}),
        "10x8000.png": (pil_bytes(photo_like_pil(13, 10, 8000), "PNG"),
                        {**ok, "format": "png", "width": 10, "height": 8000}),
        "rgba.png": (pil_bytes(rgba, "PNG"),
                     {**ok, "format": "png", "width": 256, "height": 192, "channels": 4}),
        "palette.png": (pil_bytes(photo_like_pil(14, 200, 150).convert("P", palette=Image.Palette.ADAPTIVE,
                                                                      colors=16), "PNG"),
                        {**ok, "format": "png", "width": 200, "height": 150, "channels": 3}),
        "16bit-gray.png": (pil_bytes(gray16, "PNG"),
                           {**ok, "format": "png", "width": 200, "height": 150, "channels": 1, "bit_depth": 16}),
        "16bit-rgb.png": (_rgb16_png(), {**ok, "format": "png", "width": 64, "height": 48, "channels": 3,
                                         "bit_depth": 16}),
        "animated.gif": (_animated_gif(), {**ok, "format": "gif", "width": 120, "height": 80,
                                           "dominant_near": "#dc1e1e"}),
        "photo.webp": (pil_bytes(photo_like_pil(15, 320, 240), "WEBP", quality=80),
                       {**ok, "format": "webp", "width": 320, "height": 240, "channels": 3}),
        "rgba-lossless.webp": (pil_bytes(rgba, "WEBP", lossless=True),
                               {**ok, "format": "webp", "width": 256, "height": 192, "channels": 4}),
        "photo.tiff": (pil_bytes(photo_like_pil(16, 320, 240), "TIFF", compression="tiff_deflate"),
                       {**ok, "format": "tiff", "width": 320, "height": 240, "channels": 3}),
        "photo.bmp": (pil_bytes(photo_like_pil(17, 321, 241), "BMP"),
                      {**ok, "format": "bmp", "width": 321, "height": 241, "channels": 3}),
    }
    return tuple((name, data, tuple(expect.items())) for name, (data, expect) in samples.items())


def _rgb16_png() -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one, so the chunks are built here)."""
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16)
    pixels = np.zeros((48, 64, 3), np.uint16)
    pixels[:, :, 0] = ramp[None, :]
    pixels[:, :, 1] = 40000
    pixels[:, :, 2] = ramp[::-1][None, :]
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    ihdr = struct.pack(">IIBBBBB", 64, 48, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw, 9))
            + _png_chunk(b"IEND", b""))


def awkward_samples() -> dict[str, tuple[bytes, dict]]:
    """name -> (bytes, expectation). Names are usable as file names.

    An expectation is {"ok": True, "format": ..., "width": ..., "height": ..., [channels, bit_depth,
    dominant_near]} for a file that must be processed, or {"ok": False, "stage": ...,
    "reason_contains": ...} for one that must be rejected with that stage and reason.
    Built once per process (the 12000x12000 PNG takes a moment to deflate).
    """
    return {name: (data, dict(expect)) for name, data, expect in _build_awkward()}
