"""Text in images by PP-OCR (detection + recognition) through `rapidocr` on onnxruntime.

The ONNX models ship inside the rapidocr wheel; the engine is built with their paths spelt out,
so it never looks for a model anywhere else (rapidocr downloads a model it cannot find, which a
run must never do: a missing file is an InfrastructureError, a broken install).

Pure apart from the engine, which is loaded once per worker process (~2.5 s) and kept. Boxes
are fractions of the upright image (x, y, w, h of the line's axis-aligned bounding box).
An image without text regions costs the detector only; each line found adds its recognition.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgpipe.errors import InfrastructureError

# The version of what this module writes (model, sizes, thresholds): a change bumps it, and the
# backfill finds the documents to read again.
TEXT_VERSION = 1
# Longest side the detector reads: rapidocr's own default upscales every image to 736 px on its
# *shortest* side (a 1:3 receipt became 2,200 px wide); a cap on the longest side keeps small
# images small, and text >= 12 px on a 1,280 px image still reads (bench/enrichment.py's CER).
DETECT_LONGEST = 1280
MIN_LINE_CONFIDENCE = 0.5
MAX_LINES = 200  # a page of text; more is noise for a search index
MAX_TEXT_CHARS = 20_000

MODELS = {"Det": "PP-OCRv6_det_small.onnx", "Cls": "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
          "Rec": "PP-OCRv6_rec_small.onnx"}


@dataclass(frozen=True)
class TextLine:
    text: str
    box: tuple[float, float, float, float]  # x, y, w, h as fractions of the image
    confidence: float

    def as_dict(self) -> dict:
        return {"text": self.text, "box": list(self.box), "confidence": self.confidence}


def model_paths() -> dict[str, Path]:
    import rapidocr

    folder = Path(rapidocr.__file__).resolve().parent / "models"
    paths = {part: folder / name for part, name in MODELS.items()}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise InfrastructureError("ocr", "rapidocr's bundled models are missing (" + ", ".join(missing)
                                  + "); reinstall the pinned rapidocr wheel")
    return paths


@functools.lru_cache(maxsize=1)
def engine():
    """rapidocr's engine on the bundled models, one thread (parallelism comes from the workers)."""
    from rapidocr import RapidOCR

    paths = model_paths()
    params = {"Global.log_level": "error", "Global.max_side_len": DETECT_LONGEST,
              "Global.text_score": MIN_LINE_CONFIDENCE,
              "Det.limit_type": "max", "Det.limit_side_len": DETECT_LONGEST,
              "EngineConfig.onnxruntime.intra_op_num_threads": 1,
              "EngineConfig.onnxruntime.inter_op_num_threads": 1}
    for part, path in paths.items():
        params[f"{part}.model_path"] = str(path)
    return RapidOCR(params=params)


def read_text(image: np.ndarray) -> list[TextLine]:
    """The lines of text in an upright BGR image, top to bottom."""
    from enricher.faces import as_bgr

    work = as_bgr(image)
    height, width = work.shape[:2]
    result = engine()(work)
    if result.txts is None or result.boxes is None:
        return []
    lines = []
    for text, score, quad in zip(result.txts, result.scores, result.boxes):
        text = " ".join(str(text).split())
        if not text or score < MIN_LINE_CONFIDENCE:
            continue
        xs, ys = np.clip(quad[:, 0], 0, width), np.clip(quad[:, 1], 0, height)
        box = (round(float(xs.min()) / width, 4), round(float(ys.min()) / height, 4),
               round(float(xs.max() - xs.min()) / width, 4), round(float(ys.max() - ys.min()) / height, 4))
        lines.append(TextLine(text, box, round(float(score), 3)))
    lines.sort(key=lambda line: (line.box[1], line.box[0]))
    return lines[:MAX_LINES]


def text_fields(lines: list[TextLine]) -> dict:
    """The document fields of the text model: `text` (searchable, one line per line),
    `text_lines` (with boxes and confidence), `text_chars` (non-space characters; the CSV
    export counts images with text by it)."""
    text = "\n".join(line.text for line in lines)[:MAX_TEXT_CHARS]
    return {"text": text, "text_lines": [line.as_dict() for line in lines],
            "text_chars": sum(1 for char in text if not char.isspace()), "text_version": TEXT_VERSION}
