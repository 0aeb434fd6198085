"""The benchmark corpus: photo-like JPEGs, smaller images, face photos and decompression bombs.

Every figure that counts images (decode, processing, pipeline, memory) runs over this one
list, so their ratios compare the same bytes. Keys start with a number in a shuffled order,
so any prefix of the listing (producer --limit) is a mix of sizes rather than one kind.
"""
from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

Item = tuple[str, bytes]


@dataclass(frozen=True)
class CorpusSpec:
    photos: int = 500  # photo-like JPEGs of photo_size
    # pipeline_vs_seed's photos: the corpus's and more of the same kind, 1,000 in all, as in the
    # issue (#24) that set its target; at 500 each consumer's start-up weighed twice as much.
    seed_comparison_photos: int = 1000
    photo_size: tuple[int, int] = (1280, 960)
    small: int = 100  # smaller JPEGs and PNGs, 320-800 px
    demo_count: int = 300  # the demo corpus whose photos/astronaut/ face crops are added
    seed: int = 0


FULL = CorpusSpec()
QUICK = CorpusSpec(photos=6, photo_size=(320, 240), small=2, demo_count=30, seed_comparison_photos=8)


def _small_item(seed: int, i: int) -> Item:
    from fixtures.images import photo_like_jpeg, photo_like_pil, pil_bytes

    width, height = ((800, 600), (640, 480), (480, 640), (320, 240))[i % 4]
    if i % 5 == 4:  # one in five is a PNG: lossless decoding costs differently
        return f"small/photo-{width}x{height}-{seed}-{i}.png", pil_bytes(photo_like_pil(seed * 7919 + i, width, height),
                                                                       "PNG")
    return f"small/photo-{width}x{height}-{seed}-{i}.jpg", photo_like_jpeg(seed * 7919 + i, width, height, 85)


def face_photos(demo_count: int, seed: int) -> list[Item]:
    """The demo corpus's face photos (astronaut crops, one face each, 70-300 px wide)."""
    from demo.corpus import build_corpus

    return [(key, data) for key, data in build_corpus(demo_count, seed) if key.startswith("photos/astronaut/")]


def awkward_items() -> list[Item]:
    """fixtures.images' awkward and broken files (two decompression bombs among them) and the
    demo corpus's 30000x30000 PNG bomb."""
    from demo.corpus import BROKEN_FILES
    from fixtures.images import awkward_samples

    items = [(f"awkward/{name}", data) for name, (data, _) in awkward_samples().items()]
    items.append(("awkward/decompression-bomb-30000x30000.png", BROKEN_FILES["broken/decompression-bomb.png"](0)))
    items += budget_busters()
    return items


def budget_busters() -> list[Item]:
    """Images within the pixel limit that test the per-image budgets: one whose decoded size
    (100 MP x RGBA x 16 bits = 800 MB) is over MAX_DECODE_BYTES, refused from its header, and a
    real 90 MP image (270 MB decoded) that a worker must decode within its memory cap."""
    import cv2
    import numpy as np

    from fixtures.images import encode, png_declaring

    flat = np.full((9000, 10000, 3), (40, 120, 200), np.uint8)
    return [("awkward/budget-rgba16-10000x10000.png", png_declaring(10000, 10000, colour_type=6, bit_depth=16)),
            ("awkward/budget-heavy-90mp.png", encode(flat, ".png", [cv2.IMWRITE_PNG_COMPRESSION, 9]))]


def _photos(spec: CorpusSpec, numbers: range, pool: ThreadPoolExecutor) -> list[Item]:
    """Photo-like JPEGs of spec.photo_size, photo i always the same bytes (its own seed)."""
    from fixtures.images import photo_like_jpeg

    width, height = spec.photo_size
    return [(f"photo/photo-{width}x{height}-{spec.seed}-{i}.jpg", data) for i, data in zip(
        numbers, pool.map(lambda i: photo_like_jpeg(spec.seed * 100_003 + i, width, height, 90), numbers))]


def _numbered(i: int, key: str) -> str:
    """A corpus key: its number first, then the kind (see kind()), flat."""
    return f"{i:04d}-{key.replace('/', '-')}"


def build(spec: CorpusSpec, threads: int = 2) -> list[Item]:
    """(key, bytes) of the whole corpus, the same bytes for the same spec."""
    # OpenCV and numpy release the GIL while drawing and encoding: two threads halve the wait.
    with ThreadPoolExecutor(threads) as pool:
        items = _photos(spec, range(spec.photos), pool)
        items += list(pool.map(lambda i: _small_item(spec.seed, i), range(spec.small)))
    items += [(f"faces/{key.rsplit('/', 1)[-1]}", data) for key, data in face_photos(spec.demo_count, spec.seed)]
    items += awkward_items()
    random.Random(spec.seed).shuffle(items)
    return [(_numbered(i, key), data) for i, (key, data) in enumerate(items)]


def seed_comparison_photos(spec: CorpusSpec, corpus: list[Item], threads: int = 2) -> list[Item]:
    """The corpus's photos and, up to spec.seed_comparison_photos, more made the same way, with
    the numbers after the corpus's own (0 .. spec.photos - 1), so no two share bytes."""
    photos = [(key, data) for key, data in corpus if kind(key) == "photo"]
    more = range(spec.photos, spec.photos + max(0, spec.seed_comparison_photos - len(photos)))
    with ThreadPoolExecutor(threads) as pool:
        return photos + [(_numbered(i, key), data) for i, (key, data) in zip(more, _photos(spec, more, pool))]


def kind(key: str) -> str:
    """photo, small, faces or awkward, from a corpus key."""
    return key.split("-", 2)[1]


def is_photo_like(key: str) -> bool:
    return kind(key) in ("photo", "small")
