"""Model upscalers found on disk (models/ESRGAN, models/RealESRGAN): listed by file name, loaded
when first used (one kept in memory), run in tiles so big pictures fit."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import memory_guard
from .esrgan import build_from_state, read_state

SUFFIXES = (".pth", ".safetensors")
TILE = 192  # input pixels per tile side (with TILE_PAD around it)
TILE_PAD = 16


class UpscalerLibrary:
    def __init__(self, folders: list[Path]):
        self.folders = [Path(f) for f in folders]
        self._lock = threading.Lock()
        self._loaded: tuple[str, torch.nn.Module] | None = None

    def files(self) -> dict[str, Path]:
        """Upscaler name (file stem) -> file, in name order."""
        found = {}
        for folder in self.folders:
            if folder.is_dir():
                for path in sorted(folder.rglob("*")):
                    if path.suffix.lower() in SUFFIXES and not path.name.startswith("."):
                        found.setdefault(path.stem, path)
        return dict(sorted(found.items(), key=lambda item: item[0].lower()))

    def names(self) -> list[str]:
        return list(self.files())

    def model(self, name: str) -> torch.nn.Module:
        with self._lock:
            if self._loaded is None or self._loaded[0] != name:
                path = self.files()[name]
                self._loaded = (name, build_from_state(read_state(path), path.name))
            return self._loaded[1]

    @torch.inference_mode()
    def upscale(self, image: Image.Image, name: str, width: int, height: int,
                device: torch.device | str = "cpu") -> Image.Image:
        """The picture through the model (its own factor, tile by tile), then to width x height."""
        with memory_guard.stage("upscale"):
            model = self.model(name).to(device)
            pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
            pixels = pixels.permute(2, 0, 1)[None].to(device)
            out = _tiled(model, pixels)
        array = (out[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
        result = Image.fromarray(array, "RGB")
        if result.size != (width, height):
            result = result.resize((width, height), Image.Resampling.LANCZOS)
        return result


def _tiled(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Run the model on overlapping tiles and keep each tile's centre, so the seams match."""
    _, _, height, width = pixels.shape
    if height <= TILE and width <= TILE:
        return model(pixels)
    scale = model.scale
    out = torch.zeros(1, 3, height * scale, width * scale, device=pixels.device)
    for top in range(0, height, TILE):
        for left in range(0, width, TILE):
            y1, x1 = max(0, top - TILE_PAD), max(0, left - TILE_PAD)
            y2, x2 = min(height, top + TILE + TILE_PAD), min(width, left + TILE + TILE_PAD)
            tile = model(pixels[:, :, y1:y2, x1:x2])
            bottom, right = min(height, top + TILE), min(width, left + TILE)
            out[:, :, top * scale:bottom * scale, left * scale:right * scale] = tile[
                :, :, (top - y1) * scale:(bottom - y1) * scale, (left - x1) * scale:(right - x1) * scale]
    return out
