"""Which similarity descriptor finds an image's copies: candidates measured against pHash.

Collection: photo-like JPEGs (fixtures.images, one per seed) and the photographs bundled
with scikit-image (fixtures.images.BUNDLED_PHOTOS), each with 16 transformed copies: resized to
25/50/90%, re-encoded at JPEG quality 40/60/95, cropped by 2/5/10%, brightened or darkened by
10/25%, tilted by 2/5 degrees, and one copy cropped 5% + resized 50% + brightened 10% +
quality 60. Copies are JPEG (quality 90 unless the transform sets it). Five more copies go
beyond that (grayscale, mirrored, cropped 20%, tilted 10 degrees, a heavy combination): each
has its own column and is neither relevant nor unrelated in the other metrics. A second,
harder collection ("quadrants") takes the four quarters of each bundled photograph as
originals: their unrelated images include the other quarters of the same photograph (the same
textures and colours).

Every image goes through the consumer's inputs: decoded, the grayscale area-averaged to 512 px
(`work`) and the colour one to 256 px (`thumbnail`), as consumer/processing.py does (one
INTER_AREA step here; processing starts from at most 1024 px, which changes a pixel by a level
or two). Each original is a query against every other image of its collection, by cosine (pHash:
64 - Hamming distance). Metrics, averaged over queries:
  mAP       mean average precision of the query's copies (ties with unrelated images count half)
  R-prec    share of copies within the first R hits, R = number of copies
  MRR       mean of 1 / rank of the best-ranked copy
  above     share of copies that score above every unrelated image
  @fpr      share of (query, copy) pairs above a single cosine threshold that lets through
            0.1% of the (query, unrelated) pairs: whether a fixed score cut-off can work
  gray, mirror, crop20, tilt10, heavy   share of such copies (grayscale, mirrored, cropped by
            20%, tilted by 10 degrees, cropped 10% + tilted 3 degrees + resized 40% + darkened 20%
            + quality 50) that score above every unrelated image: beyond the brief, measured apart
  look-alike  quadrants only: mean average precision of a quarter's three sibling quarters
            among the other photographs' quarters (same scene, different pixels)
  us        microseconds per image to compute it from work and thumbnail (one thread, best of
            5 passes), on top of what processing already does

Exit status: 0 measured, 2 usage error.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from imgpipe import cli

from consumer.processing import WORKING_SIZE  # noqa: E402  (the consumer's own)
THUMBNAIL_SIZE = 256
# Measured apart, each its own column: neither relevant nor unrelated in the other metrics.
APART = ("gray", "mirror", "crop20", "tilt10", "heavy")
FPR = 0.001


@dataclass(frozen=True)
class Sample:
    group: int  # index of the original this image comes from
    kind: str  # "original" or the transform's name
    source: str  # "synthetic", "real" or "quadrant"
    photo: str  # the photograph a quadrant comes from ("" otherwise)
    work: np.ndarray
    thumbnail: np.ndarray


# --- the collection ----------------------------------------------------------------------------

def _area(image: np.ndarray, factor: float) -> np.ndarray:
    rows, cols = image.shape[:2]
    size = (max(1, round(cols * factor)), max(1, round(rows * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _crop(image: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    rows, cols = image.shape[:2]
    cut_x, cut_y = round(cols * share), round(rows * share)
    x0, y0 = int(rng.integers(0, cut_x + 1)), int(rng.integers(0, cut_y + 1))
    return image[y0:y0 + rows - cut_y, x0:x0 + cols - cut_x]


def _tilt(image: np.ndarray, degrees: float) -> np.ndarray:
    rows, cols = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((cols / 2, rows / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (cols, rows), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _light(image: np.ndarray, factor: float) -> np.ndarray:
    return cv2.convertScaleAbs(image, alpha=factor)


def _gray(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


# name -> (image, rng) -> (image, JPEG quality)
TRANSFORMS = {
    "resize25": lambda im, rng: (_area(im, 0.25), 90),
    "resize50": lambda im, rng: (_area(im, 0.50), 90),
    "resize90": lambda im, rng: (_area(im, 0.90), 90),
    "jpeg40": lambda im, rng: (im, 40),
    "jpeg60": lambda im, rng: (im, 60),
    "jpeg95": lambda im, rng: (im, 95),
    "crop2": lambda im, rng: (_crop(im, 0.02, rng), 90),
    "crop5": lambda im, rng: (_crop(im, 0.05, rng), 90),
    "crop10": lambda im, rng: (_crop(im, 0.10, rng), 90),
    "bright10": lambda im, rng: (_light(im, 1.10), 90),
    "bright25": lambda im, rng: (_light(im, 1.25), 90),
    "dark10": lambda im, rng: (_light(im, 0.90), 90),
    "dark25": lambda im, rng: (_light(im, 0.75), 90),
    "tilt2": lambda im, rng: (_tilt(im, float(rng.choice([-2.0, 2.0]))), 90),
    "tilt5": lambda im, rng: (_tilt(im, float(rng.choice([-5.0, 5.0]))), 90),
    "combo": lambda im, rng: (_light(_area(_crop(im, 0.05, rng), 0.5), 1.10), 60),
    "gray": lambda im, rng: (_gray(im), 90),
    "mirror": lambda im, rng: (cv2.flip(im, 1), 90),
    "crop20": lambda im, rng: (_crop(im, 0.20, rng), 90),
    "tilt10": lambda im, rng: (_tilt(im, float(rng.choice([-10.0, 10.0]))), 90),
    "heavy": lambda im, rng: (_light(_area(_tilt(_crop(im, 0.10, rng), 3.0), 0.4), 0.8), 50),
}


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def consumer_inputs(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(work, thumbnail) of encoded bytes, the way consumer/processing.py derives them."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    gray = _gray(image)
    longest = max(image.shape[:2])
    work = _area(gray, WORKING_SIZE / longest) if longest > WORKING_SIZE else gray
    thumbnail = _area(image, THUMBNAIL_SIZE / longest) if longest > THUMBNAIL_SIZE else image
    return work, thumbnail


def _with_copies(group: int, source: str, original: np.ndarray, original_bytes: bytes,
                 rng: np.random.Generator, photo: str = "") -> list[Sample]:
    samples = [Sample(group, "original", source, photo, *consumer_inputs(original_bytes))]
    for name, transform in TRANSFORMS.items():
        if name == "gray" and original.ndim == 2:
            continue  # a gray photograph's gray copy is the original re-encoded
        image, quality = transform(original, rng)
        samples.append(Sample(group, name, source, photo, *consumer_inputs(_jpeg(np.ascontiguousarray(image), quality))))
    return samples


def _png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def main_collection(synthetic: int, seed: int, bar=None) -> list[Sample]:
    """`synthetic` photo-like originals and the bundled photographs, each with its copies."""
    from fixtures.images import BUNDLED_PHOTOS, bundled_photo, photo_like_pixels

    samples: list[Sample] = []
    for i in range(synthetic):
        rng = np.random.default_rng([seed, 1, i])
        pixels = photo_like_pixels(seed * 100_003 + i)
        samples += _with_copies(i, "synthetic", pixels, _jpeg(pixels, 90), rng)
        if bar is not None:
            bar.update()
    for j, name in enumerate(BUNDLED_PHOTOS):
        rng = np.random.default_rng([seed, 2, j])
        photo = np.ascontiguousarray(bundled_photo(name))
        samples += _with_copies(synthetic + j, "real", photo, _png(photo), rng)
        if bar is not None:
            bar.update()
    return samples


def quadrant_collection(seed: int, bar=None) -> list[Sample]:
    """The four quarters of each bundled photograph as originals, each with its copies."""
    from fixtures.images import BUNDLED_PHOTOS, bundled_photo

    samples: list[Sample] = []
    group = 0
    for name in BUNDLED_PHOTOS:
        photo = bundled_photo(name)
        rows, cols = photo.shape[:2]
        for top, left in ((0, 0), (0, cols // 2), (rows // 2, 0), (rows // 2, cols // 2)):
            quarter = np.ascontiguousarray(photo[top:top + rows // 2, left:left + cols // 2])
            samples += _with_copies(group, "quadrant", quarter, _png(quarter), np.random.default_rng([seed, 3, group]),
                                    photo=name)
            group += 1
        if bar is not None:
            bar.update()
    return samples


# --- metrics -------------------------------------------------------------------------------------

def evaluate(similarity: np.ndarray, samples: list[Sample], sources: set[str]) -> dict:
    """Ranking metrics of each original's copies among all other images (module docstring)."""
    groups = np.array([s.group for s in samples])
    kinds = np.array([s.kind for s in samples])
    photos = np.array([s.photo for s in samples])
    apart = np.isin(kinds, APART)
    aps, rprecs, rrs, above, apart_above = [], [], [], [], {k: [] for k in APART}
    sibling_aps = []
    per_transform: dict[str, list[bool]] = {}
    relevant_scores, unrelated_scores = [], []
    for q, sample in enumerate(samples):
        if sample.kind != "original" or sample.source not in sources:
            continue
        scores = similarity[q]
        own = groups == sample.group
        relevant = own & ~apart & (kinds != "original")
        unrelated = ~own
        # The k-th best copy's rank: k plus the unrelated images above it, ties counted half
        # (ties among copies change nothing; pHash's integer scores tie a lot).
        others = np.sort(scores[unrelated])
        rel = np.sort(scores[relevant])[::-1]
        above_it = len(others) - np.searchsorted(others, rel, side="right")
        tied = np.searchsorted(others, rel, side="right") - np.searchsorted(others, rel, side="left")
        ranks = np.arange(1, len(rel) + 1) + above_it + tied / 2
        aps.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
        rprecs.append(float(np.mean(ranks <= len(ranks))))
        rrs.append(float(1 / ranks[0]))
        best_unrelated = scores[unrelated].max()
        above.extend((rel > best_unrelated).tolist())
        for index in np.flatnonzero(relevant):
            per_transform.setdefault(kinds[index], []).append(bool(scores[index] > best_unrelated))
        for kind in APART:
            index = np.flatnonzero(own & (kinds == kind))
            if len(index):
                apart_above[kind].append(bool(scores[index[0]] > best_unrelated))
        if sample.photo:
            sibling_aps.append(_sibling_ap(scores, kinds == "original", photos, sample))
        relevant_scores.append(rel)
        unrelated_scores.append(scores[unrelated])
    relevant_all, unrelated_all = np.concatenate(relevant_scores), np.concatenate(unrelated_scores)
    threshold = np.quantile(unrelated_all, 1 - FPR)
    result = {"queries": len(aps), "mAP": np.mean(aps), "R-prec": np.mean(rprecs), "MRR": np.mean(rrs),
              "above": np.mean(above), "@fpr": float(np.mean(relevant_all > threshold)),
              **{k: np.mean(v) if v else float("nan") for k, v in apart_above.items()},
              "look-alike": np.mean(sibling_aps) if sibling_aps else float("nan"),
              # The score cut-off behind @fpr, and the score 99% of the copies reach.
              "threshold@fpr": float(threshold), "copy_p1": float(np.quantile(relevant_all, 0.01)),
              "per_transform": {k: float(np.mean(v)) for k, v in per_transform.items()}}
    return {k: (round(float(v), 4) if isinstance(v, (float, np.floating)) else v) for k, v in result.items()}


