"""Write or upload a deterministic demo corpus: CAPTCHAs, real photographs, odd formats,
awkward key names and a few broken files.

Everything is made offline from what the pinned packages bundle (the `captcha` package's font,
scikit-image's photographs), so one seed gives byte-identical files on every machine with the
same requirements.txt. Folders: captcha/ (200x50 distorted text, file name = the text, like the
Kaggle CAPTCHA set), photos/ (crops, rescales up to 12 MP, rotations, flips, JPEG qualities;
photos/astronaut/ has a detectable face), misc/ (GIF, BMP, TIFF, CMYK and EXIF-rotated JPEG,
16-bit and alpha PNG, and keys with spaces, unicode, + % # ; & = , quotes), broken/ (files the
consumer must dead-letter).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import mimetypes
import random
import sys
import threading
import zlib
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from fixtures.images import BUNDLED_PHOTOS, bundled_photo, jpeg, pil_bytes, png, png_declaring, to_pil, webp
from fixtures.keys import FILE_SAFE_AWKWARD_KEYS

log = logging.getLogger("demo.corpus")

Item = tuple[str, bytes]

CAPTCHA_ALPHABET = "2345678bcdefgmnpwxy"  # the 19 symbols of the Kaggle CAPTCHA set
CAPTCHA_LENGTH = 5
CAPTCHA_SIZE = (200, 50)

# Where the face is in the 512x512 astronaut (x0, y0, x1, y1): face crops must keep it whole.
ASTRONAUT_FACE = (177, 66, 272, 161)
# Camera-like sizes for the "several megapixels" tier.
LARGE_SIZES = ((3000, 2000), (2000, 3000), (4000, 3000), (3840, 2160), (2592, 1944), (3264, 2448))

# Stream numbers keep the random draws of each folder independent of the others' counts.
_STREAMS = {"captcha": 1, "photos": 2, "misc": 3, "names": 4, "broken": 5, "dupes": 6}
# dupes/: a few photos, each with copies the duplicates job must group with it: an exact byte
# copy, a resized one, a re-encoded one and a brightened one.
DUPLICATE_SOURCES = ("coffee", "rocket", "chelsea")
DUPLICATE_KINDS = ("original", "exact-copy", "resized", "re-encoded", "brighter")
DUPLICATE_COUNT = len(DUPLICATE_SOURCES) * len(DUPLICATE_KINDS)


def build_corpus(count: int = 300, seed: int = 0, *,
                 on_item: Callable[[], None] | None = None) -> list[Item]:
    """(key relative to the raw prefix, bytes) for `count` files, the same bytes for the same seed.

    The awkward names and broken files are always there, plus at least one CAPTCHA, one photo
    with a face and one misc file, so a very small count returns a few more files than asked.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if seed < 0:
        raise ValueError(f"seed must be 0 or more, got {seed}")
    filler = max(count - len(FILE_SAFE_AWKWARD_KEYS) - len(BROKEN_FILES) - DUPLICATE_COUNT, 3)
    n_photos = max(1, round(filler * 0.45))
    n_misc = max(1, round(filler * 0.15))
    n_captcha = filler - n_photos - n_misc

    def tick(item: Item) -> Item:
        if on_item:
            on_item()
        return item

    used_texts: set[str] = set()
    items = [tick(_captcha_item(seed, i, used_texts)) for i in range(n_captcha)]
    items += [tick(_photo_item(seed, i)) for i in range(n_photos)]
    items += [tick(_misc_item(seed, i)) for i in range(n_misc)]
    items += [tick((key, _awkward_content(seed, i, key))) for i, key in enumerate(FILE_SAFE_AWKWARD_KEYS)]
    items += [tick((key, make(seed))) for key, make in BROKEN_FILES.items()]
    items += [tick(item) for item in _planted_duplicates(seed)]
    duplicates = [k for k, n in Counter(k for k, _ in items).items() if n > 1]
    if duplicates:  # a second object under one key would silently replace the first
        raise RuntimeError(f"corpus keys must be unique: {duplicates[:5]}")
    return items


def sniff_format(data: bytes) -> str:
    """The format the consumer will see (jpeg, png, webp, gif, bmp, tiff), else empty/other."""
    from consumer.imageguard import sniff_format as consumer_sniff

    return consumer_sniff(data) or ("empty" if not data else "other")


