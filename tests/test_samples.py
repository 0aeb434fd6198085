"""The sample generators: deterministic, photo-sized, and covering every awkward case we promise."""
from __future__ import annotations

import re

from fixtures import images as samples

REQUIRED = {
    "truncated.jpg", "truncated.png", "empty.jpg", "text-with-image-extension.png", "bomb-20000x20000.png",
    "huge-12000x12000-one-colour.png", "16bit-gray.png", "16bit-rgb.png", "cmyk.jpg", "rgba.png",
    "palette.png", "animated.gif", "exif-rotated-6.jpg", "1x1.png", "8000x10.jpg", "10x8000.png",
    "photo.webp", "photo.tiff", "photo.bmp", "grayscale.jpg",
}


def test_photo_like_jpeg_is_deterministic_and_photo_sized():
    first = samples.photo_like_jpeg(1)
    assert first == samples.photo_like_jpeg(1)
    assert first != samples.photo_like_jpeg(2)
    assert first[:3] == b"\xff\xd8\xff"
    sizes = [len(samples.photo_like_jpeg(seed)) for seed in range(4)]
    assert all(150_000 <= size <= 400_000 for size in sizes), sizes
    assert len(samples.photo_like_jpeg(1, 320, 240, 70)) < min(sizes)


def test_awkward_samples_cover_every_promised_case_with_usable_names():
    awkward = samples.awkward_samples()
    assert REQUIRED <= set(awkward)
    for name, (data, expected) in awkward.items():
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*\.(jpg|png|gif|webp|tiff|bmp)", name)
        assert isinstance(data, bytes)
        if expected["ok"]:
            assert {"format", "width", "height"} <= set(expected)
        else:
            assert expected["stage"] in ("guard", "decode") and expected["reason_contains"]
    assert awkward["empty.jpg"][0] == b""
    assert len(awkward["bomb-20000x20000.png"][0]) < 1024
    assert len(awkward["huge-12000x12000-one-colour.png"][0]) < 64 * 1024


def test_awkward_samples_are_the_same_every_time_and_safe_to_mutate():
    first = samples.awkward_samples()
    first["photo.jpg"][1]["width"] = -1
    second = samples.awkward_samples()
    assert second["photo.jpg"][1]["width"] == 320
    assert {k: v[0] for k, v in first.items()} == {k: v[0] for k, v in second.items()}
