"""process_image: every awkward file gives exactly its expected outcome, outputs have the right
shape, features mean the same thing at every size, and no input bytes escape as anything but
MessageError."""
from __future__ import annotations

import hashlib
import io
import json
import random
import re
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from consumer import processing
from consumer.processing import (FEATURE_KEYS, ProcessedImage, ProcessingOptions, fit, hamming,
                                 process_image)
from fixtures import images as samples
from imgpipe.document import DESCRIPTOR_DIMENSIONS, FIELDS
from imgpipe.errors import MessageError
from imgpipe.settings import REPO_ROOT, Settings

AWKWARD = samples.awkward_samples()
SPEC_KEYS = ["format", "frames", "size_bytes", "width", "height", "channels", "bit_depth", "megapixels",
             "mean_brightness", "sharpness", "edge_density", "dominant_color", "phash", "sha256"]


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "output is not a decodable JPEG"
    assert jpeg[:3] == b"\xff\xd8\xff"
    return image


def rgb_of(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])


def encode_jpeg(bgr: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


@pytest.mark.parametrize("name", sorted(AWKWARD))
def test_every_awkward_sample_gives_exactly_its_expected_outcome(name):
    data, expected = AWKWARD[name]
    if not expected["ok"]:
        with pytest.raises(MessageError) as caught:
            process_image(data)
        assert caught.value.stage == expected["stage"]
        assert expected["reason_contains"] in caught.value.reason
        return
    result = process_image(data)
    features = result.features
    for key in ("format", "width", "height", "channels", "bit_depth"):
        if key in expected:
            assert features[key] == expected[key], key
    if "dominant_near" in expected:
        assert np.abs(rgb_of(features["dominant_color"]) - rgb_of(expected["dominant_near"])).max() <= 8
    width, height = expected["width"], expected["height"]
    thumbnail, grayscale = decode(result.thumbnail_jpeg), decode(result.grayscale_jpeg)
    assert thumbnail.shape[:2][::-1] == fit(width, height, min(256, max(width, height)))
    assert grayscale.ndim == 2
    assert grayscale.shape[::-1] == fit(width, height, min(640, max(width, height)))


def test_features_have_exactly_the_contract_keys_and_plain_json_types():
    assert list(FEATURE_KEYS) == SPEC_KEYS
    assert set(SPEC_KEYS) <= set(FIELDS)
    for name, (data, expected) in AWKWARD.items():
        if not expected["ok"]:
            continue
        features = process_image(data).features
        assert list(features) == SPEC_KEYS, name
        assert all(type(value) in (int, float, str) for value in features.values()), name
        assert json.loads(json.dumps(features)) == features


def test_feature_values_are_in_range():
    for name, (data, expected) in AWKWARD.items():
        if not expected["ok"]:
            continue
        f = process_image(data).features
        assert f["size_bytes"] == len(data)
        assert f["sha256"] == hashlib.sha256(data).hexdigest()
        assert f["megapixels"] == round(f["width"] * f["height"] / 1e6, 3)
        assert f["channels"] in (1, 3, 4) and f["bit_depth"] in (8, 16)
        assert 0 <= f["mean_brightness"] <= 255
        assert f["sharpness"] >= 0
        assert 0 <= f["edge_density"] <= 1
        assert re.fullmatch(r"#[0-9a-f]{6}", f["dominant_color"]), name
        assert re.fullmatch(r"[0-9a-f]{16}", f["phash"]), name


def test_a_photo_gets_a_256px_thumbnail_and_a_640px_grayscale_version():
    result = process_image(samples.photo_like_jpeg(1))
    assert (result.features["width"], result.features["height"]) == (1280, 960)
    assert decode(result.thumbnail_jpeg).shape == (192, 256, 3)
    assert decode(result.grayscale_jpeg).shape == (480, 640)


def test_output_sizes_follow_the_options():
    photo = samples.photo_like_jpeg(2)
    full = process_image(photo, ProcessingOptions(thumbnail_size=100, grayscale_max_size=0))
    assert decode(full.thumbnail_jpeg).shape == (75, 100, 3)
    assert decode(full.grayscale_jpeg).shape == (960, 1280)
    small = process_image(photo, ProcessingOptions(grayscale_max_size=200))
    assert decode(small.grayscale_jpeg).shape == (150, 200)
    # A small grayscale version must not change the statistics (they use their own scale).
    default = process_image(photo).features
    for key in ("mean_brightness", "sharpness", "edge_density"):
        assert small.features[key] == pytest.approx(default[key], rel=0.05), key
    assert hamming(small.features["phash"], default["phash"]) <= 2


def test_small_images_are_never_upscaled_and_no_side_is_ever_zero():
    for size in [(1, 1), (3, 2), (100, 60), (8000, 10), (10, 8000), (2000, 1), (1, 300)]:
        data = samples.pil_bytes(Image.new("RGB", size, (40, 90, 200)), "PNG")
        result = process_image(data)
        thumb, gray = decode(result.thumbnail_jpeg), decode(result.grayscale_jpeg)
        assert thumb.shape[:2][::-1] == fit(*size, min(256, max(size)))
        assert gray.shape[::-1] == fit(*size, min(640, max(size)))
        assert min(thumb.shape[:2]) >= 1 and min(gray.shape) >= 1
        assert (result.features["width"], result.features["height"]) == size


def _quadrants(width: int = 60, height: int = 40) -> Image.Image:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[: height // 2, : width // 2] = (230, 20, 20)
    pixels[: height // 2, width // 2:] = (20, 200, 20)
    pixels[height // 2:, : width // 2] = (20, 20, 230)
    pixels[height // 2:, width // 2:] = (250, 250, 250)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_every_exif_orientation_is_applied_like_pillow_does(fmt):
    for orientation in range(1, 9):
        params = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
        data = samples.pil_bytes(_quadrants(), fmt, exif=samples.exif_with_orientation(orientation), **params)
        expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
        result = process_image(data)
        thumbnail = decode(result.thumbnail_jpeg)[:, :, ::-1]
        assert (result.features["width"], result.features["height"]) == expected.shape[1::-1]
        assert thumbnail.shape == expected.shape, (fmt, orientation)
        difference = np.abs(thumbnail.astype(int) - expected.astype(int)).mean()
        assert difference < 12, (fmt, orientation, difference)


def test_exif_rotated_jpeg_is_portrait_with_the_marker_top_right():
    data, _ = AWKWARD["exif-rotated-6.jpg"]
    result = process_image(data)
    assert (result.features["width"], result.features["height"]) == (400, 600)
    thumbnail = decode(result.thumbnail_jpeg)  # 171x256, BGR
    assert thumbnail.shape[:2] == (256, 171)
    top_right, top_left = thumbnail[5:20, -20:-5].mean(axis=(0, 1)), thumbnail[5:20, 5:20].mean(axis=(0, 1))
    assert top_right[2] > 200 and top_right[1] < 60  # red
    assert abs(top_left[2] - 128) < 20  # grey


def test_a_large_jpeg_decoded_at_reduced_scale_keeps_its_full_size_and_statistics():
    big = samples.photo_like_pixels(3, 2560, 1920)
    full = process_image(encode_jpeg(big))
    half = process_image(encode_jpeg(cv2.resize(big, (1280, 960), interpolation=cv2.INTER_AREA)))
    assert (full.features["width"], full.features["height"]) == (2560, 1920)
    assert full.features["megapixels"] == 4.915
    assert decode(full.thumbnail_jpeg).shape == (192, 256, 3)
    assert decode(full.grayscale_jpeg).shape == (480, 640)
    a, b = full.features, half.features
    assert a["mean_brightness"] == pytest.approx(b["mean_brightness"], abs=1.0)
    assert a["sharpness"] == pytest.approx(b["sharpness"], rel=0.10)
    assert a["edge_density"] == pytest.approx(b["edge_density"], abs=0.002)
    assert hamming(a["phash"], b["phash"]) <= 2
    assert np.abs(rgb_of(a["dominant_color"]) - rgb_of(b["dominant_color"])).max() <= 8


def test_phash_survives_reencoding_and_resizing_but_tells_images_apart():
    hashes = []
    for seed in range(6):
        original = samples.photo_like_jpeg(seed)
        pixels = cv2.imdecode(np.frombuffer(original, np.uint8), cv2.IMREAD_COLOR)
        reencoded = encode_jpeg(cv2.resize(pixels, (640, 480), interpolation=cv2.INTER_AREA), 50)
        first, second = (process_image(d).features["phash"] for d in (original, reencoded))
        assert hamming(first, second) <= 6
        hashes.append(first)
    for i, a in enumerate(hashes):
        for b in hashes[i + 1:]:
            assert hamming(a, b) >= 16


def test_alpha_is_composited_on_white():
    for name in ("rgba.png", "rgba-lossless.webp"):
        result = process_image(AWKWARD[name][0])
        assert result.features["channels"] == 4
        thumbnail = decode(result.thumbnail_jpeg)
        left, right = thumbnail[:, :120], thumbnail[:, 136:]  # left half of the source is transparent
        assert left.min() >= 245, name
        assert right.mean() < 200, name
        assert decode(result.grayscale_jpeg)[:, :120].min() >= 245


def test_sixteen_bit_samples_are_scaled_not_clipped():
    features = process_image(AWKWARD["16bit-gray.png"][0]).features
    assert features["bit_depth"] == 16
    assert features["mean_brightness"] == pytest.approx(127.5, abs=2)
    flat = samples.pil_bytes(Image.fromarray(np.full((30, 40), 50_000, np.uint16)), "PNG")
    features = process_image(flat).features
    assert (features["bit_depth"], features["channels"]) == (16, 1)
    assert features["mean_brightness"] == pytest.approx(50_000 / 257, abs=1)
    # 16-bit RGB: green is 40000 everywhere -> 156 in 8 bits.
    colour = rgb_of(process_image(AWKWARD["16bit-rgb.png"][0]).features["dominant_color"])
    assert abs(int(colour[1]) - 156) <= 2


def test_gif_uses_the_first_frame():
    features = process_image(AWKWARD["animated.gif"][0]).features
    assert np.abs(rgb_of(features["dominant_color"]) - rgb_of("#dc1e1e")).max() <= 8


def test_dominant_colour_is_the_largest_area():
    pixels = np.full((300, 400, 3), (200, 120, 40), np.uint8)  # BGR of #2878c8
    pixels[:100, :100] = (0, 0, 255)
    pixels[200:, 300:] = (0, 255, 0)
    colour = process_image(samples.pil_bytes(Image.fromarray(pixels[:, :, ::-1]), "PNG"))
    assert colour.features["dominant_color"] == "#2878c8"


def _astronaut_jpeg() -> bytes:
    from skimage import data

    return encode_jpeg(np.ascontiguousarray(data.astronaut()[:, :, ::-1]), 90)


def test_the_core_runs_no_detector_and_writes_no_faces():
    # Faces belong to the enrichment stage: a core re-index must never write a face count over
    # the enricher's, and nothing in the hot path may load a model.
    features = process_image(_astronaut_jpeg()).features
    assert "faces" not in features and "faces" not in FIELDS
    source = (REPO_ROOT / "consumer" / "processing.py").read_text()
    assert "CascadeClassifier" not in source and "detectMultiScale" not in source


def test_threads_give_the_same_results_as_one_thread():
    inputs = [samples.photo_like_jpeg(seed, 640, 480) for seed in range(6)] + [_astronaut_jpeg()] * 2
    sequential = [process_image(d).features for d in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = [r.features for r in pool.map(process_image, inputs)]
    assert parallel == sequential


def test_any_bytes_like_input_is_accepted():
    data = AWKWARD["photo.jpg"][0]
    expected = process_image(data).features
    assert process_image(bytearray(data)).features == expected
    assert process_image(memoryview(data)).features == expected


def _mutations(rng: random.Random, seeds: list[bytes], count: int):
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        kind = rng.randrange(5)
        if kind == 0:  # truncated anywhere
            data = data[: rng.randrange(1, len(data))]
        elif kind == 1:  # header bytes changed
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(min(len(data), 600))] = rng.randrange(256)
        elif kind == 2:  # bytes changed anywhere
            for _ in range(rng.randint(1, 20)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 3:  # a real signature followed by junk
            data = data[: rng.randrange(2, 24)] + rng.randbytes(rng.randrange(0, 3000))
        else:  # pure junk
            data = bytearray(rng.randbytes(rng.randrange(0, 200)))
        yield bytes(data)


def test_no_input_bytes_raise_anything_but_message_error():
    seeds = [data for data, expected in AWKWARD.values() if expected["ok"] and len(data) < 200_000]
    options = ProcessingOptions(max_image_pixels=4_000_000)  # keeps a fuzzed header's allocation small
    outcomes = {"ok": 0, "guard": 0, "decode": 0, "process": 0}
    for data in _mutations(random.Random(20240611), seeds, 400):
        try:
            result = process_image(data, options)
        except MessageError as exc:
            assert exc.stage in ("guard", "decode", "process")
            assert exc.reason and "\n" not in exc.reason
            outcomes[exc.stage] += 1
        else:
            assert isinstance(result, ProcessedImage)
            outcomes["ok"] += 1
    # The corpus exercises both defences and the success path; none of it is a bug report.
    assert outcomes["guard"] > 50 and outcomes["decode"] > 50 and outcomes["ok"] > 20
    assert outcomes["process"] == 0


def test_unexpected_failures_inside_processing_become_process_errors(monkeypatch):
    monkeypatch.setattr(processing, "dominant_color", lambda image: 1 / 0)
    with pytest.raises(MessageError) as caught:
        process_image(AWKWARD["photo.jpg"][0])
    assert caught.value.stage == "process"
    assert caught.value.reason == "ZeroDivisionError: division by zero"


def test_options_come_from_settings():
    settings = Settings(thumbnail_size=128, max_image_pixels=5_000_000, max_object_bytes=1_000)
    assert ProcessingOptions.from_settings(settings) == ProcessingOptions(
        thumbnail_size=128, max_image_pixels=5_000_000, max_object_bytes=1_000,
        grayscale_max_size=640)
    with pytest.raises(ValueError):
        ProcessingOptions(thumbnail_size=0)


def test_compressed_text_chunks_cannot_inflate_the_decoders_memory():
    """A PNG whose zTXt, iTXt and iCCP chunks hold 300 MB of zeros each (300 KB compressed): Pillow
    refuses such chunks before the image data (the guard reads them) and libpng caps them after it,
    so either way the memory stays small."""
    script = textwrap.dedent("""
        import resource, struct, zlib
        from consumer.imageguard import apply_decoder_limits
        apply_decoder_limits(100_000_000)
        from consumer.processing import ProcessingOptions, process_image
        from fixtures.images import gradient_pattern, png
        from imgpipe.errors import MessageError

        def chunk(kind, body):
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

        zeros = zlib.compress(bytes(300 << 20), 9)
        bombs = chunk(b"zTXt", b"Comment\\0\\0" + zeros) + chunk(b"iTXt", b"Comment\\0\\1\\0\\0\\0" + zeros)
        base = png(gradient_pattern(64, 48))
        before_image = base[:33] + chunk(b"iCCP", b"icc\\0\\0" + zeros) + bombs + base[33:]
        end = base.rindex(b"IEND") - 4
        after_image = base[:end] + bombs + base[end:]
        del zeros
        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        results = []
        for data in (before_image, after_image):
            try:
                results.append(process_image(data, ProcessingOptions()).features["width"])
            except MessageError as exc:
                results.append(exc.stage + " " + exc.reason)
        print(results, "|", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) // 1024)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results, grown_mb = done.stdout.split("|")
    assert results.strip() == "['guard truncated or corrupt PNG header (Decompressed data too large for " \
                              "PngImagePlugin.MAX_TEXT_CHUNK)', 64]"
    assert int(grown_mb) < 64


def test_the_consumers_main_process_does_not_load_the_decoders():
    # Only the workers decode: the main process builds its options, and receives the workers'
    # results, without cv2, numpy or the codecs (unpickling a result imports the module of its
    # class: consumer/processed.py, not consumer/processing.py).
    import subprocess
    import sys

    script = ("import sys, consumer.loop, consumer.image_consumer\n"
              "from consumer.workers import ProcessingPool\n"
              "from imgpipe.settings import Settings\n"
              "pool = ProcessingPool(Settings(), 1)\n"
              "image = pool.process(sys.stdin.buffer.read())\n"
              "pool.close()\n"
              "print(image.features['format'], image.features['width'], len(image.descriptor),\n"
              "      sorted(m for m in ('cv2', 'numpy', 'PIL', 'pillow_heif') if m in sys.modules))")
    image = samples.png(samples.gradient_pattern(48, 32))
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, input=image, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == f"png 48 {DESCRIPTOR_DIMENSIONS} []"