def corpus_summary(items: Iterable[Item]) -> dict:
    """Counts per top folder and per sniffed format, total and per-folder bytes."""
    by_folder: Counter = Counter()
    bytes_by_folder: Counter = Counter()
    by_format: Counter = Counter()
    count = total = 0
    for key, data in items:
        folder = key.split("/", 1)[0] if "/" in key else ""
        by_folder[folder] += 1
        bytes_by_folder[folder] += len(data)
        by_format[sniff_format(data)] += 1
        count += 1
        total += len(data)
    return {"count": count, "total_bytes": total, "by_folder": dict(sorted(by_folder.items())),
            "bytes_by_folder": dict(sorted(bytes_by_folder.items())),
            "by_format": dict(by_format.most_common())}


def write_corpus(out_dir: Path, items: Iterable[Item]) -> int:
    """Write each item to out_dir/<key>; returns the number of files written."""
    root = Path(out_dir).resolve()
    written = 0
    for key, data in items:
        path = (root / key).resolve()
        if root not in path.parents:  # a key is a name, never a way out of the folder
            raise ValueError(f"key {key!r} points outside {root}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written += 1
    return written


def upload_corpus(settings, items: Iterable[Item], prefix: str | None = None, *, workers: int = 16,
                  on_item: Callable[[], None] | None = None) -> int:
    """Put each item at s3://<settings.s3_bucket>/<prefix><key> (prefix defaults to
    settings.s3_raw_prefix) from a thread pool; returns the number of objects uploaded."""
    from imgpipe import s3
    from imgpipe.errors import UserError

    prefix = settings.s3_raw_prefix if prefix is None else prefix
    objects = ((prefix + key, data, mimetypes.guess_type(key)[0] or "application/octet-stream") for key, data in items)
    try:
        return s3.put_many(s3.client(settings), settings.s3_bucket, objects, workers=workers, on_item=on_item)
    except s3.S3Error as exc:
        if exc.missing_bucket:
            raise UserError(f"bucket {settings.s3_bucket!r} does not exist (`make up` creates it)") from None
        raise


# --- CAPTCHAs ---------------------------------------------------------------------------

_captcha_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _captcha_generator():
    from captcha.image import ImageCaptcha

    # Smaller glyphs than the package default (42-56 px) so five of them fit a 50 px high image.
    return ImageCaptcha(width=CAPTCHA_SIZE[0], height=CAPTCHA_SIZE[1], font_sizes=(34, 38, 42))


class _SeededSecrets:
    """The three `secrets` functions captcha.image calls, drawn from a seeded generator."""

    def __init__(self, rng: random.Random):
        self._rng = rng

    def randbelow(self, n: int) -> int:
        return self._rng.randrange(n)

    def randbits(self, k: int) -> int:
        return self._rng.getrandbits(k)

    def choice(self, seq):
        return self._rng.choice(seq)


@contextlib.contextmanager
def _seeded_captcha(rng: random.Random):
    # captcha 0.7 draws from the `secrets` module, which cannot be seeded; a demo corpus must be
    # reproducible, so its module-level `secrets` is swapped for a seeded one while we draw.
    import captcha.image

    with _captcha_lock:
        original = captcha.image.secrets
        captcha.image.secrets = _SeededSecrets(rng)
        try:
            yield _captcha_generator()
        finally:
            captcha.image.secrets = original


def _captcha_item(seed: int, i: int, used: set[str]) -> Item:
    rng = random.Random(f"captcha:{seed}:{i}")
    text = "".join(rng.choice(CAPTCHA_ALPHABET) for _ in range(CAPTCHA_LENGTH))
    while text in used:  # the file name is the text, so texts must not repeat
        text = "".join(rng.choice(CAPTCHA_ALPHABET) for _ in range(CAPTCHA_LENGTH))
    used.add(text)
    with _seeded_captcha(rng) as generator:
        image = generator.generate_image(text)
    if rng.random() < 0.2:
        return f"captcha/{text}.jpg", pil_bytes(image, "JPEG", quality=rng.choice((75, 90)))
    return f"captcha/{text}.png", pil_bytes(image, "PNG")


# --- photographs -----------------------------------------------------------------------

def _rng(seed: int, stream: str, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream], i])


