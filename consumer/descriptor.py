"""The similarity descriptor: a 255-float unit vector per image, compared by cosine.

Three parts, each L2-normalised, then weighted and joined (a part's weight squared is its
share of the cosine):
  layout     63  the 8x8 lowest DCT frequencies of a 32x32 reduction of the working image,
                 without the DC term: the floats behind pHash's 64 bits (weight 1)
  gradients 128  magnitude-weighted histograms of unsigned gradient orientation, 8 bins with
                 soft voting, on a 4x4 grid of a 64x64 reduction; square root, minus its mean
                 (weight 1)
  colour     64  Lab histogram of a 64 px copy of the thumbnail, 4 bins of L x 4 of a x 4 of b
                 (a and b over 128 +- 64); square root, minus its mean (weight 0.5)
The two structure parts see only the grayscale working image, so grayscale copies stay close;
colour at half weight orders look-alikes without letting a brightness change outweigh layout.
Subtracting the mean spreads the scores of unrelated images: their gradient histograms had a
cosine of 0.76 on average before (0.07 after), so that part barely told images apart.

Chosen by measurement (python -m bench.descriptor; numbers in notes/similarity.md): on 120
photo-like images, the 17 bundled photographs and their 68 quarters, each with 16 copies
(resized 25-90%, JPEG quality 40-95, cropped 2-10%, brightness +-10/25%, tilted 2-5 degrees,
and a combination), every copy scores above every unrelated image, against 94-98% for pHash's
Hamming distance; it also keeps grayscale copies and most 20% crops, 10 degree tilts and heavy
combinations. Mirrored copies are mostly not found (4-41%; pHash 0%). Cost: 0.35 ms per
1280x960 photo on one core, on top of the working image and thumbnail processing.py already
has (process_image itself: 7.8 ms when this was measured).

A flat image has no layout or gradients and describes by its colour alone; a vector that
would be all zero (nothing in this design produces one, but Meili and cosine need a direction)
becomes the constant unit vector FLAT_VECTOR.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

DCT_SIZE = 32  # side of the reduction the DCT is taken on (as pHash)
DCT_LOW = 8  # the DCT_LOW x DCT_LOW lowest frequencies are kept, minus DC
GRADIENT_SIZE = 64  # side of the reduction gradients are taken on
GRADIENT_CELLS = 4  # grid of GRADIENT_CELLS x GRADIENT_CELLS cells
ORIENTATIONS = 8  # unsigned orientation bins of 22.5 degrees
COLOUR_SIZE = 64  # longest side of the thumbnail copy the colour histogram counts
LAB_BINS = (4, 4, 4)
CHROMA = 64  # a and b bins span 128 +- CHROMA (8-bit Lab); the rest is clipped into the end bins
WEIGHTS = (1.0, 1.0, 0.5)  # layout, gradients, colour
DECIMALS = 4

LAYOUT_DIMENSIONS = DCT_LOW * DCT_LOW - 1
GRADIENT_DIMENSIONS = GRADIENT_CELLS * GRADIENT_CELLS * ORIENTATIONS
COLOUR_DIMENSIONS = LAB_BINS[0] * LAB_BINS[1] * LAB_BINS[2]
DESCRIPTOR_DIMENSIONS = LAYOUT_DIMENSIONS + GRADIENT_DIMENSIONS + COLOUR_DIMENSIONS
FLAT_VECTOR = [round(1 / math.sqrt(DESCRIPTOR_DIMENSIONS), DECIMALS)] * DESCRIPTOR_DIMENSIONS

_CELL_OF = np.arange(GRADIENT_SIZE) * GRADIENT_CELLS // GRADIENT_SIZE
_CELL_BASE = ((_CELL_OF[:, None] * GRADIENT_CELLS + _CELL_OF[None, :]) * ORIENTATIONS).ravel()


def describe(work: np.ndarray, thumbnail: np.ndarray) -> list[float]:
    """The descriptor of an image from processing.py's working-scale grayscale image (uint8,
    2-D) and its thumbnail (uint8, BGR or 2-D gray): DESCRIPTOR_DIMENSIONS floats, rounded to
    DECIMALS, L2 norm 1 (within rounding)."""
    if work.ndim != 2 or work.dtype != np.uint8 or thumbnail.dtype != np.uint8 or work.size == 0:
        raise ValueError(f"describe needs a 2-D uint8 working image and a uint8 thumbnail, got "
                         f"{work.dtype}{work.shape} and {thumbnail.dtype}{thumbnail.shape}")
    parts = (layout(work), gradients(work), colour(thumbnail))
    joined = np.concatenate([_unit(part) * weight for part, weight in zip(parts, WEIGHTS)])
    norm = float(np.linalg.norm(joined))
    if norm == 0:
        return list(FLAT_VECTOR)
    # np.round then tolist gives the same floats as round() on each (checked on 10^6 values),
    # in a fifth of the time.
    return np.round(joined / norm, DECIMALS).tolist()


def layout(work: np.ndarray) -> np.ndarray:
    small = cv2.resize(work, (DCT_SIZE, DCT_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    return cv2.dct(small)[:DCT_LOW, :DCT_LOW].ravel()[1:]


def gradients(work: np.ndarray) -> np.ndarray:
    small = cv2.resize(work, (GRADIENT_SIZE, GRADIENT_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    gx = cv2.Sobel(small, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(small, cv2.CV_32F, 0, 1, ksize=3)
    magnitude, angle = cv2.cartToPolar(gx, gy)
    magnitude = magnitude.ravel()
    # Soft voting: each pixel splits its magnitude between the two nearest bin centres, so a
    # tilt of a few degrees moves weight between bins instead of flipping it.
    position = (angle.ravel() % np.pi) * (ORIENTATIONS / np.pi) - 0.5
    lower = np.floor(position)
    upper_share = position - lower
    lower = lower.astype(np.intp) % ORIENTATIONS
    hist = (np.bincount(_CELL_BASE + lower, magnitude * (1 - upper_share), GRADIENT_DIMENSIONS)
            + np.bincount(_CELL_BASE + (lower + 1) % ORIENTATIONS, magnitude * upper_share, GRADIENT_DIMENSIONS))
    hist = np.sqrt(hist)
    return hist - hist.mean()


def colour(thumbnail: np.ndarray) -> np.ndarray:
    bgr = thumbnail if thumbnail.ndim == 3 else cv2.cvtColor(thumbnail, cv2.COLOR_GRAY2BGR)
    rows, cols = bgr.shape[:2]
    if max(rows, cols) > COLOUR_SIZE:
        scale = COLOUR_SIZE / max(rows, cols)
        bgr = cv2.resize(bgr, (max(1, round(cols * scale)), max(1, round(rows * scale))),
                         interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.int32)
    l_bins, a_bins, b_bins = LAB_BINS
    low = 128 - CHROMA
    li = lab[:, 0] * l_bins // 256
    ai = np.clip((lab[:, 1] - low) * a_bins // (2 * CHROMA), 0, a_bins - 1)
    bi = np.clip((lab[:, 2] - low) * b_bins // (2 * CHROMA), 0, b_bins - 1)
    hist = np.bincount((li * a_bins + ai) * b_bins + bi, minlength=COLOUR_DIMENSIONS)
    hist = np.sqrt(hist / hist.sum())
    return hist - hist.mean()


def cosine(a, b) -> float:
    """Cosine of two descriptors (their dot product, as both have norm 1 up to rounding)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector
