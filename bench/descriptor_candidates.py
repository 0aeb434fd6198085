"""Candidate similarity descriptors for `python -m bench.descriptor`, one function each.

Every candidate takes what consumer/processing.py has at hand for an image, the working-scale
grayscale `work` (uint8, 512 px on its longest side) and the colour `thumbnail` (uint8 BGR,
256 px; 2-D when the source is gray), and returns a float32 vector; the bench L2-normalises it
and compares by cosine. Combinations normalise each part first, then weight it, so a part's
weight is its share of the cosine: cos = sum(w_i^2 cos_i) / sum(w_i^2).
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

Descriptor = Callable[[np.ndarray, np.ndarray], np.ndarray]

COLOUR_SIZE = 64  # colour statistics are taken on this copy of the thumbnail: 16x fewer pixels


def _bgr(thumbnail: np.ndarray) -> np.ndarray:
    return thumbnail if thumbnail.ndim == 3 else cv2.cvtColor(thumbnail, cv2.COLOR_GRAY2BGR)


def _small(image: np.ndarray, longest: int) -> np.ndarray:
    rows, cols = image.shape[:2]
    scale = longest / max(rows, cols)
    if scale >= 1:
        return image
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, np.float32).ravel()
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


# --- colour histograms ------------------------------------------------------------------------

def hsv_hist(bins=(8, 3, 3)) -> Descriptor:
    """HSV histogram of the thumbnail, sqrt of the shares (Hellinger: cosine = Bhattacharyya)."""
    def describe(work, thumbnail):
        hsv = cv2.cvtColor(_small(_bgr(thumbnail), COLOUR_SIZE), cv2.COLOR_BGR2HSV)
        hist = cv2.calcHist([hsv], [0, 1, 2], None, list(bins), [0, 180, 0, 256, 0, 256]).ravel()
        return np.sqrt(hist / max(hist.sum(), 1))
    return describe


def lab_hist(bins=(4, 4, 4), chroma=64) -> Descriptor:
    """Lab histogram, L over 0-255, a and b over 128 +- `chroma` (8-bit Lab: real colours rarely
    leave that band, so uniform bins over 0-255 would put nearly every pixel in two of them)."""
    l_bins, a_bins, b_bins = bins

    def describe(work, thumbnail):
        lab = cv2.cvtColor(_small(_bgr(thumbnail), COLOUR_SIZE), cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.int32)
        low = 128 - chroma
        li = np.minimum(lab[:, 0] * l_bins // 256, l_bins - 1)
        ai = np.clip((lab[:, 1] - low) * a_bins // (2 * chroma), 0, a_bins - 1)
        bi = np.clip((lab[:, 2] - low) * b_bins // (2 * chroma), 0, b_bins - 1)
        hist = np.bincount((li * a_bins + ai) * b_bins + bi, minlength=l_bins * a_bins * b_bins)
        return np.sqrt(hist / max(hist.sum(), 1))
    return describe


def hs_hist(bins=(16, 4)) -> Descriptor:
    """Hue x saturation histogram (no value axis): scaling the brightness keeps both."""
    def describe(work, thumbnail):
        hsv = cv2.cvtColor(_small(_bgr(thumbnail), COLOUR_SIZE), cv2.COLOR_BGR2HSV)
        hist = cv2.calcHist([hsv], [0, 1], None, list(bins), [0, 180, 0, 256]).ravel()
        return np.sqrt(hist / max(hist.sum(), 1))
    return describe


# --- layout: tiny images and low frequencies -------------------------------------------------

def gray_tiny(n=8) -> Descriptor:
    """The working image area-averaged to n x n, minus its mean (cosine = correlation)."""
    def describe(work, thumbnail):
        small = cv2.resize(work, (n, n), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
        return small - small.mean()
    return describe


def lab_tiny(n=8) -> Descriptor:
    """The thumbnail area-averaged to n x n in Lab: L minus its mean, a and b minus neutral."""
    def describe(work, thumbnail):
        small = cv2.resize(_bgr(thumbnail), (n, n), interpolation=cv2.INTER_AREA)
        lab = cv2.cvtColor(small, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float32)
        lab[:, 0] -= lab[:, 0].mean()
        lab[:, 1:] -= 128
        return lab.T.ravel()
    return describe


def dct_low(n=8) -> Descriptor:
    """The n x n lowest DCT frequencies of a 32x32 reduction without the DC term: the floats
    behind pHash's 64 bits."""
    def describe(work, thumbnail):
        small = cv2.resize(work, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
        return cv2.dct(small)[:n, :n].ravel()[1:]
    return describe


# --- structure: gradient orientations on a grid -----------------------------------------------

def hog(cells=4, bins=8, size=64, soft=True) -> Descriptor:
    """Magnitude-weighted histograms of unsigned gradient orientation on a cells x cells grid
    of the working image reduced to size x size; `soft` splits each vote between the two
    nearest orientation bins (a slight rotation then moves weight instead of flipping bins).
    Square root of the histogram, so a few strong edges do not outweigh the rest."""
    cell_of = np.arange(size) * cells // size
    cell_index = ((cell_of[:, None] * cells + cell_of[None, :]) * bins).ravel()
    length = cells * cells * bins

    def describe(work, thumbnail):
        small = cv2.resize(work, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
        gx = cv2.Sobel(small, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(small, cv2.CV_32F, 0, 1, ksize=3)
        magnitude, angle = cv2.cartToPolar(gx, gy)
        magnitude, position = magnitude.ravel(), (angle.ravel() % np.pi) * (bins / np.pi)
        if soft:
            position = position - 0.5
            lower = np.floor(position)
            upper_share = position - lower
            lower = lower.astype(np.int64) % bins
            hist = (np.bincount(cell_index + lower, magnitude * (1 - upper_share), length)
                    + np.bincount(cell_index + (lower + 1) % bins, magnitude * upper_share, length))
        else:
            hist = np.bincount(cell_index + np.minimum(position.astype(np.int64), bins - 1), magnitude, length)
        return np.sqrt(hist)
    return describe


# --- combinations --------------------------------------------------------------------------------

def centred(part: Descriptor) -> Descriptor:
    """The part minus its own mean: cosine becomes Pearson correlation (unrelated images'
    gradient histograms: mean cosine 0.76 before, 0.07 after)."""
    def describe(work, thumbnail):
        vector = np.asarray(part(work, thumbnail), np.float32)
        return vector - vector.mean()
    return describe


def thumb_gray_tiny(n=8) -> Descriptor:
    """gray_tiny from the thumbnail instead of the working image (half the pixels to average)."""
    def describe(work, thumbnail):
        small = cv2.resize(thumbnail, (n, n), interpolation=cv2.INTER_AREA)
        small = (small if small.ndim == 2 else cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)).astype(np.float32).ravel()
        return small - small.mean()
    return describe


def combined(*parts: tuple[Descriptor, float]) -> Descriptor:
    def describe(work, thumbnail):
        return np.concatenate([_unit(part(work, thumbnail)) * weight for part, weight in parts])
    return describe


def candidates() -> dict[str, Descriptor]:
    """name -> descriptor; the name says what it is and its length."""
    zoo = {
        "hsv_hist 8x3x3 (72)": hsv_hist((8, 3, 3)),
        "hsv_hist 8x4x4 (128)": hsv_hist((8, 4, 4)),
        "lab_hist 4x4x4 (64)": lab_hist((4, 4, 4)),
        "hs_hist 16x4 (64)": hs_hist((16, 4)),
        "lab_hist 4x6x6 (144)": lab_hist((4, 6, 6)),
        "gray_tiny 8x8 (64)": gray_tiny(8),
        "gray_tiny 16x16 (256)": gray_tiny(16),
        "thumb_gray_tiny 8x8 (64)": thumb_gray_tiny(8),
        "lab_tiny 8x8 (192)": lab_tiny(8),
        "dct_low 8x8 (63)": dct_low(8),
        "hog 2x2x8 (32)": hog(2, 8, 64),
        "hog 4x4x8 (128)": hog(4, 8, 64),
        "hog 4x4x8 hard bins (128)": hog(4, 8, 64, soft=False),
        "hog 4x4x8 @128px (128)": hog(4, 8, 128),
        "hog 4x4x8 centred (128)": centred(hog(4, 8, 64)),
        "lab_hist 4x4x4 centred (64)": centred(lab_hist((4, 4, 4))),
        "dct63 + lab_hist64 (127)": combined((dct_low(8), 1.0), (lab_hist((4, 4, 4)), 1.0)),
        "gray64 + hsv72 (136)": combined((gray_tiny(8), 1.0), (hsv_hist((8, 3, 3)), 1.0)),
        "gray64 + lab_hist64 (128)": combined((gray_tiny(8), 1.0), (lab_hist((4, 4, 4)), 1.0)),
        "hog128 + lab_hist64 (192)": combined((hog(4, 8, 64), 1.0), (lab_hist((4, 4, 4)), 1.0)),
        "gray64 + hog32 + lab_hist64 (160)": combined((gray_tiny(8), 1.0), (hog(2, 8, 64), 1.0),
                                                      (lab_hist((4, 4, 4)), 1.0)),
        "hog128c + lab_hist64c (192)": combined((centred(hog(4, 8, 64)), 1.0),
                                                (centred(lab_hist((4, 4, 4))), 1.0)),
        "gray64 + hog128c + lab_hist64c (256)": combined((gray_tiny(8), 1.0), (centred(hog(4, 8, 64)), 1.0),
                                                         (centred(lab_hist((4, 4, 4))), 1.0)),
        "dct63 + hog128c + lab_hist64c (255)": combined((dct_low(8), 1.0), (centred(hog(4, 8, 64)), 1.0),
                                                        (centred(lab_hist((4, 4, 4))), 1.0)),
        "dct63 + hog128c (191)": combined((dct_low(8), 1.0), (centred(hog(4, 8, 64)), 1.0)),
        "dct63 + hog32c (95)": combined((dct_low(8), 1.0), (centred(hog(2, 8, 64)), 1.0)),
        "dct63 + hog128c + lab_hist64c*0.5 (255)": combined((dct_low(8), 1.0), (centred(hog(4, 8, 64)), 1.0),
                                                          (centred(lab_hist((4, 4, 4))), 0.5)),
        "dct63 + hog128c + lab_hist64c*0.7 (255)": combined((dct_low(8), 1.0), (centred(hog(4, 8, 64)), 1.0),
                                                            (centred(lab_hist((4, 4, 4))), 0.7)),
        "dct63 + hog72c + hsv72c (207)": combined((dct_low(8), 1.0), (centred(hog(3, 8, 64)), 1.0),
                                                  (centred(hsv_hist((8, 3, 3))), 1.0)),
        "dct63 + hog72c + hsv72c*0.7 (207)": combined((dct_low(8), 1.0), (centred(hog(3, 8, 64)), 1.0),
                                                      (centred(hsv_hist((8, 3, 3))), 0.7)),
        "dct63 + hog128c + hs_hist64c (255)": combined((dct_low(8), 1.0), (centred(hog(4, 8, 64)), 1.0),
                                                       (centred(hs_hist((16, 4))), 1.0)),
        "dct63 + hog128c + hs_hist64c*0.5 (255)": combined((dct_low(8), 1.0), (centred(hog(4, 8, 64)), 1.0),
                                                         (centred(hs_hist((16, 4))), 0.5)),
        "dct63 + hog128 + lab_hist64 (255)": combined((dct_low(8), 1.0), (hog(4, 8, 64), 1.0),
                                                      (lab_hist((4, 4, 4)), 1.0)),
        "gray64 + hog128 + lab_hist64 (256)": combined((gray_tiny(8), 1.0), (hog(4, 8, 64), 1.0),
                                                       (lab_hist((4, 4, 4)), 1.0)),
    }
    try:
        from consumer import descriptor as chosen
    except ImportError:  # not written yet
        return zoo
    zoo[f"consumer.descriptor ({chosen.DESCRIPTOR_DIMENSIONS})"] = lambda work, thumbnail: np.asarray(
        chosen.describe(work, thumbnail), np.float32)
    return zoo