def _crop_box(rng: np.random.Generator, w: int, h: int, aspect: float | None,
              keep: tuple[int, int, int, int] | None = None) -> tuple[int, int, int, int]:
    """A random crop (x0, y0, x1, y1) of the given aspect ratio, keeping box `keep` whole."""
    if aspect is None:
        aspect = (w * rng.uniform(0.5, 1.0)) / (h * rng.uniform(0.5, 1.0))
    widest = min(w, h * aspect)
    low = 0.55
    if keep:
        kw, kh = keep[2] - keep[0], keep[3] - keep[1]
        low = max(low, 1.5 * kw / widest, 1.5 * kh * aspect / widest)
    cw = max(1, min(w, round(widest * rng.uniform(min(low, 1.0), 1.0))))
    ch = max(1, min(h, round(cw / aspect)))
    if keep:
        x_lo, x_hi = max(0, keep[2] - cw), min(keep[0], w - cw)
        y_lo, y_hi = max(0, keep[3] - ch), min(keep[1], h - ch)
    else:
        x_lo, x_hi, y_lo, y_hi = 0, w - cw, 0, h - ch
    x0 = int(rng.integers(x_lo, max(x_lo, x_hi) + 1))
    y0 = int(rng.integers(y_lo, max(y_lo, y_hi) + 1))
    return x0, y0, x0 + cw, y0 + ch


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    shrinking = size[0] * size[1] < image.shape[0] * image.shape[1]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def _grain(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor-like noise, so that upscaled photos are not unnaturally smooth (and small)."""
    import cv2

    h, w = image.shape[:2]
    tile = rng.integers(0, 9, size=(256, 256) + image.shape[2:], dtype=np.uint8)
    reps = (-(-h // 256), -(-w // 256)) + (1,) * (image.ndim - 2)
    noise = np.tile(tile, reps)[:h, :w]
    # Add the noise and take its mean back out: both saturate, neither wraps around.
    return cv2.subtract(cv2.add(image, noise), np.full_like(image, 4))


def _tilt(image: np.ndarray, degrees: float) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _photo_item(seed: int, i: int) -> Item:
    import cv2

    rng = _rng(seed, "photos", i)
    face = i % 5 == 0  # every fifth photo is a face crop of the astronaut
    name = "astronaut" if face else BUNDLED_PHOTOS[int(rng.integers(len(BUNDLED_PHOTOS)))]
    source = bundled_photo(name)
    h, w = source.shape[:2]
    tier = "face" if face else str(rng.choice(["tiny", "small", "medium", "large"], p=[0.08, 0.35, 0.45, 0.12]))
    if tier == "large":
        size = LARGE_SIZES[int(rng.integers(len(LARGE_SIZES)))]
        aspect: float | None = size[0] / size[1]
    else:
        aspect = (1.0, 4 / 3, 3 / 2, 16 / 9, 3 / 4, 2 / 3, None)[int(rng.integers(7))]
    x0, y0, x1, y1 = _crop_box(rng, w, h, aspect, keep=ASTRONAUT_FACE if face else None)
    image = source[y0:y1, x0:x1]
    cw, ch = x1 - x0, y1 - y0
    if tier == "large":
        scale = size[0] / cw
    elif tier == "face":  # a face of 70-300 px: big enough for the Haar cascade to find
        scale = rng.uniform(70, 300) / (ASTRONAUT_FACE[2] - ASTRONAUT_FACE[0])
    elif tier == "tiny":
        scale = rng.uniform(32, 64) / min(cw, ch)
    else:
        low, high = (120, 600) if tier == "small" else (640, 1920)
        scale = rng.uniform(low, high) / max(cw, ch)
    image = _resize(image, size if tier == "large" else (max(1, round(cw * scale)), max(1, round(ch * scale))))
    if scale > 1.5:
        image = _grain(image, rng)
    if rng.random() < 0.3:
        image = cv2.flip(image, 1)
    if not face:  # a frontal-face cascade does not find rotated faces: keep face crops upright
        turn = rng.random()
        if turn < 0.12:
            image = cv2.rotate(image, (cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180,
                                       cv2.ROTATE_90_COUNTERCLOCKWISE)[int(rng.integers(3))])
        elif turn < 0.2:
            image = _tilt(image, rng.uniform(-12, 12))
    if rng.random() < 0.3:
        image = cv2.convertScaleAbs(image, alpha=rng.uniform(0.8, 1.2), beta=rng.uniform(-25, 25))
    if image.ndim == 3 and rng.random() < 0.1:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    # Camera-sized images are JPEG, as cameras write them; PNG/WebP encoders are slow there.
    big = image.shape[0] * image.shape[1] > 2_500_000
    fmt = "jpeg" if big else str(rng.choice(["jpeg", "png", "webp"], p=[0.65, 0.15, 0.2]))
    if fmt == "jpeg":
        ext = str(rng.choice(["jpg", "jpeg", "JPG"], p=[0.8, 0.1, 0.1]))
        data = jpeg(image, int(rng.choice([40, 60, 75, 85, 92, 95])), progressive=rng.random() < 0.2)
    elif fmt == "png":
        ext, data = "png", png(image)
    else:
        ext, data = "webp", webp(image, int(rng.choice([50, 75, 90, 101])))
    return f"photos/{name}/{name}_{i:04d}.{ext}", data


# --- misc: other formats and odd images -------------------------------------------------

def _small_photo(rng: np.random.Generator, long_side: tuple[int, int] = (160, 480)) -> np.ndarray:
    """A random crop of a random bundled photo, BGR, long side within `long_side`."""
    import cv2

    source = bundled_photo(BUNDLED_PHOTOS[int(rng.integers(len(BUNDLED_PHOTOS)))])
    if source.ndim == 2:
        source = cv2.cvtColor(source, cv2.COLOR_GRAY2BGR)
    x0, y0, x1, y1 = _crop_box(rng, source.shape[1], source.shape[0], None)
    scale = rng.uniform(*long_side) / max(x1 - x0, y1 - y0)
    return _resize(source[y0:y1, x0:x1], (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))))


def _gradient(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A BGRA diagonal colour gradient whose alpha fades from opaque to transparent."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xs / max(w - 1, 1) + ys / max(h - 1, 1)) / 2
    start, end = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    bgr = start[None, None, :] * (1 - t[..., None]) + end[None, None, :] * t[..., None]
    alpha = 255 * (1 - xs / max(w - 1, 1))
    return np.dstack([bgr, alpha]).astype(np.uint8)


def _screenshot(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Flat colours, boxes and text: the kind of image a phone's screenshot folder holds."""
    import cv2

    image = np.full((h, w, 3), 245, np.uint8)
    y = 20
    while y < h - 40:
        colour = tuple(int(c) for c in rng.integers(0, 200, 3))
        if rng.random() < 0.3:
            cv2.rectangle(image, (20, y), (w - 20, y + 60), colour, -1)
            y += 80
        else:
            cv2.putText(image, "".join(rng.choice(list("abcdefghij klmnop")) for _ in range(18)),
                        (20, y + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, colour, 1, cv2.LINE_AA)
            y += 32
    return image


def _misc_item(seed: int, i: int) -> Item:
    import cv2
    from PIL import Image

    rng = _rng(seed, "misc", i)
    kind = _MISC_KINDS[i % len(_MISC_KINDS)]
    if kind == "gradient-alpha":
        ext, data = "png", png(_gradient(rng, int(rng.integers(200, 800)), int(rng.integers(200, 800))))
    elif kind == "icon":
        ext, data = "png", png(_resize(_small_photo(rng), (32, 32)))
    elif kind == "palette":
        ext, data = "gif", pil_bytes(to_pil(_small_photo(rng)).quantize(int(rng.choice([16, 64, 256]))), "GIF")
    elif kind == "animated":
        frames = [to_pil(_small_photo(rng, (120, 200))).resize((160, 120)).quantize(64) for _ in range(3)]
        ext, data = "gif", pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:],
                                      duration=200, loop=0)
    elif kind == "bitmap":
        ext, data = "bmp", pil_bytes(to_pil(_small_photo(rng)), "BMP")
    elif kind == "scan":
        page = _resize(bundled_photo(str(rng.choice(["page", "text"]))), (int(rng.integers(800, 1200)), 600))
        ext, data = "tif", pil_bytes(to_pil(page), "TIFF", compression="tiff_lzw")
    elif kind == "cmyk":
        ext, data = "jpg", pil_bytes(to_pil(_small_photo(rng)).convert("CMYK"), "JPEG", quality=88)
    elif kind == "exif-rotated":
        # Stored sideways with EXIF Orientation 6 ("rotate 90° clockwise to display"), as phones do.
        exif = Image.Exif()
        exif[0x0112] = 6
        stored = cv2.rotate(_small_photo(rng, (400, 800)), cv2.ROTATE_90_COUNTERCLOCKWISE)
        ext, data = "jpg", pil_bytes(to_pil(stored), "JPEG", quality=90, exif=exif.tobytes())
    elif kind == "16bit":
        gray = bundled_photo(str(rng.choice(["moon", "camera", "coins"])))
        ext, data = "png", png(gray.astype(np.uint16) * 257)
    elif kind == "panorama":
        strip = _small_photo(rng, (500, 512))
        ext, data = "jpg", jpeg(_grain(_resize(strip, (4000, 500)), rng), 85)
    elif kind == "screenshot":
        ext, data = "png", png(_screenshot(rng, int(rng.integers(360, 480)), int(rng.integers(1600, 2400))))
    elif kind == "solid":
        colour = rng.integers(0, 256, 3).astype(np.uint8)
        ext, data = "png", png(np.broadcast_to(colour, (480, 640, 3)).copy())
    elif kind == "tiny-jpeg":
        ext, data = "jpg", jpeg(_resize(_small_photo(rng), (32, 32)), 80)
    elif kind == "lossless-webp":
        ext, data = "webp", webp(_small_photo(rng), 101)
    else:  # "gray-jpeg"
        ext, data = "jpg", jpeg(cv2.cvtColor(_small_photo(rng, (400, 1000)), cv2.COLOR_BGR2GRAY), 80)
    return f"misc/{kind}-{i:03d}.{ext}", data