def _sibling_ap(scores: np.ndarray, originals: np.ndarray, photos: np.ndarray, query: Sample) -> float:
    """Average precision of the other quarters of the query's photograph among the originals
    of the other photographs: a proxy for "looks alike" (same scene, not the same pixels)."""
    same_photo = originals & (photos == query.photo)
    siblings = np.sort(scores[same_photo])[::-1][1:]  # the best one is the query itself
    others = np.sort(scores[originals & (photos != query.photo)])
    right = np.searchsorted(others, siblings, side="right")
    ranks = np.arange(1, len(siblings) + 1) + len(others) - right + (right - np.searchsorted(others, siblings)) / 2
    return float(np.mean(np.arange(1, len(siblings) + 1) / ranks))


def phash_bits(work: np.ndarray) -> np.ndarray:
    from consumer.processing import phash

    return np.unpackbits(np.frombuffer(bytes.fromhex(phash(work)), np.uint8))


def phash_similarity(samples: list[Sample]) -> np.ndarray:
    bits = np.stack([phash_bits(s.work) for s in samples]).astype(np.float32)
    hamming = bits @ (1 - bits).T + (1 - bits) @ bits.T
    return 64 - hamming


def vectors(describe, samples: list[Sample]) -> np.ndarray:
    matrix = np.stack([np.asarray(describe(s.work, s.thumbnail), np.float32).ravel() for s in samples])
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1)


