"""The weight-free preprocessors' maps (preprocessors.py names them and checks their inputs): each
takes the picture at its processing size (and the unit's thresholds, and an inpaint mask) and
returns the map as an H x W x 3 (inpaint: x 4) uint8 array."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from engine.controlnet.preprocessors import _Job

SHUFFLE_SEED = 0  # fixed: the same picture always shuffles the same way


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)


def _three(gray: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(gray, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def none(job: "_Job") -> np.ndarray:
    return job.image


def invert(job: "_Job") -> np.ndarray:
    return 255 - job.image


def canny(job: "_Job") -> np.ndarray:
    edges = cv2.Canny(job.image, int(round(job.a)), int(round(job.b)))
    return _three(edges)


def scribble(job: "_Job") -> np.ndarray:
    # The canvas colour is the median of a thin frame; whatever differs from it is a stroke, so
    # dark-on-light and light-on-dark drawings (and coloured ones) give the same map.
    rgb = job.image.astype(np.int16)
    height, width = rgb.shape[:2]
    edge = max(1, min(height, width) // 50)
    frame = np.concatenate([rgb[:edge].reshape(-1, 3), rgb[-edge:].reshape(-1, 3),
                            rgb[:, :edge].reshape(-1, 3), rgb[:, -edge:].reshape(-1, 3)])
    canvas = np.median(frame, axis=0)
    ink = np.abs(rgb - canvas).max(axis=2)
    return _three((ink > job.a) * 255)


def scribble_xdog(job: "_Job") -> np.ndarray:
    # Difference of Gaussians: positive where a pixel is darker than its surroundings (lines,
    # the dark side of contours); thresholded, then thickened as scribble models expect.
    gray = _gray(job.image)
    difference = cv2.GaussianBlur(gray, (0, 0), 5.0) - cv2.GaussianBlur(gray, (0, 0), 0.5)
    lines = ((2.0 * difference) > job.a).astype(np.uint8) * 255
    lines = cv2.dilate(lines, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    return _three(lines)


def softedge_gradient(job: "_Job") -> np.ndarray:
    # Colour gradient magnitude at three blur scales (scale-normalised, so wide soft contours
    # count as well as sharp ones), normalised by a high percentile and lifted by a gamma, giving
    # HED-like grey edges on black.
    rgb = job.image.astype(np.float32) / 255.0
    total = np.zeros(rgb.shape[:2], np.float32)
    for sigma in (1.0, 2.0, 4.0):
        blurred = cv2.GaussianBlur(rgb, (0, 0), sigma)
        gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=3)
        total += np.sqrt(gx * gx + gy * gy).max(axis=2) * sigma
    peak = float(np.percentile(total, 99.5))
    if peak <= 1e-6:
        return np.zeros_like(job.image)
    edges = np.clip(total / peak, 0.0, 1.0)
    edges = np.clip((edges - 0.04) / 0.96, 0.0, 1.0) ** 0.75  # drop faint noise, lift weak edges
    return _three(edges * 255.0)


def lineart_standard(job: "_Job") -> np.ndarray:
    # How much darker each pixel is than a wide blur of its neighbourhood, scaled so the typical
    # line reaches mid-grey: thin white lines on black, like the ecosystem's lineart_standard.
    gray = _gray(job.image)
    darker = np.clip(cv2.GaussianBlur(gray, (0, 0), 6.0) - gray, 0, 255)
    strong = darker[darker > 8]
    scale = max(16.0, float(np.median(strong))) if strong.size else 16.0
    return _three(darker / scale * 127.0)


def tile_resample(job: "_Job") -> np.ndarray:
    rate = float(job.a)
    height, width = job.image.shape[:2]
    if rate <= 1.0:
        return job.image
    small = cv2.resize(job.image, (max(1, int(width / rate)), max(1, int(height / rate))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def threshold(job: "_Job") -> np.ndarray:
    """White where every channel is above the threshold, black elsewhere."""
    return _three(np.where(job.image.min(axis=2) > job.a, 255, 0).astype(np.uint8))


def _gamma(channel: np.ndarray, gamma: float) -> np.ndarray:
    return _three(((channel.astype(np.float32) / 255.0) ** gamma * 255.0).clip(0, 255).astype(np.uint8))


def recolor_luminance(job: "_Job") -> np.ndarray:
    """Lab lightness, gamma-corrected. The extension converts its RGB picture as if it were BGR,
    so red and blue swap weights; kept, since recolor models see its maps."""
    return _gamma(cv2.cvtColor(job.image, cv2.COLOR_BGR2LAB)[:, :, 0], job.a)


def recolor_intensity(job: "_Job") -> np.ndarray:
    """HSV value (the brightest channel), gamma-corrected."""
    return _gamma(job.image.max(axis=2), job.a)


def color_grid(job: "_Job") -> np.ndarray:
    """The T2I colour adapter's map: the picture shrunk 64 times (cubic) and blown back up
    (nearest), flat blocks of its colours."""
    height, width = job.image.shape[:2]
    small = cv2.resize(job.image, (max(1, width // 64), max(1, height // 64)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)


def blur_gaussian(job: "_Job") -> np.ndarray:
    return cv2.GaussianBlur(job.image, (0, 0), float(job.a))


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Random values on a coarse grid, interpolated smoothly and stretched to [0, 1]."""
    coarse = rng.random((height // cell + 3, width // cell + 3)).astype(np.float32)
    fine = cv2.resize(coarse, (coarse.shape[1] * cell, coarse.shape[0] * cell), interpolation=cv2.INTER_CUBIC)
    fine = fine[cell:cell + height, cell:cell + width]
    low, high = float(fine.min()), float(fine.max())
    return (fine - low) / max(high - low, 1e-6)


def shuffle(job: "_Job") -> np.ndarray:
    # Content shuffle: every output pixel reads the picture at a position given by two smooth
    # random fields spanning the whole picture, which scrambles layout but keeps colours and
    # local texture. Seeded with SHUFFLE_SEED, so the same input gives the same map.
    height, width = job.image.shape[:2]
    rng = np.random.default_rng(SHUFFLE_SEED)
    cell = max(8, min(height, width) // 2)
    map_x = _smooth_noise(rng, height, width, cell) * (width - 1)
    map_y = _smooth_noise(rng, height, width, cell) * (height - 1)
    return cv2.remap(job.image, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def inpaint(job: "_Job") -> np.ndarray:
    alpha = np.where(job.mask, 0, 255).astype(np.uint8)
    return np.dstack([job.image, alpha])
