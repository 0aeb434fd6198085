"""Measure pHash distances of planted near-duplicates against unrelated images, to choose the
default --threshold of the duplicates job (mapreduce/README.md has the numbers).

Originals: photo-like images (fixtures.images) and the scikit-image photographs the demo
corpus bundles. Copies: each transform alone, and all four together (the planted copies of
the tests): resized to 50-90%, cropped 2-5% of each side's length (split at random between the
two edges), brightness scaled by 1 +- 10-20%, re-encoded as JPEG at quality 60-95. Every image
goes through the consumer's own processing (consumer.processing.process_image on the encoded
bytes), so the hashes are the ones the job sees in the CSV.

Printed: the distance histogram of copy-to-original pairs per transform and of unrelated pairs,
then per threshold T: copies found directly (distance <= T) and through groups (connected
components over all originals and copies), unrelated pairs within T, wrongly merged groups,
and what T costs the job on 1,000,000 uniformly random hashes (T+1 bands).

    python -m bench.duplicates_threshold
    python -m bench.duplicates_threshold --photos 300 --copies 10 --json out/threshold.json
"""
from __future__ import annotations

import itertools
import json
import sys
import time
from collections import Counter
from math import comb
from pathlib import Path

import numpy as np

from imgpipe import cli

TRANSFORMS = ("resize", "jpeg", "crop", "brighten")
ALL = "all"
THRESHOLDS = range(0, 17)
BITS = 64