_MISC_KINDS = ("gradient-alpha", "icon", "palette", "animated", "bitmap", "scan", "cmyk", "exif-rotated",
               "16bit", "panorama", "screenshot", "solid", "tiny-jpeg", "lossless-webp", "gray-jpeg")


def _awkward_content(seed: int, i: int, key: str) -> bytes:
    image = _small_photo(_rng(seed, "names", i))
    ext = key.rsplit(".", 1)[-1].lower()
    if ext == "png" and "jpeg" not in key:
        return png(image)
    if ext == "webp":
        return webp(image, 80)
    return jpeg(image, 85)


# --- planted duplicates: the duplicates job's groups in the demo -----------------------------

def _planted_duplicates(seed: int) -> list[Item]:
    import cv2

    items = []
    for i, name in enumerate(DUPLICATE_SOURCES):
        rng = _rng(seed, "dupes", i)
        photo = bundled_photo(name)
        x0, y0, x1, y1 = _crop_box(rng, photo.shape[1], photo.shape[0], 4 / 3)
        image = _resize(photo[y0:y1, x0:x1], (800, 600))
        original = jpeg(image, 90)
        copies = {"original": original, "exact-copy": original,
                  "resized": jpeg(_resize(image, (480, 360)), 85),
                  "re-encoded": jpeg(image, 55),
                  "brighter": jpeg(cv2.convertScaleAbs(image, alpha=1.0, beta=18), 90)}
        items += [(f"dupes/{name}-{kind}.jpg", data) for kind, data in copies.items()]
    return items


