"""The enrichment models, measured: the face table (the old Haar cascade against YuNet at the
sizes considered), the OCR character error rate on generated text and on the demo's CAPTCHAs,
and the enricher's throughput per model against the core consumer's processing.

Faces. Composites generated from the bundled photographs: the astronaut's face (skimage, the
demo corpus's face) cut with a margin, pasted at a known box into face-free photos (crops and
rescales of the other bundled photographs, 640x480), from 24 px wide to the full frame,
rotated by up to 8 degrees, darkened to 45-100 %. Found = a detection whose IoU with the box is
at least 0.3. False faces: detections on face-free images (crops of the same photographs),
per 1,000 images. CPU per image: one thread, detection only (the decode is shared with the
text model). YuNet reads what the enricher could fetch: the 256 px thumbnail, the 640 px
grayscale derived image, or the original. Haar runs as the core consumer ran it: 320 px working image, min face 28 px, 5
neighbours, scale factor 1.1.

Text. Strings of words and digits drawn in DejaVu Sans, Serif, Sans Mono and Pillow's default
font at 12-96 px, each also rotated by 2-4 degrees, with noise, and light on dark; CER = edit
distance / length, whitespace runs counted as one space. The demo's CAPTCHAs (file name = the
text, 200x50, distorted on purpose) are reported apart: they are made to defeat OCR.

    python -m bench.enrichment                 # the tables, printed
    python -m bench.enrichment --markdown      # the face table for the README
"""
from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from bench.figures import Figure

# One thread for every model: the enricher's workers run one each (OMP: yuface's libgomp).
os.environ.setdefault("OMP_NUM_THREADS", "1")

FACE_SIZES_PX = (24, 32, 40, 64, 96, 160, 0)  # 0: the full frame
THUMBNAIL_SIZE = 256
CANVAS = (640, 480)
IOU_FOUND = 0.3
ASTRONAUT_FACE = (177, 66, 272, 161)  # demo/corpus.py's: the face in the 512x512 astronaut
BACKGROUNDS = ("coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "brick",
               "grass", "gravel", "moon", "coins", "chelsea")
FONTS = {"DejaVuSans": "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
         "DejaVuSerif": "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
         "DejaVuSansMono": "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
         "Pillow default": None}
TEXT_SIZES = (12, 16, 24, 36, 48, 72, 96)
TEXT_VARIANTS = ("plain", "rotated", "noise", "light on dark")
WORDS = ("invoice", "total", "receipt", "delivery", "station", "account", "number", "quarterly", "report",
         "meeting", "agenda", "payment", "address", "street", "market", "coffee", "summer", "ticket", "order",
         "customer", "service", "garden", "harbour", "welcome", "exit", "platform", "window", "kitchen")


@dataclass(frozen=True)
class Sizes:
    composites_per_size: int = 20
    face_free: int = 300
    text_strings: int = 1  # per font x size x variant
    captchas: int = 20
    throughput_images: int = 20


QUICK_SIZES = Sizes(composites_per_size=3, face_free=20, captchas=4, throughput_images=4)


# --- faces ------------------------------------------------------------------------------------
def _bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    return np.ascontiguousarray(image[:, :, :3][:, :, ::-1])


def _photo(name: str) -> np.ndarray:
    import skimage.data

    return _bgr(getattr(skimage.data, name)())