def band_widths(threshold: int) -> list[int]:
    """The widths of the T+1 bands the job cuts the 64 bits into (duplicates_mapper.py)."""
    bands = threshold + 1
    return [BITS // bands + (1 if i < BITS % bands else 0) for i in range(bands)]


def expected_comparisons(threshold: int, rows: int) -> float:
    """Pairs the job compares on `rows` uniformly random hashes with no bucket cap: each band
    of w bits holds rows / 2^w rows per value on average."""
    return sum(2 ** w * comb(round(rows / 2 ** w), 2) for w in band_widths(threshold))


def chance_pairs(threshold: int, rows: int) -> float:
    """Expected pairs within `threshold` bits among `rows` uniformly random 64-bit hashes."""
    within = sum(comb(BITS, k) for k in range(threshold + 1)) / 2 ** BITS
    return comb(rows, 2) * within


def originals(photos: int) -> list[tuple[str, np.ndarray, bytes]]:
    """(name, BGR pixels, encoded original) of every original image."""
    import cv2

    from fixtures.images import BUNDLED_PHOTOS, bundled_photo
    from fixtures.images import photo_like_jpeg, photo_like_pixels

    found = []
    for seed in range(photos):
        found.append((f"photo_like_{seed}", photo_like_pixels(seed), photo_like_jpeg(seed)))
    for name in BUNDLED_PHOTOS:
        pixels = np.ascontiguousarray(bundled_photo(name))
        ok, png = cv2.imencode(".png", pixels)
        assert ok
        found.append((f"skimage_{name}", pixels, png.tobytes()))
    return found


def planted_copy(pixels: np.ndarray, rng: np.random.Generator, transforms: tuple[str, ...]) -> bytes:
    """One near-duplicate of `pixels`, as JPEG bytes."""
    import cv2

    image = pixels
    if "crop" in transforms:
        h, w = image.shape[:2]
        cut_w, cut_h = round(w * rng.uniform(0.02, 0.05)), round(h * rng.uniform(0.02, 0.05))
        left, top = int(rng.integers(0, cut_w + 1)), int(rng.integers(0, cut_h + 1))
        image = image[top:h - (cut_h - top), left:w - (cut_w - left)]
    if "resize" in transforms:
        h, w = image.shape[:2]
        scale = rng.uniform(0.5, 0.9)
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    if "brighten" in transforms:
        factor = 1 + float(rng.choice([-1, 1])) * rng.uniform(0.10, 0.20)
        image = cv2.convertScaleAbs(image, alpha=factor, beta=0)
    quality = int(rng.integers(60, 96)) if "jpeg" in transforms else 95
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(image), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


def phash_of(data: bytes) -> int:
    from consumer.processing import ProcessingOptions, process_image

    return int(process_image(data, ProcessingOptions()).features["phash"], 16)


def distance(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def components(count: int, close_pairs: list[tuple[int, int, int]], threshold: int) -> list[int]:
    """A component label per image: connected components of the pairs within `threshold`
    (`close_pairs`: (i, j, distance) of every pair at most max(THRESHOLDS) apart)."""
    parent = list(range(count))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, d in close_pairs:
        if d <= threshold:
            parent[find(i)] = find(j)
    return [find(i) for i in range(count)]


def measure(photos: int, copies: int, single_copies: int, seed: int, show_progress: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    bases = originals(photos)
    base_hash = [phash_of(data) for _, _, data in bases]
    distances: dict[str, Counter] = {name: Counter() for name in (*TRANSFORMS, ALL)}
    planted: list[tuple[int, int]] = []  # (base index, hash) of the "all" copies
    with cli.progress(len(bases), "planting copies", unit="original", enabled=show_progress) as bar:
        for index, (_, pixels, _) in enumerate(bases):
            for name in TRANSFORMS:
                for _ in range(single_copies):
                    distances[name][distance(base_hash[index], phash_of(planted_copy(pixels, rng, (name,))))] += 1
            for _ in range(copies):
                copy_hash = phash_of(planted_copy(pixels, rng, TRANSFORMS))
                distances[ALL][distance(base_hash[index], copy_hash)] += 1
                planted.append((index, copy_hash))
            bar.update(1)
    unrelated = Counter(distance(a, b) for a, b in itertools.combinations(base_hash, 2))
    # Every image (originals and their "all" copies) against every image of another original.
    images = [(i, h) for i, h in enumerate(base_hash)] + planted
    cross = Counter()
    close_pairs = []
    for (i, (owner_i, a)), (j, (owner_j, b)) in itertools.combinations(enumerate(images), 2):
        d = distance(a, b)
        if owner_i != owner_j:
            cross[d] += 1
        if d <= max(THRESHOLDS):
            close_pairs.append((i, j, d))
    weights = Counter(bin(h).count("1") for _, h in images)

    rows = []
    owners = [i for i, _ in images]
    for threshold in THRESHOLDS:
        labels = components(len(images), close_pairs, threshold)
        home = {i: labels[i] for i in range(len(bases))}  # an original's component
        grouped = sum(1 for k, (index, _) in enumerate(planted) if labels[len(bases) + k] == home[index])
        members: dict[int, set[int]] = {}
        for label, owner in zip(labels, owners):
            members.setdefault(label, set()).add(owner)
        mixed = sum(1 for owners_of in members.values() if len(owners_of) > 1)
        rows.append({
            "threshold": threshold,
            "bands": threshold + 1,
            "band_bits": f"{min(band_widths(threshold))}-{max(band_widths(threshold))}",
            "copies_within": sum(n for d, n in distances[ALL].items() if d <= threshold) / len(planted),
            "copies_grouped": grouped / len(planted),
            "unrelated_within": sum(n for d, n in cross.items() if d <= threshold),
            "mixed_groups": mixed,
            "chance_pairs_1m": chance_pairs(threshold, 1_000_000),
            "comparisons_1m": expected_comparisons(threshold, 1_000_000),
        })
    return {
        "originals": len(bases), "copies": len(planted), "single_transform_copies": single_copies,
        "unrelated_pairs": sum(cross.values()), "seed": seed,
        "hash_weights": dict(sorted(weights.items())),
        "distances": {name: dict(sorted(c.items())) for name, c in distances.items()},
        "unrelated_originals": dict(sorted(unrelated.items())),
        "unrelated_all": dict(sorted(cross.items())),
        "thresholds": rows,
    }


def report(result: dict) -> str:
    lines = [f"{result['originals']} originals, {result['copies']} planted copies (all four transforms), "
             f"{result['single_transform_copies']} copies per original per single transform; "
             f"{result['unrelated_pairs']:,} pairs of images of different originals",
             f"hash weights (set bits): {result['hash_weights']}", "",
             "distance histograms (distance: pairs)"]
    for name, histogram in result["distances"].items():
        lines.append(f"  copy vs original, {name:8s} {histogram}")
    lines.append(f"  unrelated originals     {result['unrelated_originals']}")
    low = {d: n for d, n in result["unrelated_all"].items() if d <= 20}
    lines.append(f"  unrelated, all images   {low} ... (up to distance 20)")
    lines += ["", "  T  bands  bits  copies<=T  copies grouped  unrelated<=T  mixed groups  "
                  "chance pairs/1M  comparisons/1M"]
    for row in result["thresholds"]:
        lines.append(f"{row['threshold']:3d}  {row['bands']:5d}  {row['band_bits']:>4s}  {row['copies_within']:9.1%}  "
                     f"{row['copies_grouped']:14.1%}  {row['unrelated_within']:12d}  {row['mixed_groups']:12d}  "
                     f"{row['chance_pairs_1m']:15.3g}  {row['comparisons_1m']:14.3g}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from consumer.imageguard import apply_decoder_limits
    from imgpipe.settings import Settings

    apply_decoder_limits(Settings().max_image_pixels)  # these images are processed here, in process
    p = cli.parser("python -m bench.duplicates_threshold", __doc__, [
        "python -m bench.duplicates_threshold",
        "python -m bench.duplicates_threshold --photos 300 --copies 10 --json out/threshold.json"])
    p.add_argument("--photos", type=int, default=150, help="photo-like originals (plus the 17 bundled photographs)")
    p.add_argument("--copies", type=int, default=8, help="planted copies per original with all four transforms")
    p.add_argument("--single", type=int, default=3, help="copies per original for each transform alone")
    p.add_argument("--seed", type=int, default=1, help="random seed of the transforms")
    p.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = p.parse_args(argv)

    def body() -> int:
        started = time.monotonic()
        result = measure(args.photos, args.copies, args.single, args.seed, show_progress=None)
        print(report(result))
        print(f"\n{time.monotonic() - started:.0f} s")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        return cli.EXIT_OK

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
