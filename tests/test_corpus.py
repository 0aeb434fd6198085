"""The demo corpus: reproducible to the byte, varied, with faces, awkward names and broken files."""
from __future__ import annotations

import hashlib
import io
import os
import struct
import subprocess
import sys
import unicodedata

import cv2
import numpy as np
import pytest
from PIL import Image

from demo.corpus import (BROKEN_FILES, CAPTCHA_ALPHABET, CAPTCHA_SIZE, build_corpus,
                         corpus_summary, main, sniff_format, upload_corpus, write_corpus)
from fixtures.keys import FILE_SAFE_AWKWARD_KEYS
from imgpipe.errors import UserError


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, bytes]]:
    return build_corpus()


def decodes(data: bytes) -> bool:
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    except cv2.error:  # OpenCV raises on an empty buffer instead of returning None
        return False


def digest(items) -> str:
    h = hashlib.sha256()
    for key, data in items:
        h.update(key.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def test_same_seed_gives_byte_identical_files(corpus):
    again = build_corpus()
    assert [k for k, _ in again] == [k for k, _ in corpus]
    assert [k for (k, a), (_, b) in zip(again, corpus) if a != b] == []


def test_a_fresh_process_with_another_hash_seed_builds_the_same_bytes():
    code = "from demo.corpus import build_corpus; from tests.test_corpus import digest; print(digest(build_corpus(40, 3)))"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == digest(build_corpus(40, 3))


def test_another_seed_gives_other_files():
    one, two = dict(build_corpus(40, 1)), dict(build_corpus(40, 2))
    assert {k for k in one if k.startswith("captcha/")} != {k for k in two if k.startswith("captcha/")}
    photos_one = sorted(v for k, v in one.items() if k.startswith("photos/"))
    photos_two = sorted(v for k, v in two.items() if k.startswith("photos/"))
    assert photos_one != photos_two


def test_count_is_what_was_asked_and_small_counts_keep_the_special_files(corpus):
    assert len(corpus) == 300
    assert len({k for k, _ in corpus}) == 300
    small = dict(build_corpus(5))
    assert len(small) >= 5
    assert set(BROKEN_FILES) <= set(small) and set(FILE_SAFE_AWKWARD_KEYS) <= set(small)
    assert {k.split("/")[0] for k in small} == {"captcha", "photos", "misc", "broken", "dupes"}
    with pytest.raises(ValueError):
        build_corpus(0)


def test_folders_and_formats_are_varied(corpus):
    summary = corpus_summary(corpus)
    assert set(summary["by_folder"]) == {"captcha", "photos", "misc", "broken", "dupes"}
    assert summary["by_folder"]["captcha"] >= 60 and summary["by_folder"]["photos"] >= 60
    for fmt in ("jpeg", "png", "webp", "gif", "bmp", "tiff"):
        assert summary["by_format"].get(fmt, 0) >= 1, fmt
    assert summary["by_format"]["jpeg"] >= 50 and summary["by_format"]["png"] >= 50


def test_sizes_run_from_tiny_to_several_megapixels(corpus):
    sizes = [Image.open(io.BytesIO(data)).size for key, data in corpus if not key.startswith("broken/")]
    assert min(w * h for w, h in sizes) <= 32 * 32
    assert max(w * h for w, h in sizes) >= 3000 * 2000
    assert sum(w * h >= 3000 * 2000 for w, h in sizes) >= 5


def test_every_image_outside_broken_decodes_with_opencv(corpus):
    assert [key for key, data in corpus if not key.startswith("broken/") and not decodes(data)] == []


def test_broken_files_fail_to_decode_or_declare_too_many_pixels(corpus):
    broken = {key: data for key, data in corpus if key.startswith("broken/")}
    assert 5 <= len(broken) <= 8
    assert broken["broken/empty.jpg"] == b""
    bomb = broken.pop("broken/decompression-bomb.png")
    # Read the declared size from the IHDR chunk: decoding it would allocate 2.7 GB.
    assert bomb[12:16] == b"IHDR" and struct.unpack(">II", bomb[16:24]) == (30000, 30000)
    assert len(bomb) < 100_000
    assert [key for key, data in broken.items() if decodes(data)] == []
    assert sniff_format(broken["broken/not-an-image.jpg"]) == "other"


def test_some_photo_has_a_face_the_haar_cascade_finds(corpus):
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    found = []
    for key, data in corpus:
        if key.startswith("photos/astronaut/") and len(found) < 3:
            gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
            if len(cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(30, 30))):
                found.append(key)
    assert found


