"""Every format the consumer reads: a file of each through processing and through the real
consumer on the stack (documents, derived images), and hostile variants of the new decoders
(truncated files, headers declaring huge images) ending as dead letters with reasons that name
the format, inside the budgets."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from consumer.imageguard import DISPLAY_NAME, FORMATS
from consumer.processing import process_image
from fixtures.formats import bomb_headers, format_samples, truncated_variants
from imgpipe import s3
from imgpipe.errors import MessageError
from tests.helpers import all_documents, read_topic, run_script, upload

SAMPLES = format_samples()
BOMBS = bomb_headers()
TRUNCATED = truncated_variants()
CONSUME = ["--max-idle-seconds", "4", "--status-interval", "2", "--no-progress", "--workers", "2"]


def _decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_format_is_processed_with_its_real_format_size_and_frames(name):
    sample = SAMPLES[name]
    result = process_image(sample.data)
    features = result.features
    assert (features["format"], features["width"], features["height"], features["frames"]) == \
        (sample.format, sample.width, sample.height, sample.frames)
    thumbnail, grayscale = _decode(result.thumbnail_jpeg), _decode(result.grayscale_jpeg)
    assert max(thumbnail.shape[:2]) == min(256, max(sample.width, sample.height))
    assert grayscale.ndim == 2
    assert json.loads(json.dumps(features)) == features


def test_the_samples_cover_every_named_format():
    named = {"heic", "avif", "jxl", "jpeg2000", "pbm", "pgm", "ppm", "pfm", "pam", "tga", "psd", "ico", "icns",
             "dds", "qoi", "pcx", "sgi", "xpm", "xbm", "png", "tiff", "gif", "mpo"}
    assert named <= {s.format for s in SAMPLES.values()} and named <= set(FORMATS)


def test_colours_survive_the_pillow_path():
    # A Pillow-decoded file gives the same picture as OpenCV's decode of the same pixels: channel
    # order (RGB -> BGR) and alpha are converted as for the OpenCV formats.
    via_pillow = process_image(SAMPLES["photo.qoi"].data).features
    via_opencv = process_image(SAMPLES["photo.ppm"].data).features
    for key in ("dominant_color", "phash", "mean_brightness"):
        assert via_pillow[key] == via_opencv[key], key


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bomb_headers_are_refused_before_decoding_with_the_format_named(name):
    data, display = BOMBS[name]
    with pytest.raises(MessageError) as caught:
        process_image(data)
    assert caught.value.stage == "guard"
    assert display in caught.value.reason


@pytest.mark.parametrize("name", sorted(TRUNCATED))
def test_truncated_files_are_refused_with_the_format_named(name):
    data, display = TRUNCATED[name]
    with pytest.raises(MessageError) as caught:
        process_image(data)
    assert caught.value.stage in ("guard", "decode")
    assert display in caught.value.reason


def test_every_reason_names_its_format():
    assert set(DISPLAY_NAME) == set(FORMATS)


@pytest.mark.integration
def test_the_consumer_indexes_every_format_and_dead_letters_the_hostile_ones(settings):
    good = {name: sample.data for name, sample in SAMPLES.items()}
    hostile = {**{n: d for n, (d, _) in BOMBS.items()}, **{n: d for n, (d, _) in TRUNCATED.items()}}
    upload(settings, {**good, **hostile})
    produced = run_script("producer/image_producer.py", ["--no-progress"], settings)
    assert produced.returncode == 0, produced.stderr
    consumed = run_script("consumer/image_consumer.py", CONSUME, settings, timeout=300)
    assert consumed.returncode == 0, consumed.stderr
    assert f"indexed {len(good)}, dead-lettered {len(hostile)}" in consumed.stderr

    docs = {d["file_name"]: d for d in all_documents(settings)}
    assert sorted(docs) == sorted(good)
    client = s3.client(settings)
    for name, sample in SAMPLES.items():
        doc = docs[name]
        assert (doc["format"], doc["width"], doc["height"], doc["frames"]) == \
            (sample.format, sample.width, sample.height, sample.frames), name
        for key in (doc["thumbnail_key"], doc["grayscale_key"]):
            body = client.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read()
            assert _decode(body).size > 0, (name, key)

    dead = read_topic(settings, settings.kafka_dead_letter_topic, expected=len(hostile))
    reasons = {json.loads(m.value())["key"].rsplit("/", 1)[-1]: dict((k, v.decode()) for k, v in m.headers())
               for m in dead}
    assert sorted(reasons) == sorted(hostile)
    for name, (_, display) in {**BOMBS, **TRUNCATED}.items():
        assert reasons[name]["stage"] in ("guard", "decode"), (name, reasons[name])
        assert display in reasons[name]["reason"], (name, reasons[name]["reason"])


def test_sizes_read_by_hand_agree_with_pillow_where_pillow_is_stricter_than_opencv():
    # BMP bitfield layouts, PNG with an unknown compression byte, JPEG 2000 with a bad box
    # length: OpenCV decodes them, Pillow's header parser refuses; the size is then read by hand.
    from consumer.imageguard import header_by_hand
    from fixtures.images import encode, photo_like_pixels

    pixels = photo_like_pixels(3, 90, 60)
    for ext, fmt in ((".png", "png"), (".bmp", "bmp"), (".jp2", "jpeg2000")):
        assert header_by_hand(encode(pixels, ext), fmt)[:2] == (90, 60), fmt
    assert header_by_hand(SAMPLES["codestream.j2k"].data, "jpeg2000")[:2] == (96, 64)


def test_bigtiff_and_xv_thumbnails_are_told_apart_from_their_neighbours():
    from consumer.imageguard import sniff_format

    assert sniff_format(b"II+\x00\x08\x00\x00\x00") == sniff_format(b"MM\x00+\x00\x08\x00\x00") == "tiff"
    assert sniff_format(b"P7 332\n#XVVERSION") == "xvthumb"
    assert sniff_format(b"P7\nWIDTH 4\n") == "pam"
