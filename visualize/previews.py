"""Image previews: processed thumbnails from S3 in one captioned grid."""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from visualize.charts import DPI, Chart  # noqa: E402

MAX_PREVIEWS = 5
CAPTION_CHARS = 24


@dataclass(frozen=True)
class Thumbnail:
    file_name: str
    size_kb: float | None
    key: str
    pixels: np.ndarray  # RGB, height x width x 3


@dataclass(frozen=True)
class Skipped:
    file_name: str
    key: str
    reason: str


def decode(data: bytes) -> np.ndarray | None:
    """JPEG/PNG bytes -> RGB array, or None when they are not an image."""
    import cv2

    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    return None if pixels is None else cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def fetch_thumbnails(client, bucket: str, docs: list[dict], limit: int = MAX_PREVIEWS
                     ) -> tuple[list[Thumbnail], list[Skipped]]:
    """Up to `limit` thumbnails of `docs`, in order. A missing or unreadable thumbnail is
    skipped and reported, and the next document takes its place. Other S3 errors (S3Error) propagate."""
    from imgpipe import s3

    found: list[Thumbnail] = []
    skipped: list[Skipped] = []
    for doc in docs:
        if len(found) >= limit:
            break
        name = str(doc.get("file_name") or doc.get("key") or doc.get("id") or "?")
        key = doc.get("thumbnail_key")
        if not isinstance(key, str) or not key:
            skipped.append(Skipped(name, "", "document has no thumbnail_key"))
            continue
        try:
            data = s3.fetch(client, bucket, key).data
        except s3.S3Error as exc:
            if exc.missing_object:
                skipped.append(Skipped(name, key, "thumbnail not found"))
                continue
            raise
        pixels = decode(data)
        if pixels is None:
            skipped.append(Skipped(name, key, "thumbnail is not a readable image"))
            continue
        size = doc.get("size_kb")
        found.append(Thumbnail(name, float(size) if size is not None and size == size else None, key, pixels))
    return found, skipped


def _caption(thumb: Thumbnail) -> str:
    name = thumb.file_name
    if len(name) > CAPTION_CHARS:
        name = name[:CAPTION_CHARS - 1] + "…"
    size = f"{thumb.size_kb:,.1f} KiB" if thumb.size_kb is not None else "size unknown"
    return f"{name}\n{size}"


def preview_grid(thumbs: list[Thumbnail], title: str = "Processed thumbnails") -> Chart:
    """One row of captioned thumbnails. data: the file names, sizes and keys shown."""
    import pandas as pd

    columns = max(1, len(thumbs))
    # Cells 2.8 inches wide, as tall as the tallest thumbnail needs up to a square (taller
    # ones are scaled down into it), plus two caption lines.
    aspect = max((t.pixels.shape[0] / t.pixels.shape[1] for t in thumbs), default=1.0)
    fig = Figure(figsize=(max(2.8 * columns, 4.8), 2.8 * min(aspect, 1.0) + 0.8), dpi=DPI, layout="constrained")
    fig.suptitle(title, fontsize=13)
    for i, thumb in enumerate(thumbs):
        ax = fig.add_subplot(1, columns, i + 1)
        ax.imshow(thumb.pixels)
        ax.set_anchor("N")  # captions line up whatever the thumbnails' shapes
        ax.set_title(_caption(thumb), fontsize=9)
        ax.set_axis_off()
    data = pd.DataFrame([{"file_name": t.file_name, "size_kb": t.size_kb, "thumbnail_key": t.key}
                         for t in thumbs], columns=["file_name", "size_kb", "thumbnail_key"])
    return Chart("previews", fig, data)
