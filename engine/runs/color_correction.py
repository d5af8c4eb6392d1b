"""img2img colour correction (the img2img_color_correction setting), as the ecosystem does it:
the result's CIELAB channels are matched to the histograms of the picture it started from, and the
matched colours take the luminosity of the result (the W3C "luminosity" blend), so the colours
stay those of the original while the shading the model drew is kept."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

# Rec. 601 luma weights, as the W3C compositing spec's Lum() uses them.
_LUMA = np.array([0.3, 0.59, 0.11])


def correction_target(image: Image.Image) -> np.ndarray:
    """The colours to match: the starting picture in CIELAB (8-bit, OpenCV's scaling)."""
    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2LAB)


def match_channel(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`source` with its value distribution mapped onto `reference`'s: each value goes to the
    reference value at the same cumulative share (linear between known points)."""
    values, inverse, counts = np.unique(source.ravel(), return_inverse=True, return_counts=True)
    ref_values, ref_counts = np.unique(reference.ravel(), return_counts=True)
    quantiles = np.cumsum(counts) / source.size
    ref_quantiles = np.cumsum(ref_counts) / reference.size
    return np.interp(quantiles, ref_quantiles, ref_values)[inverse].reshape(source.shape)


def _lum(rgb: np.ndarray) -> np.ndarray:
    return rgb @ _LUMA


def _clip_colour(rgb: np.ndarray) -> np.ndarray:
    lum = _lum(rgb)[..., None]
    low, high = rgb.min(-1, keepdims=True), rgb.max(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        rgb = np.where(low < 0, lum + (rgb - lum) * lum / (lum - low), rgb)
        rgb = np.where(high > 1, lum + (rgb - lum) * (1 - lum) / (high - lum), rgb)
    return np.nan_to_num(rgb)


def luminosity_blend(colours: np.ndarray, shading: np.ndarray) -> np.ndarray:
    """The hue and saturation of `colours` with the luminosity of `shading` (floats in 0..1)."""
    return _clip_colour(colours + (_lum(shading) - _lum(colours))[..., None])


def apply(target: np.ndarray, image: Image.Image) -> Image.Image:
    """`image` with its colours corrected towards `target` (from correction_target)."""
    rgb = np.asarray(image.convert("RGB"))
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    # Matched values are truncated to 8 bits, as the reference implementation stores them.
    matched = np.stack([match_channel(lab[..., c], target[..., c]) for c in range(3)], -1).astype(np.uint8)
    corrected = cv2.cvtColor(matched, cv2.COLOR_LAB2RGB).astype(np.float64) / 255.0
    blended = luminosity_blend(corrected, rgb.astype(np.float64) / 255.0)
    return Image.fromarray(np.clip(np.round(blended * 255.0), 0, 255).astype(np.uint8), "RGB")
