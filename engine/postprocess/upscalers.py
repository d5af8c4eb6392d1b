"""Model upscalers: the standard ones the ecosystem names ("R-ESRGAN 4x+", "SwinIR 4x", ...; see
engine/models/model_catalogue.py), listed whether or not their file is downloaded yet, and the files
users put in models/ESRGAN, models/RealESRGAN, models/SwinIR or models/ScuNET, listed by file name.
A model is loaded when first used (one kept in memory) and run in tiles so big pictures fit.
LDSR, the ecosystem's latent-diffusion upscaler, is listed when its files are in models/LDSR (or
the folder --ldsr-models-path names) and runs as the ecosystem runs it (engine/postprocess/ldsr.py).

A standard model's file is looked for under the ecosystem's own name in its folder (and the other
names the same file goes by); that name also selects it, since the ecosystem lists a downloaded
file by its name ("SwinIR_4x", "ScuNET") and writes that into infotexts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from engine.postprocess import ldsr

from engine.memory import memory_guard
from engine.memory.memory_guard import FaultPlan
from engine.errors import RequestError
from engine.postprocess.esrgan import read_state
from engine.models.model_catalogue import (
    UPSCALER,
    CatalogueEntry,
    ModelCatalogue,
    ModelNotDownloaded,
)
from engine.postprocess.upscaler_models import build_upscaler

SUFFIXES = (".pth", ".safetensors")
FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "ScuNET")
# What the ecosystem's /upscalers calls the model family of a user's file, by folder.
FAMILY_OF_FOLDER = {"ESRGAN": "ESRGAN_4x", "SwinIR": "SwinIR 4x", "ScuNET": "ScuNET GAN"}
TILE = 192  # input pixels per tile side (with TILE_PAD around it)
TILE_PAD = 16
MAX_PASSES = 3  # a 2x model run again to reach 4x, as the ecosystem does, at most this often


@dataclass(frozen=True)
class UpscalerInfo:
    """One listed upscaler, as the ecosystem's /upscalers describes it."""

    name: str
    family: str | None      # its model_name
    path: Path | None       # the file, when on disk
    url: str | None         # where a standard model is published
    scale: int