def microseconds(describe, samples: list[Sample], passes: int = 5) -> float:
    best = float("inf")
    for _ in range(passes):
        started = time.perf_counter()
        for s in samples:
            describe(s.work, s.thumbnail)
        best = min(best, time.perf_counter() - started)
    return best / len(samples) * 1e6


# --- the script ------------------------------------------------------------------------------

COLUMNS = ("dims", "us", "mAP", "R-prec", "MRR", "above", "@fpr", *APART, "look-alike")
HARD = ("resize25", "jpeg40", "crop10", "bright25", "dark25", "tilt5", "combo")


def build_parser():
    p = cli.parser("python -m bench.descriptor", __doc__, [
        "python -m bench.descriptor                       # 120 photo-like originals + 17 photos, ~3 min",
        "python -m bench.descriptor --synthetic 20 --only consumer.descriptor --only pHash",
        "python -m bench.descriptor --markdown --json out/descriptor.json"])
    p.add_argument("--synthetic", type=int, default=120, help="photo-like originals (each with its copies)")
    p.add_argument("--seed", type=int, default=0, help="seed of the collection")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="measure only candidates whose name starts with NAME (repeatable; 'pHash' for the baseline)")
    p.add_argument("--no-quadrants", action="store_true", help="skip the quadrant collection")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write every number here")
    return p