def test_captchas_are_named_after_their_text(corpus):
    captchas = [(key, data) for key, data in corpus if key.startswith("captcha/")]
    for key, data in captchas:
        text, ext = key[len("captcha/"):].rsplit(".", 1)
        assert len(text) == 5 and set(text) <= set(CAPTCHA_ALPHABET), key
        assert ext in ("png", "jpg") and sniff_format(data) == {"png": "png", "jpg": "jpeg"}[ext]
        assert Image.open(io.BytesIO(data)).size == CAPTCHA_SIZE
    assert {key.rsplit(".", 1)[1] for key, _ in captchas} == {"png", "jpg"}


def test_awkward_key_names_are_there_including_nfc_and_nfd_cafe(corpus):
    keys = [k for k, _ in corpus]
    nfc, nfd = "misc/" + unicodedata.normalize("NFC", "café") + ".jpg", "misc/" + unicodedata.normalize("NFD", "café") + ".jpg"
    assert nfc != nfd and nfc in keys and nfd in keys
    assert dict(corpus)[nfc] != dict(corpus)[nfd]
    for char in " +%#;&=,\"'?":
        assert any(char in k for k in keys), repr(char)
    assert any(not k.isascii() and unicodedata.is_normalized("NFC", k) for k in keys)


def test_summary_adds_up(corpus):
    summary = corpus_summary(corpus)
    assert summary["count"] == 300 == sum(summary["by_folder"].values()) == sum(summary["by_format"].values())
    assert summary["total_bytes"] == sum(len(d) for _, d in corpus) == sum(summary["bytes_by_folder"].values())


def test_write_corpus_puts_each_key_at_its_path(tmp_path):
    items = build_corpus(30)
    assert write_corpus(tmp_path, items) == len(items)
    assert [k for k, d in items if (tmp_path / k).read_bytes() != d] == []
    with pytest.raises(ValueError):
        write_corpus(tmp_path, [("../escape.png", b"x")])


def test_cli_writes_a_folder_and_prints_a_summary(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "c"), "--count", "30", "--seed", "4"]) == 0
    expected = dict(build_corpus(30, 4))
    written = {p.relative_to(tmp_path / "c").as_posix(): p.read_bytes()
               for p in (tmp_path / "c").rglob("*") if p.is_file()}
    assert written == expected
    assert f"{len(expected)} files" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [([], "nothing to do"), (["--out", "x", "--count", "0"], "--count"),
                                           (["--out", "x", "--seed", "-1"], "--seed")])
def test_cli_user_mistakes_are_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]


@pytest.mark.integration
def test_upload_puts_every_file_under_the_raw_prefix_byte_for_byte(settings):
    from imgpipe import s3

    items = build_corpus(40, 1)
    client = s3.client(settings)
    try:
        assert upload_corpus(settings, items) == len(items)
        listed = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket,
                                                                  Prefix=settings.s3_raw_prefix):
            listed += [o["Key"] for o in page.get("Contents", [])]
        assert sorted(listed) == sorted(settings.s3_raw_prefix + k for k, _ in items)
        sample = [item for item in items if not item[0].isascii() or "broken/" in item[0] or "%" in item[0]]
        sample += items[:: max(1, len(items) // 8)]
        for key, data in sample:
            body = client.get_object(Bucket=settings.s3_bucket, Key=settings.s3_raw_prefix + key)["Body"].read()
            assert body == data, key
    finally:
        for key, _ in items:
            client.delete_object(Bucket=settings.s3_bucket, Key=settings.s3_raw_prefix + key)


@pytest.mark.integration
def test_upload_to_a_missing_bucket_is_a_user_error(settings, unique):
    with pytest.raises(UserError, match="does not exist"):
        upload_corpus(settings.with_overrides(s3_bucket=f"no-such-bucket-{unique}"), build_corpus(5)[:3])