# --- broken files: each must end in the dead-letter topic ------------------------------

def _truncated_jpeg(seed: int) -> bytes:
    data = jpeg(_small_photo(_rng(seed, "broken", 1)), 85)
    return data[: len(data) // 2]


def _truncated_png(seed: int) -> bytes:
    data = png(_small_photo(_rng(seed, "broken", 2)))
    return data[: len(data) // 3]


def _bomb_png(seed: int) -> bytes:
    # A valid header declaring 30000x30000 RGB (2.7 GB decoded); the data is a few rows of zeros.
    return png_declaring(30000, 30000, zlib.compress(b"\x00" * (1 + 30000 * 3) * 4, 9))


BROKEN_FILES: dict[str, Callable[[int], bytes]] = {
    "broken/empty.jpg": lambda seed: b"",
    "broken/truncated.jpg": _truncated_jpeg,
    "broken/truncated.png": _truncated_png,
    "broken/not-an-image.jpg": lambda seed: b"<html><body><h1>404 Not Found</h1></body></html>\n",
    "broken/decompression-bomb.png": _bomb_png,
    "broken/random-bytes.png": lambda seed: _rng(seed, "broken", 3).bytes(4096),
    "broken/header-only.gif": lambda seed: b"GIF89a",
}


# --- command line ----------------------------------------------------------------------

def _print_summary(summary: dict) -> None:
    from tabulate import tabulate

    rows = [(folder, n, f"{summary['bytes_by_folder'][folder] / 1e6:.1f}") for folder, n in summary["by_folder"].items()]
    print(tabulate(rows, headers=["folder", "files", "MB"]))
    print()
    print(tabulate(sorted(summary["by_format"].items()), headers=["format", "files"]))
    print(f"\n{summary['count']} files, {summary['total_bytes'] / 1e6:.1f} MB")


def main(argv: list[str] | None = None) -> int:
    from imgpipe import cli
    from imgpipe.errors import UserError

    p = cli.parser("python -m demo.corpus", __doc__, [
        "python -m demo.corpus --out out/corpus                 # 300 files into a folder to look at",
        "python -m demo.corpus --out /tmp/c --count 1000 --seed 7",
        "python -m demo.corpus --upload                         # into s3://$S3_BUCKET/$S3_RAW_PREFIX",
        "python -m demo.corpus --upload --prefix raw/demo2/ --count 50"])
    p.add_argument("--out", type=Path, help="write the files under this folder, keys as paths (on macOS "
                                            "the NFC and NFD 'café' keys land in one file)")
    p.add_argument("--count", type=int, default=300, help="how many files (a few more for very small counts)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default: %(default)s)")
    p.add_argument("--upload", action="store_true",
                   help="put the files into S3 (env S3_ENDPOINT_URL, S3_BUCKET, AWS_* credentials)")
    p.add_argument("--prefix", help="key prefix in the bucket for --upload (env S3_RAW_PREFIX)")
    p.add_argument("--progress", action="store_true", default=None, help="force a progress bar "
                   "(default: when stderr is a terminal)")
    args = p.parse_args(argv)
    cli.setup_logging()

    def body() -> int:
        if args.out is None and not args.upload:
            raise UserError("nothing to do: give --out DIR, --upload, or both")
        cli.check_ranges(args, {"count": (1, None), "seed": (0, None)})
        settings = None
        if args.upload:  # read settings first: a bad .env fails before the corpus is built
            from imgpipe.settings import load_settings

            settings = load_settings()
        with cli.progress(args.count, "generating", unit="file", enabled=args.progress) as bar:
            items = build_corpus(args.count, args.seed, on_item=lambda: bar.update(1))
        if args.out is not None:
            try:
                written = write_corpus(args.out, items)
            except OSError as exc:
                raise UserError(f"cannot write to {args.out}: {exc.strerror or exc}") from None
            log.info("wrote %d files under %s", written, args.out)
        if settings is not None:
            prefix = settings.s3_raw_prefix if args.prefix is None else args.prefix
            with cli.progress(len(items), "uploading", unit="file", enabled=args.progress) as bar:
                uploaded = upload_corpus(settings, items, prefix, on_item=lambda: bar.update(1))
            log.info("uploaded %d files to s3://%s/%s", uploaded, settings.s3_bucket, prefix)
        _print_summary(corpus_summary(items))
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())


# --- scans: documents whose words are only inside the image, for the enricher's text search ------
# The word the demo searches for: in no file name, key or other field, only in a scan's pixels.
SCAN_WORD = "zebrafish"
SCANS = {
    "scans/receipt-0001.png": ("AQUARIUM SUPPLIES LTD", "Invoice 4711", "Zebrafish food 2 x 4.50",
                               "Total 9.00 EUR", "Thank you for your order"),
    "scans/notice-0002.png": ("MEETING NOTICE", "Quarterly report review", "Room 3, Thursday 10:00"),
}


def scan_items() -> list[Item]:
    """A receipt and a notice, printed in DejaVu Sans (fonts-dejavu-core) on a slightly grey page."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 30)
    items = []
    for key, lines in SCANS.items():
        page = Image.new("RGB", (760, 110 + 60 * len(lines)), (244, 242, 236))
        draw = ImageDraw.Draw(page)
        for row, line in enumerate(lines):
            draw.text((50, 50 + 60 * row), line, font=font, fill=(25, 25, 30))
        buffer = io.BytesIO()
        page.save(buffer, format="PNG")
        items.append((key, buffer.getvalue()))
    return items