def _rows(named_similarities, samples, sources, costs, dims):
    rows, detail = [], {}
    for name, similarity in named_similarities:
        metrics = evaluate(similarity, samples, sources)
        detail[name] = metrics
        rows.append([name, dims[name], round(costs[name]) if costs[name] else ""]
                    + [metrics[c] for c in COLUMNS[2:]] + [metrics["per_transform"].get(h, "") for h in HARD])
    return rows, detail


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.synthetic < 2:
        print("error: --synthetic must be at least 2", file=sys.stderr)
        return cli.EXIT_USAGE
    from tabulate import tabulate

    from bench.descriptor_candidates import candidates

    cv2.setNumThreads(1)
    zoo = {"pHash (64 bits, Hamming)": None, **candidates()}
    if args.only:
        zoo = {k: v for k, v in zoo.items() if any(k.startswith(o) for o in args.only)}
        if not zoo:
            print(f"error: no candidate starts with {args.only}", file=sys.stderr)
            return cli.EXIT_USAGE
    bar = cli.progress(args.synthetic + 34, "building collections", unit="original")
    collections = {"main": main_collection(args.synthetic, args.seed, bar)}
    if not args.no_quadrants:
        collections["quadrants"] = quadrant_collection(args.seed, bar)
    bar.close()
    timing_set = collections["main"][:: max(1, len(collections["main"]) // 300)]
    costs, dims, similarities = {}, {}, {c: [] for c in collections}
    for name, describe in zoo.items():
        if describe is None:
            costs[name] = microseconds(lambda w, t: phash_bits(w), timing_set)
            dims[name] = "64 bits"
            for cname, samples in collections.items():
                similarities[cname].append((name, phash_similarity(samples)))
            continue
        costs[name] = microseconds(describe, timing_set)
        for cname, samples in collections.items():
            matrix = vectors(describe, samples)
            dims[name] = matrix.shape[1]
            similarities[cname].append((name, matrix @ matrix.T))
    report = {}
    headers = ["descriptor", *COLUMNS] + [f"above:{h}" for h in HARD]
    tablefmt = "github" if args.markdown else "simple"
    for title, cname, sources in (("photo-like originals", "main", {"synthetic"}),
                                  ("bundled photographs", "main", {"real"}),
                                  ("quadrants of the photographs (hard negatives)", "quadrants", {"quadrant"})):
        if cname not in collections:
            continue
        samples = collections[cname]
        rows, detail = _rows(similarities[cname], samples, sources, costs, dims)
        queries = next(iter(detail.values()))["queries"]
        print(f"\n{title}: {queries} queries among {len(samples)} images\n")
        print(tabulate(rows, headers, tablefmt=tablefmt, floatfmt=".3f"))
        report[title] = detail
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"costs_us": costs, "dims": dims, "results": report}, indent=1))
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
