"""Plausible metadata documents, for tests and benchmarks of the export and the MapReduce job.

    python -m mapreduce.sample_data --rows 1000000 --out /tmp/image_metadata_1m.csv
"""
from __future__ import annotations

import hashlib
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from imgpipe import cli
from imgpipe.document import FIELDS, derived_key, document_id, file_name

FORMATS = (("jpeg", 60), ("png", 25), ("webp", 8), ("gif", 4), ("tiff", 2), ("bmp", 1))
# Keys that break naive CSV handling; every one must survive export -> mapper.
AWKWARD_KEYS = (
    "raw/comma, in name.jpg",
    'raw/"quoted" name.png',
    "raw/tab\there.jpg",
    "raw/semi;colon&amp=equals.jpg",
    "raw/ünïcödé/日本語の写真.jpg",
    "raw/emoji 📷.webp",
    "raw/new\nline.jpg",
    "raw/carriage\rreturn.png",
    'raw/all,of "them";\t&=\n.jpg',
    "raw/=SUM(A1:A2).jpg",
)
EPOCH = datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp()


def iso_utc(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def sample_document(i: int, rng: random.Random, key: str | None = None, bucket: str = "images",
                    processed_prefix: str = "processed/") -> dict:
    """Document number `i`, with every field of imgpipe.document.FIELDS."""
    fmt = rng.choices([f for f, _ in FORMATS], weights=[w for _, w in FORMATS])[0]
    key = key if key is not None else f"raw/2026/11/{i // 1000:04d}/img_{i:07d}.{'jpg' if fmt == 'jpeg' else fmt}"
    size_bytes = int(min(rng.lognormvariate(11.5, 1.2), 40e6)) + 100
    width, height = rng.choice(((640, 480), (1024, 768), (1920, 1080), (3024, 4032), (256, 256), (4000, 3000)))
    modified = EPOCH + rng.uniform(0, 20 * 86400)
    processed = modified + rng.uniform(1, 7200)
    sha = hashlib.sha256(f"{bucket}/{key}/{i}".encode()).hexdigest()
    document = {
        "id": document_id(bucket, key),
        "bucket": bucket,
        "key": key,
        "file_name": file_name(key),
        "format": fmt,
        "size_bytes": size_bytes,
        "size_kb": round(size_bytes / 1024, 2),
        "width": width,
        "height": height,
        "channels": 3 if fmt != "png" else rng.choice((3, 4)),
        "bit_depth": 8,
        "megapixels": round(width * height / 1e6, 3),
        "mean_brightness": round(rng.uniform(20, 230), 2),
        "sharpness": round(rng.lognormvariate(5, 1), 2),
        "edge_density": round(rng.uniform(0, 0.4), 4),
        "dominant_color": "#%06x" % rng.randrange(1 << 24),
        "faces": rng.choices((0, 1, 2, 3, 5), weights=(70, 18, 7, 4, 1))[0],
        "phash": "%016x" % rng.getrandbits(64),
        "sha256": sha,
        "thumbnail_key": derived_key(processed_prefix, "thumbnails", bucket, key),
        "grayscale_key": derived_key(processed_prefix, "grayscale", bucket, key),
        "etag": '"%s"' % sha[:32],
        "timestamp": int(modified),
        "last_modified": iso_utc(int(modified)),
        "event_time": iso_utc(modified + 0.5),
        "processed_at": iso_utc(processed),
        "processing_ms": round(rng.uniform(5, 900), 1),
        "pipeline_version": "0.1.0",
    }
    assert list(document) == list(FIELDS), "sample documents must follow FIELDS"
    return document


def sample_documents(count: int, seed: int = 7, awkward: bool = True) -> list[dict]:
    rng = random.Random(seed)
    keys = list(AWKWARD_KEYS) if awkward else []
    return [sample_document(i, rng, key=keys[i] if i < len(keys) else None) for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    from mapreduce.export_csv import write_csv

    p = cli.parser("python -m mapreduce.sample_data", __doc__, [
        "python -m mapreduce.sample_data --rows 1000 --out /tmp/small.csv",
        "python -m mapreduce.sample_data --rows 1000000 --out /tmp/big.csv --seed 3"])
    p.add_argument("--rows", type=int, required=True, help="rows to write")
    p.add_argument("--out", type=Path, required=True, help="CSV file to write")
    p.add_argument("--seed", type=int, default=7, help="random seed (same seed, same file)")
    args = p.parse_args(argv)
    started = time.monotonic()
    rng = random.Random(args.seed)
    with open(args.out, "w", encoding="utf-8", newline="") as out:
        rows = write_csv((sample_document(i, rng) for i in range(args.rows)), out)
    print(f"wrote {rows} rows to {args.out} in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