class UpscalerLibrary:
    def __init__(self, folders: list[Path], catalogue: ModelCatalogue | None = None,
                 models_dir: Path | None = None, folder_of: Callable[[str], Path] | None = None,
                 ldsr_folder: Path | None = None):
        """`folders`: where users' files are listed from; `models_dir`: where the catalogue's
        folders are (default: the first folder's parent); `folder_of`: a catalogue folder name to
        the folder in use, when start flags moved some (default: inside `models_dir`);
        `ldsr_folder`: where LDSR's model.ckpt and project.yaml are (default: models_dir/LDSR)."""
        self.folders = [Path(f) for f in folders]
        self.catalogue = catalogue or ModelCatalogue(entries=())
        self.models_dir = Path(models_dir) if models_dir else (self.folders[0].parent if self.folders else Path("."))
        self.folder_of = folder_of or (lambda name: self.models_dir / name)
        self.ldsr_folder = Path(ldsr_folder) if ldsr_folder else self.models_dir / "LDSR"
        # The ecosystem's LDSR settings (ldsr_steps, ldsr_cached), read when LDSR runs; the
        # engine points this at its settings. `should_stop`: whether the running job was
        # interrupted (LDSR then stops sampling and gives the picture Lanczos-resized).
        self.options: Callable[[], dict] = lambda: {}
        self.should_stop: Callable[[], bool] = lambda: False
        self.ldsr_seed: int | None = None  # fixed noise for LDSR (tests); None: fresh each run
        self._lock = threading.Lock()
        self._loaded: tuple[Path, float, torch.nn.Module] | None = None
        self._ldsr: tuple[Path, float, ldsr.Ldsr] | None = None

    # What there is.
    def standard(self) -> list[CatalogueEntry]:
        return self.catalogue.of_kind(UPSCALER)

    def standard_file(self, entry: CatalogueEntry) -> Path | None:
        """The file a standard model uses: any of its names in its folder (case ignored)."""
        folder = self.folder_of(entry.folder)
        if not folder.is_dir():
            return None
        wanted = [name.lower() for name in entry.file_names]
        found = {path.name.lower(): path for path in folder.iterdir() if path.is_file()}
        return next((found[name] for name in wanted if name in found), None)

    def _claimed(self) -> dict[str, CatalogueEntry]:
        """File stem (lower case) -> the standard model it belongs to, for its alias names."""
        return {Path(file).stem.lower(): entry for entry in self.standard() for file in entry.file_names}

    def files(self) -> dict[str, Path]:
        """Users' own files: name (file stem) -> file, in name order; standard models' files are
        listed under the standard name instead."""
        claimed = {path for entry in self.standard() if (path := self.standard_file(entry))}
        found = {}
        for folder in self.folders:
            if folder.is_dir():
                for path in sorted(folder.rglob("*")):
                    if path.suffix.lower() in SUFFIXES and not path.name.startswith(".") and path not in claimed:
                        found.setdefault(path.stem, path)
        return dict(sorted(found.items(), key=lambda item: item[0].lower()))

    def ldsr_file(self) -> Path | None:
        """LDSR's weights when they are in its folder."""
        return ldsr.model_file(self.ldsr_folder)

    def names(self) -> list[str]:
        """Every model upscaler by name, sorted as the ecosystem sorts them (case ignored)."""
        extra = [ldsr.NAME] if self.ldsr_file() else []
        return sorted([entry.name for entry in self.standard()] + list(self.files()) + extra, key=str.lower)

    def canonical(self, name: str) -> str | None:
        """The listed name `name` stands for (a standard model's file name selects it too), or None."""
        if not isinstance(name, str):
            return None
        if self.catalogue.get(name) is not None and self.catalogue.get(name).kind == UPSCALER:
            return name
        if name in self.files():
            return name
        if name == ldsr.NAME and self.ldsr_file():
            return name
        entry = self._claimed().get(name.lower())
        return entry.name if entry is not None else None

    def describe(self) -> list[UpscalerInfo]:
        files = self.files()
        described = []
        for name in self.names():
            entry = self.catalogue.get(name)
            if name == ldsr.NAME and name not in files and entry is None:
                # The ecosystem lists it with no model_name of its own; scale 4 is its factor.
                described.append(UpscalerInfo(name, None, self.ldsr_file(), None, 4))
            elif entry is not None:
                described.append(UpscalerInfo(name, entry.family, self.standard_file(entry),
                                              self.catalogue.url(entry), entry.scale))
            else:
                described.append(UpscalerInfo(name, _family_of(files[name], self.folders), files[name], None, 4))
        return described

    # Using one.
    def refuse_unsupported(self, name: str, field: str = "upscaler") -> None:
        """RequestError saying what is missing, for a name the ecosystem has that this app can
        run only once its files are in place (LDSR without models/LDSR/model.ckpt)."""
        if isinstance(name, str) and name.strip() == ldsr.NAME and self.ldsr_file() is None:
            raise RequestError(ldsr.missing_message(self.ldsr_folder), field)

    def require(self, name: str, field: str = "upscaler") -> None:
        """ModelNotDownloaded when `name` is a standard model whose file is not on disk yet."""
        entry = self.catalogue.get(self.canonical(name) or "")
        if entry is not None and self.standard_file(entry) is None:
            raise ModelNotDownloaded([entry], self.catalogue, field)

    def path_of(self, name: str) -> Path:
        canonical = self.canonical(name)
        if canonical is None:
            raise KeyError(name)
        self.require(canonical)
        entry = self.catalogue.get(canonical)
        return self.standard_file(entry) if entry is not None else self.files()[canonical]

    def model(self, name: str) -> torch.nn.Module:
        path = self.path_of(name)
        with self._lock:
            stamp = path.stat().st_mtime
            if self._loaded is None or self._loaded[:2] != (path, stamp):
                self._loaded = None  # let the old network go before the new one is read
                self._loaded = (path, stamp, build_upscaler(read_state(path), path.name))
            return self._loaded[2]

    @torch.inference_mode()
    def upscale(self, image: Image.Image, name: str, width: int, height: int,
                device: torch.device | str = "cpu", faults: FaultPlan | None = None) -> Image.Image:
        """The picture through the model (its own factor, tile by tile; again while still smaller
        than asked, as the ecosystem does), then to width x height. `faults`: the job's test plan
        of memory faults."""
        if self.canonical(name) == ldsr.NAME and name not in self.files():
            return self._ldsr_upscale(image, width, height, device, faults)
        with memory_guard.stage("upscale", faults=faults):
            model = self.model(name).to(device)
            result = image.convert("RGB")
            for index in range(MAX_PASSES):
                if index:  # another pass: from no more than it takes to reach the target once
                    smaller = (min(result.width, -(-width // model.scale)), min(result.height, -(-height // model.scale)))
                    if smaller != result.size:
                        result = result.resize(smaller, Image.Resampling.LANCZOS)
                result = _through(model, result, device)
                if model.scale <= 1 or (result.width >= width and result.height >= height):
                    break
        if result.size != (width, height):
            result = result.resize((width, height), Image.Resampling.LANCZOS)
        return result


    def ldsr_model(self) -> ldsr.Ldsr:
        """LDSR read from its folder (kept while the ldsr_cached setting is on and the file is
        unchanged)."""
        path = self.ldsr_file()
        if path is None:
            raise RequestError(ldsr.missing_message(self.ldsr_folder), "upscaler")
        stamp = path.stat().st_mtime
        if self._ldsr is not None and self._ldsr[:2] == (path, stamp):
            return self._ldsr[2]
        self._ldsr = None
        model = ldsr.Ldsr.from_folder(self.ldsr_folder)
        if self.options().get("ldsr_cached", False):
            self._ldsr = (path, stamp, model)
        return model

    def _ldsr_upscale(self, image: Image.Image, width: int, height: int, device,
                      faults: FaultPlan | None = None) -> Image.Image:
        """One LDSR pass at the scale asked (it lands on it: the ecosystem resizes the picture by
        scale / 4 first), then to width x height. Not tiled by TILE: LDSR patches its latents itself."""
        image = image.convert("RGB")
        scale = max(width / image.width, height / image.height)
        options = self.options()
        steps = int(options.get("ldsr_steps", ldsr.DEFAULT_STEPS))
        with memory_guard.stage("upscale", faults=faults), self._lock:
            model = self.ldsr_model().to(device)
            try:
                result = model.upscale(image, scale, steps, seed=self.ldsr_seed, should_stop=self.should_stop)
            finally:
                if self._ldsr is None:  # not cached: let it go now
                    model.to("cpu")
                    del model
        if result is None:  # interrupted
            result = image
        if result.size != (width, height):
            result = result.resize((width, height), Image.Resampling.LANCZOS)
        return result


def _family_of(path: Path, folders: list[Path]) -> str | None:
    for folder in folders:
        if folder in path.parents:
            return FAMILY_OF_FOLDER.get(folder.name)
    return None


def _through(model: torch.nn.Module, image: Image.Image, device) -> Image.Image:
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    pixels = pixels.permute(2, 0, 1)[None].to(device)
    out = _tiled(model, pixels)
    array = (out[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(array, "RGB")


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
