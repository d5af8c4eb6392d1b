"""Tiles for SD upscale: where tiles of a size start to cover a picture with a given overlap, and
the feathered weights that blend overlapping tiles back together."""

from __future__ import annotations

import numpy as np

from engine.request import SIZE_STEP


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles of `tile` pixels start so that they cover `length` with at least `overlap`."""
    if length <= tile:
        return [0]
    stride = max(SIZE_STEP, tile - overlap)
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def feather(width: int, height: int, overlap: int) -> np.ndarray:
    """Weights rising from the tile's edges over the overlap, so neighbours blend smoothly."""
    def ramp(n: int) -> np.ndarray:
        edge = max(1, min(overlap, n // 2))
        distance = np.minimum(np.arange(n), np.arange(n)[::-1]) + 1
        return np.clip(distance / edge, 0.0, 1.0)
    return np.outer(ramp(height), ramp(width))[..., None]
