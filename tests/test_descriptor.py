"""consumer.descriptor: a fixed-length unit vector, deterministic, defined for every image the
consumer accepts (gray, flat, one pixel wide), and close for an image and its copies.

Cost is a budget, not an assertion: 0.35 ms per 1280x960 photo on one core of the development
machine (0.45-0.66 ms in python -m bench.descriptor under load), against 17 ms for
process_image on the same photo (notes/similarity.md)."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from consumer import descriptor
from consumer.descriptor import DESCRIPTOR_DIMENSIONS, FLAT_VECTOR, cosine, describe
from fixtures.images import photo_like_pixels
from tests.similar_images import collection, jpeg


def consumer_inputs(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Plausible (work, thumbnail) inputs: the gray image area-averaged to 512 px, the colour one
    to 256 px (processing.py's own derivation is tested through process_image elsewhere)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)

    def shrink(pixels, longest):
        factor = longest / max(pixels.shape[:2])
        if factor >= 1:
            return pixels
        rows, cols = pixels.shape[:2]
        return cv2.resize(pixels, (max(1, round(cols * factor)), max(1, round(rows * factor))),
                          interpolation=cv2.INTER_AREA)

    return shrink(gray, 512), shrink(image, 256)


def photo_inputs(seed: int = 1, width: int = 640, height: int = 480):
    return consumer_inputs(jpeg(photo_like_pixels(seed, width, height)))


def test_a_fixed_number_of_rounded_floats_with_norm_one():
    vector = describe(*photo_inputs())
    assert DESCRIPTOR_DIMENSIONS == 255
    assert len(vector) == DESCRIPTOR_DIMENSIONS
    assert all(type(v) is float and v == round(v, descriptor.DECIMALS) for v in vector)
    assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, abs_tol=1e-3)


def test_deterministic():
    work, thumbnail = photo_inputs(seed=2)
    first = describe(work, thumbnail)
    assert describe(work.copy(), thumbnail.copy()) == first
    assert describe(*photo_inputs(seed=2)) == first


def test_a_gray_thumbnail_is_the_same_as_its_colour_copy():
    work, thumbnail = photo_inputs(seed=3)
    gray = cv2.cvtColor(thumbnail, cv2.COLOR_BGR2GRAY)
    assert describe(work, gray) == describe(work, cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))


def test_structure_does_not_depend_on_colour():
    # Only the colour part (weight 0.5 of 1.5: a fifth of the cosine) sees the colour.
    work, thumbnail = photo_inputs(seed=4)
    gray = cv2.cvtColor(thumbnail, cv2.COLOR_BGR2GRAY)
    assert cosine(describe(work, thumbnail), describe(work, gray)) > 0.75


@pytest.mark.parametrize("value", [0, 128, 255])
def test_a_flat_image_is_described_by_its_colour_and_matches_itself(value):
    work = np.full((384, 512), value, np.uint8)
    thumbnail = np.full((192, 256, 3), value, np.uint8)
    vector = describe(work, thumbnail)
    assert len(vector) == DESCRIPTOR_DIMENSIONS and all(math.isfinite(v) for v in vector)
    assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, abs_tol=1e-3)
    assert vector[:descriptor.LAYOUT_DIMENSIONS + descriptor.GRADIENT_DIMENSIONS] == \
        [0.0] * (descriptor.LAYOUT_DIMENSIONS + descriptor.GRADIENT_DIMENSIONS)
    assert cosine(vector, describe(work[:100, :300], thumbnail[:50, :150])) > 0.999


def test_a_vector_that_would_be_zero_becomes_the_constant_unit_vector(monkeypatch):
    monkeypatch.setattr(descriptor, "colour", lambda thumbnail: np.zeros(descriptor.COLOUR_DIMENSIONS, np.float32))
    flat = np.full((64, 64), 90, np.uint8)
    assert describe(flat, flat) == FLAT_VECTOR
    assert len(FLAT_VECTOR) == DESCRIPTOR_DIMENSIONS
    assert math.isclose(math.sqrt(sum(v * v for v in FLAT_VECTOR)), 1.0, abs_tol=1e-3)


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (3, 512), (512, 2), (7, 9)])
def test_tiny_and_extreme_shapes(shape):
    rng = np.random.default_rng(0)
    work = rng.integers(0, 256, shape, dtype=np.uint8)
    thumbnail = cv2.cvtColor(work, cv2.COLOR_GRAY2BGR)
    vector = describe(work, thumbnail)
    assert len(vector) == DESCRIPTOR_DIMENSIONS and all(math.isfinite(v) for v in vector)


@pytest.mark.parametrize("work, thumbnail", [
    (np.zeros((8, 8), np.float32), np.zeros((8, 8, 3), np.uint8)),
    (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)),
    (np.zeros((0, 8), np.uint8), np.zeros((8, 8, 3), np.uint8)),
    (np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.uint16)),
])
def test_wrong_inputs_are_refused_with_what_was_given(work, thumbnail):
    with pytest.raises(ValueError, match="2-D uint8 working image"):
        describe(work, thumbnail)


def test_the_same_image_at_two_sizes_describes_alike():
    # processing.py decodes a large JPEG at a reduced scale: the working image must not care.
    pixels = photo_like_pixels(5, 2560, 1920)
    large = describe(*consumer_inputs(jpeg(pixels)))
    small = describe(*consumer_inputs(jpeg(cv2.resize(pixels, (1280, 960), interpolation=cv2.INTER_AREA))))
    assert cosine(large, small) > 0.99


def test_copies_rank_above_every_unrelated_image():
    items = collection()
    vectors = np.array([describe(*consumer_inputs(data)) for _, _, data in items])
    groups = np.array([group for group, _, _ in items])
    similarity = vectors @ vectors.T
    for q, (group, kind, _) in enumerate(items):
        if kind != "original":
            continue
        own = (groups == group) & (np.arange(len(items)) != q)
        worst_copy, best_unrelated = similarity[q, own].min(), similarity[q, groups != group].max()
        assert worst_copy > best_unrelated, f"{group}: a copy at {worst_copy:.3f}, an unrelated image at {best_unrelated:.3f}"