def face_free_images(count: int, rng: random.Random) -> list[np.ndarray]:
    """Crops (30-100 % of a side) of the face-free bundled photographs, resized to CANVAS."""
    import cv2

    photos = [_photo(name) for name in BACKGROUNDS]
    images = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        share = rng.uniform(0.3, 1.0)
        cw, ch = max(32, int(w * share)), max(32, int(h * share))
        x, y = rng.randrange(0, w - cw + 1), rng.randrange(0, h - ch + 1)
        crop = photo[y:y + ch, x:x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        images.append(cv2.resize(crop, CANVAS, interpolation=cv2.INTER_AREA))
    return images


@dataclass
class Composite:
    image: np.ndarray
    box: tuple[float, float, float, float]  # x, y, w, h in pixels of the image
    face_px: int  # the face's width in the image


def composite(background: np.ndarray, face_px: int, rng: random.Random) -> Composite:
    """The astronaut's face, `face_px` wide (0: the full frame), pasted into `background`."""
    import cv2

    requested = face_px
    astronaut = _photo("astronaut")
    x0, y0, x1, y1 = ASTRONAUT_FACE
    face_w = x1 - x0
    margin = int(face_w * 0.45)  # forehead, hair and chin: what a face looks like in a photo
    cx0, cy0 = max(0, x0 - margin), max(0, y0 - margin)
    cx1, cy1 = min(512, x1 + margin), min(512, y1 + margin)
    crop = astronaut[cy0:cy1, cx0:cx1]
    canvas_w, canvas_h = CANVAS
    if face_px == 0:  # full frame: the crop fills the canvas's height
        face_px = int(face_w * canvas_h / crop.shape[0])
    scale = face_px / face_w
    crop = cv2.resize(crop, (max(2, round(crop.shape[1] * scale)), max(2, round(crop.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    angle = rng.uniform(-8, 8)
    centre = (crop.shape[1] / 2, crop.shape[0] / 2)
    crop = cv2.warpAffine(crop, cv2.getRotationMatrix2D(centre, angle, 1.0), (crop.shape[1], crop.shape[0]),
                          borderMode=cv2.BORDER_REFLECT)
    crop = np.clip(crop.astype(np.float32) * rng.uniform(0.45, 1.0), 0, 255).astype(np.uint8)
    image = background.copy()
    ch, cw = min(crop.shape[0], canvas_h), min(crop.shape[1], canvas_w)
    px, py = rng.randrange(0, canvas_w - cw + 1), rng.randrange(0, canvas_h - ch + 1)
    image[py:py + ch, px:px + cw] = crop[:ch, :cw]
    fx, fy = px + (x0 - cx0) * scale, py + (y0 - cy0) * scale
    return Composite(image, (fx, fy, face_w * scale, face_w * scale), requested)


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


class Haar:
    """The old detector, as consumer/processing.py ran it until the enricher replaced it."""

    SIZE, MIN_FACE, NEIGHBOURS, SCALE = 320, 28, 5, 1.1

    def __init__(self):
        import cv2

        cv2.setNumThreads(1)
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

    def __call__(self, image: np.ndarray) -> list[tuple[float, float, float, float]]:
        """Boxes as fractions of the image."""
        import cv2

        from enricher.faces import fit_longest

        gray = cv2.cvtColor(fit_longest(image, self.SIZE), cv2.COLOR_BGR2GRAY)
        h, w = gray.shape
        found = self.cascade.detectMultiScale(gray, scaleFactor=self.SCALE, minNeighbors=self.NEIGHBOURS,
                                              minSize=(self.MIN_FACE, self.MIN_FACE))
        return [(x / w, y / h, bw / w, bh / h) for x, y, bw, bh in (found if len(found) else [])]


def yunet(size: int, source: str):
    """YuNet at `size` px reading `source`: the 256 px thumbnail, the 640 px grayscale derived
    image, or the original (what the enricher can fetch)."""
    import cv2

    from enricher.faces import detect_faces, fit_longest

    def run(image: np.ndarray):
        if source == "thumbnail":
            image = fit_longest(image, THUMBNAIL_SIZE)
        elif source == "grayscale":
            image = cv2.cvtColor(fit_longest(image, 640), cv2.COLOR_BGR2GRAY)
        return [(f.x, f.y, f.w, f.h) for f in detect_faces(image, size=size)]

    return run


# (size, source) of the YuNet rows; CHOSEN is the enricher's (enricher/faces.py FACE_SIZE).
YUNET_ROWS = ((160, "thumbnail"), (240, "thumbnail"), (320, "grayscale"), (320, "original"), (480, "original"))
CHOSEN = "YuNet 320 px (original)"


@dataclass
class DetectorRow:
    name: str
    found: dict = field(default_factory=dict)  # face size -> (found, total)
    false_faces: int = 0
    face_free: int = 0
    cpu_seconds: float = 0.0
    images: int = 0

    def recall(self, at_least_px: int = 40) -> float:
        found = sum(f for size, (f, _) in self.found.items() if size == 0 or size >= at_least_px)
        total = sum(t for size, (_, t) in self.found.items() if size == 0 or size >= at_least_px)
        return found / total if total else 0.0

    @property
    def false_per_1000(self) -> float:
        return 1000 * self.false_faces / self.face_free if self.face_free else 0.0

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu_seconds / self.images if self.images else 0.0


def face_table(sizes: Sizes = Sizes(), seed: int = 23) -> list[DetectorRow]:
    rng = random.Random(seed)
    backgrounds = face_free_images(max(len(BACKGROUNDS), sizes.face_free), rng)
    composites = [composite(backgrounds[rng.randrange(len(backgrounds))], px, rng)
                  for px in FACE_SIZES_PX for _ in range(sizes.composites_per_size)]
    face_free = backgrounds[:sizes.face_free]
    detectors = {"Haar (consumer, 320 px)": Haar(),
                 **{f"YuNet {size} px ({source})": yunet(size, source) for size, source in YUNET_ROWS}}
    rows = []
    for name, detect in detectors.items():
        detect(face_free[0])  # warm up (model load) outside the timing
        row = DetectorRow(name)
        for item in composites:
            started = time.process_time()
            boxes = detect(item.image)
            row.cpu_seconds += time.process_time() - started
            row.images += 1
            h, w = item.image.shape[:2]
            hit = any(iou((x * w, y * h, bw * w, bh * h), item.box) >= IOU_FOUND for x, y, bw, bh in boxes)
            found, total = row.found.get(item.face_px, (0, 0))
            row.found[item.face_px] = (found + hit, total + 1)
        for image in face_free:
            started = time.process_time()
            row.false_faces += len(detect(image))
            row.cpu_seconds += time.process_time() - started
            row.images += 1
        row.face_free = len(face_free)
        rows.append(row)
    return rows


def face_table_text(rows: list[DetectorRow], fmt: str = "simple") -> str:
    from tabulate import tabulate

    headers = ["detector", *[f"{px} px" if px else "full frame" for px in FACE_SIZES_PX], "recall ≥ 40 px",
               "false faces / 1,000", "CPU ms / image"]
    body = []
    for row in rows:
        cells = [f"{f}/{t}" for f, t in (row.found.get(px, (0, 0)) for px in FACE_SIZES_PX)]
        body.append([row.name, *cells, f"{row.recall():.0%}", f"{row.false_per_1000:.1f}", f"{row.cpu_ms:.1f}"])
    return tabulate(body, headers=headers, tablefmt=fmt)


# --- text -------------------------------------------------------------------------------------
def cer(truth: str, read: str) -> float:
    """Character error rate: Levenshtein distance / length of the truth (whitespace runs = one space)."""
    truth, read = " ".join(truth.split()), " ".join(read.split())
    previous = list(range(len(read) + 1))
    for i, a in enumerate(truth, 1):
        current = [i]
        for j, b in enumerate(read, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b)))
        previous = current
    return previous[-1] / max(1, len(truth))


def text_sample(text: str, font_name: str, size: int, variant: str, rng: random.Random) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    path = FONTS[font_name]
    font = ImageFont.truetype(path, size) if path else ImageFont.load_default(size)
    dark = variant == "light on dark"
    left, top, right, bottom = font.getbbox(text)
    pad = max(12, size // 2)
    image = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), (30, 34, 40) if dark else (250, 250, 245))
    ImageDraw.Draw(image).text((pad - left, pad - top), text, font=font, fill=(235, 235, 225) if dark else (20, 20, 20))
    if variant == "rotated":
        image = image.rotate(rng.choice((-1, 1)) * rng.uniform(2, 4), expand=True, fillcolor=(250, 250, 245),
                             resample=Image.BICUBIC)
    pixels = np.asarray(image)[:, :, ::-1].astype(np.float32)
    if variant == "noise":
        pixels += np.random.default_rng(rng.randrange(1 << 30)).normal(0, 18, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def random_text(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(2, 3))]
    words.insert(rng.randrange(len(words) + 1), str(rng.randint(10, 99999)))
    if rng.random() < 0.5:
        words[0] = words[0].capitalize()
    return " ".join(words)


@dataclass
class TextResult:
    font: str
    size: int
    variant: str
    truth: str
    read: str
    cer: float
    cpu_seconds: float


def text_results(sizes: Sizes = Sizes(), seed: int = 23) -> list[TextResult]:
    from enricher.text import read_text

    rng = random.Random(seed)
    read_text(np.full((32, 32, 3), 255, np.uint8))  # load the engine outside the timing
    results = []
    for font in FONTS:
        for size in TEXT_SIZES:
            for variant in TEXT_VARIANTS:
                for _ in range(sizes.text_strings):
                    truth = random_text(rng)
                    image = text_sample(truth, font, size, variant, rng)
                    started = time.process_time()
                    read = " ".join(line.text for line in read_text(image))
                    results.append(TextResult(font, size, variant, truth, read, cer(truth, read),
                                              time.process_time() - started))
    return results


def captcha_results(count: int) -> list[TextResult]:
    import cv2

    from demo.corpus import build_corpus
    from enricher.text import read_text

    results = []
    for name, data in build_corpus(count * 4):
        if not name.startswith("captcha/") or len(results) >= count:
            continue
        truth = name.rsplit("/", 1)[-1].split(".")[0]
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        started = time.process_time()
        read = "".join(line.text for line in read_text(image)).replace(" ", "")
        results.append(TextResult("captcha", 42, "captcha", truth, read, cer(truth, read.lower()),
                                  time.process_time() - started))
    return results


def mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


# --- throughput per model, against the core consumer's processing ----------------------------
def throughput(count: int, seed: int = 23, photos: list[bytes] | None = None) -> dict:
    """CPU seconds per image of one worker per model (decode + model, from the original's bytes,
    as the enricher runs them), and of the core consumer's process_image on the same photos
    (make bench's photo-like 1280x960 JPEGs when given, else 640x480 crops of bundled photos)."""
    from consumer.processing import ProcessingOptions, process_image
    from enricher.work import DecodeLimits, run_models
    from fixtures.images import encode

    rng = random.Random(seed)
    limits = DecodeLimits(50 * 2**20, 100_000_000, 512 * 2**20)
    photos = list(photos or [])[:count] or [encode(image, ".jpg") for image in face_free_images(count, rng)]
    texts = [encode(text_sample(random_text(rng), "DejaVuSans", 28, "plain", rng), ".png") for _ in range(count)]

    def cpu_per_image(run, items) -> float:
        run(items[0])  # warm up: models loaded, caches filled
        started = time.process_time()
        for data in items:
            run(data)
        return (time.process_time() - started) / len(items)

    return {"core_cpu_s": cpu_per_image(lambda d: process_image(d, ProcessingOptions()), photos),
            "faces_cpu_s": cpu_per_image(lambda d: run_models(("faces",), d, limits), photos),
            "text_cpu_photo_s": cpu_per_image(lambda d: run_models(("text",), d, limits), photos),
            "text_cpu_text_image_s": cpu_per_image(lambda d: run_models(("text",), d, limits), texts)}


# --- the figures make bench reports ------------------------------------------------------------
def enrichment_figures(sizes: Sizes = Sizes(), photos: list[bytes] | None = None) -> list[Figure]:
    rows = face_table(sizes)
    haar, *yunets = rows
    chosen = next(r for r in yunets if r.name == CHOSEN)
    table = face_table_text(rows)
    detail = {"table": table.splitlines(), "composites_per_size": sizes.composites_per_size,
              "face_free_images": sizes.face_free}
    figures = [
        Figure("faces_recall_40px", chosen.recall(40), "share", floor=haar.recall(40), floor_name="Haar",
               detail={**detail, "haar": haar.recall(40), "by_size": {r.name: r.recall(40) for r in rows}}),
        Figure("faces_false_per_1000", chosen.false_per_1000, "per 1,000", floor=haar.false_per_1000 or None,
               floor_name="Haar", detail={r.name: r.false_per_1000 for r in rows}),
        Figure("faces_cpu_ms", chosen.cpu_ms, "ms", floor=haar.cpu_ms, floor_name="Haar",
               detail={r.name: round(r.cpu_ms, 2) for r in rows}),
    ]
    texts = text_results(sizes)
    printed = [r for r in texts if r.size >= 16]
    small = [r for r in texts if r.size < 16]
    by_variant = {v: round(mean(r.cer for r in printed if r.variant == v), 4) for v in TEXT_VARIANTS}
    by_font = {f: round(mean(r.cer for r in printed if r.font == f), 4) for f in FONTS}
    worst = sorted(texts, key=lambda r: -r.cer)[:5]
    figures.append(Figure("ocr_cer_16px", mean(r.cer for r in printed), "CER", detail={
        "images": len(printed), "by_variant": by_variant, "by_font": by_font,
        "cpu_ms_per_image": round(1000 * mean(r.cpu_seconds for r in texts), 1),
        "worst": [f"{r.font} {r.size}px {r.variant}: {r.truth!r} -> {r.read!r}" for r in worst]}))
    figures.append(Figure("ocr_cer_12px", mean(r.cer for r in small), "CER", detail={"images": len(small)}))
    captchas = captcha_results(sizes.captchas)
    figures.append(Figure("ocr_cer_captcha", mean(r.cer for r in captchas), "CER", detail={
        "images": len(captchas), "examples": [f"{r.truth} -> {r.read!r}" for r in captchas[:5]]}))
    speed = throughput(sizes.throughput_images, photos=photos)
    figures.append(Figure("enricher_faces", 1 / speed["faces_cpu_s"], "images/s", floor=1 / speed["core_cpu_s"],
                          floor_name="core processing", detail={
                              "faces_cpu_ms_with_decode": round(1000 * speed["faces_cpu_s"], 1),
                              "core_processing_cpu_ms": round(1000 * speed["core_cpu_s"], 1),
                              "photos": "make bench's photo-like 1280x960 JPEGs" if photos else "640x480 crops"}))
    figures.append(Figure("enricher_text", 1 / speed["text_cpu_text_image_s"], "images/s", detail={
        "cpu_ms_text_image": round(1000 * speed["text_cpu_text_image_s"], 1),
        "cpu_ms_photo_without_text": round(1000 * speed["text_cpu_photo_s"], 1)}))
    return figures


def main(argv: list[str] | None = None) -> int:
    import argparse

    from imgpipe import cli

    p = cli.parser("python -m bench.enrichment", __doc__, [
        "python -m bench.enrichment", "python -m bench.enrichment --quick", "python -m bench.enrichment --markdown"])
    p.add_argument("--quick", action="store_true", help="a handful of images per cell: checks the harness")
    p.add_argument("--markdown", action="store_true", help="tables as Markdown")
    args = p.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else Sizes()
    fmt = "github" if args.markdown else "simple"
    rows = face_table(sizes)
    print(face_table_text(rows, fmt))
    texts = text_results(sizes)
    from tabulate import tabulate

    body = [[size, *[f"{mean(r.cer for r in texts if r.size == size and r.variant == v):.1%}" for v in TEXT_VARIANTS]]
            for size in TEXT_SIZES]
    print()
    print(tabulate(body, headers=["text px", *TEXT_VARIANTS], tablefmt=fmt))
    print(f"\nOCR: {1000 * mean(r.cpu_seconds for r in texts):.0f} ms of CPU per text image", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
