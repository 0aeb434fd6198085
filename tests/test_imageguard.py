"""The guard: what an object is and whether it may be decoded, read from its header alone."""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap

import pytest
from PIL import Image, ImageFile

from consumer import imageguard
from consumer.imageguard import check_image, sniff_format, webp_declared_size
from fixtures import images as samples
from imgpipe.errors import MessageError
from imgpipe.settings import REPO_ROOT

LIMIT_BYTES = 50 * 1024 * 1024
LIMIT_PIXELS = 100_000_000
AWKWARD = samples.awkward_samples()


def guard(data: bytes, max_object_bytes: int = LIMIT_BYTES, max_image_pixels: int = LIMIT_PIXELS):
    return check_image(data, max_object_bytes, max_image_pixels)


@pytest.fixture
def pixels_never_loaded(monkeypatch):
    """Fail the test if Pillow decodes any pixel data while the guard runs."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("the guard decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.parametrize("name", sorted(AWKWARD))
def test_every_awkward_sample_gets_its_expected_guard_outcome(name, pixels_never_loaded):
    data, expected = AWKWARD[name]
    if not expected["ok"] and expected["stage"] == "guard":
        with pytest.raises(MessageError) as caught:
            guard(data)
        assert caught.value.stage == "guard"
        assert expected["reason_contains"] in caught.value.reason
        return
    header = guard(data)  # decode failures and good files both pass the header check
    assert header.format in imageguard.SUPPORTED_FORMATS
    if expected["ok"]:
        assert header.format == expected["format"]
        assert header.display_size == (expected["width"], expected["height"])


def test_reasons_are_precise():
    with pytest.raises(MessageError, match=r"^guard: empty object \(0 bytes\)$"):
        guard(b"")
    with pytest.raises(MessageError, match=r"^guard: not an image \(starts with b'hello wo'\)$"):
        guard(b"hello world")
    with pytest.raises(MessageError) as caught:
        guard(AWKWARD["bomb-20000x20000.png"][0])
    assert str(caught.value) == ("guard: 20000x20000 = 400.0 megapixels declared in the PNG header, "
                                 "limit 100.0")


def test_object_size_limit_is_checked_first():
    photo = AWKWARD["photo.jpg"][0]
    with pytest.raises(MessageError) as caught:
        guard(photo, max_object_bytes=len(photo) - 1)
    assert caught.value.reason == f"object is {len(photo)} bytes, limit {len(photo) - 1}"
    assert guard(photo, max_object_bytes=len(photo)).format == "jpeg"


def test_pixel_limit_is_the_configured_one_not_pillows():
    png = samples.png_declaring(300, 200)
    with pytest.raises(MessageError, match="300x200 = 0.1 megapixels declared in the PNG header, limit 0.1"):
        guard(png, max_image_pixels=59_999)
    assert guard(png, max_image_pixels=60_000).pixels == 60_000
    # 144 MP is above Pillow's own bomb limit (2 x 89 MP raises); with ours at 200 MP it passes
    # the header check unless this process's OpenCV ceiling is lower, which is then named.
    huge = AWKWARD["huge-12000x12000-one-colour.png"][0]
    if imageguard.opencv_max_image_pixels() >= 144_000_000:
        assert guard(huge, max_image_pixels=200_000_000).pixels == 144_000_000
    else:
        with pytest.raises(MessageError, match="OPENCV_IO_MAX_IMAGE_PIXELS"):
            guard(huge, max_image_pixels=200_000_000)


def test_a_side_longer_than_opencv_accepts_is_rejected_by_the_guard():
    with pytest.raises(MessageError, match="2000000x1 declared in the PNG header: a side above OpenCV"):
        guard(samples.png_declaring(2_000_000, 1))


def test_format_comes_from_the_bytes_not_the_name():
    assert sniff_format(AWKWARD["jpeg-named-as.png"][0]) == "jpeg"
    assert sniff_format(AWKWARD["text-with-image-extension.png"][0]) is None
    expected = {"photo.jpg": "jpeg", "rgba.png": "png", "photo.webp": "webp", "photo.tiff": "tiff",
                "photo.bmp": "bmp", "animated.gif": "gif"}
    for name, fmt in expected.items():
        assert sniff_format(AWKWARD[name][0]) == fmt


@pytest.mark.parametrize("data, reason", [
    (b"%PDF-1.7\n%\xe2\xe3", "refused PDF document: Pillow renders PDF only through Ghostscript, an external interpreter"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n", "refused PostScript/EPS: Pillow reads it by running Ghostscript"),
    (b"\xc5\xd0\xd3\xc6" + bytes(28), "refused EPS (DOS binary): Pillow reads it by running Ghostscript"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "refused SVG: SVG is a program for a renderer"),
    (b"<?xml version='1.0'?>\n<svg xmlns='http://www.w3.org/2000/svg'/>", "refused SVG"),
    # Formats we read, cut after their signature: the reason names the format.
    (b"\x00\x00\x00\x1cftypheic\x00\x00", "truncated or corrupt HEIC/HEIF header"),
    (b"\x00\x00\x00\x1cftypavif\x00\x00", "truncated or corrupt AVIF header"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n\x00", "truncated or corrupt JPEG 2000 header"),
    (b"8BPS\x00\x01", "truncated or corrupt Photoshop PSD header"),
    (b"qoif\x00", "truncated or corrupt QOI header"),
    (b"P7\nWIDTH 4\n", "truncated or corrupt PAM header"),
])
def test_refused_and_broken_formats_are_named_in_the_reason(data, reason):
    with pytest.raises(MessageError) as caught:
        guard(data)
    assert caught.value.stage == "guard"
    assert caught.value.reason.startswith(reason), caught.value.reason


def test_ghostscript_can_never_run():
    # Unregistered: no Image.open, ours or a library's, can reach EpsImagePlugin.
    assert "EPS" not in Image.OPEN and "EPS" not in Image.ID
    assert "EPS" not in {p for f in imageguard.FORMATS.values() for p in f.pillow}


def test_webp_canvas_is_checked_before_pillow_allocates_it(monkeypatch):
    def vp8x(width: int, height: int) -> bytes:
        chunk = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00"
        chunk += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
        return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk

    bomb = vp8x(16000, 16000)
    assert webp_declared_size(bomb) == (16000, 16000)
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("Pillow saw an over-limit WebP"))
    with pytest.raises(MessageError, match="16000x16000 = 256.0 megapixels declared in the WebP header"):
        guard(bomb)


def test_webp_size_is_read_from_each_bitstream_kind():
    image = samples.photo_like_pil(1, 33, 17)
    lossy = samples.pil_bytes(image, "WEBP", quality=80)
    lossless = samples.pil_bytes(image, "WEBP", lossless=True)
    with_exif = samples.pil_bytes(image, "WEBP", exif=samples.exif_with_orientation(3))  # VP8X
    assert [webp_declared_size(d) for d in (lossy, lossless, with_exif)] == [(33, 17)] * 3
    assert webp_declared_size(b"RIFF\x00\x00\x00\x00WEBPVP8 ") is None


def test_exif_orientation_is_read_and_swaps_the_display_size():
    header = guard(AWKWARD["exif-rotated-6.jpg"][0])
    assert (header.width, header.height, header.orientation) == (600, 400, 6)
    assert header.display_size == (400, 600)
    for fmt in ("PNG", "WEBP", "TIFF"):
        image = samples.oriented_marker_image(60, 40)
        data = samples.pil_bytes(image, fmt, exif=samples.exif_with_orientation(8))
        assert guard(data).orientation == 8, fmt


def test_a_malformed_exif_block_is_ignored_not_fatal():
    image = samples.oriented_marker_image(60, 40)
    data = samples.pil_bytes(image, "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    header = guard(data)
    assert (header.orientation, header.display_size) == (1, (60, 40))


def test_alpha_is_read_from_the_header():
    assert guard(AWKWARD["rgba.png"][0]).has_alpha
    assert guard(AWKWARD["rgba-lossless.webp"][0]).has_alpha
    assert not guard(AWKWARD["photo.jpg"][0]).has_alpha
    buffer = io.BytesIO()
    Image.new("P", (4, 4)).save(buffer, "PNG", transparency=0)
    assert guard(buffer.getvalue()).has_alpha


def test_bombs_are_rejected_in_bounded_memory_and_opencv_refuses_them_too():
    """In a fresh interpreter (so ru_maxrss means something): peak memory barely moves while the
    bombs are rejected, and OpenCV's own ceiling, set before cv2 was imported, refuses them."""
    script = textwrap.dedent("""
        import json, os, resource
        from consumer.imageguard import apply_decoder_limits
        apply_decoder_limits(100_000_000)
        import consumer.processing as processing
        import cv2, numpy as np
        from fixtures import images as samples
        from imgpipe.errors import MessageError

        bombs = {name: data for name, (data, expect) in samples.awkward_samples().items()
                 if not expect["ok"] and "megapixels" in expect["reason_contains"]}
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        stages = []
        for _ in range(3):
            for data in bombs.values():
                try:
                    processing.process_image(data)
                except MessageError as exc:
                    stages.append(exc.stage)
        grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        try:
            refused = cv2.imdecode(np.frombuffer(bombs["huge-12000x12000-one-colour.png"], np.uint8),
                                   cv2.IMREAD_UNCHANGED) is None
        except cv2.error:
            refused = True
        print(json.dumps({"stages": stages, "grown_kb": grown_kb, "refused": refused,
                          "cv_limit": os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"]}))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENCV_IO_MAX_IMAGE_PIXELS", "MAX_IMAGE_PIXELS")}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["stages"] == ["guard"] * 6
    assert result["grown_kb"] < 64 * 1024  # decoding the 144 MP one alone would take 144 MB
    assert result["cv_limit"] == "100000000"
    assert result["refused"]
