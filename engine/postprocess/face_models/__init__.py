"""Face restoration networks read from the ecosystem's weight files (models/GFPGAN,
models/Codeformer), written here so no extra library (nor its weight downloads) is needed.

FaceModelLibrary finds the files, loads the chosen network when first used (one kept in memory)
and restores one aligned face crop at a time. It also keeps the face detector (FaceDetector:
OpenCV's Haar cascade) that finds the faces to restore.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from engine.errors import RequestError, UserError
from engine.models.model_catalogue import ModelCatalogue, ModelNotDownloaded

SUFFIXES = (".pth", ".safetensors")


@dataclass(frozen=True)
class FaceModelKind:
    name: str        # what users pick ("GFPGAN", "CodeFormer")
    folder: str      # under models/
    example: str     # the ecosystem's file name for it, for the "no weights" message
    build: Callable[[dict], nn.Module]


def _gfpgan(state: dict) -> nn.Module:
    from engine.postprocess.face_models.gfpgan import gfpgan_from_state_dict
    return gfpgan_from_state_dict(state)


def _codeformer(state: dict) -> nn.Module:
    from engine.postprocess.face_models.codeformer import codeformer_from_state_dict
    return codeformer_from_state_dict(state)


class FaceDetector:
    """OpenCV's frontal-face Haar cascade (shipped inside opencv-python-headless), read from disk
    when first used and kept (it runs on every image of a job); one detection at a time."""

    FILE = "haarcascade_frontalface_default.xml"

    def __init__(self):
        self._cascade = None
        self._lock = threading.Lock()

    def __call__(self, gray, min_size: int) -> list[tuple[int, int, int, int]]:
        """(x, y, width, height) of each frontal face in `gray` (an H x W uint8 array)."""
        import cv2

        with self._lock:
            if self._cascade is None:
                self._cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades, self.FILE)))
            found = self._cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=4,
                                                   minSize=(min_size, min_size))
        return [(int(x), int(y), int(w), int(h)) for x, y, w, h in found]


KINDS = {kind.name: kind for kind in (
    FaceModelKind("GFPGAN", "GFPGAN", "GFPGANv1.4.pth", _gfpgan),
    FaceModelKind("CodeFormer", "Codeformer", "codeformer-v0.1.0.pth", _codeformer),
)}


class FaceModelLibrary:
    def __init__(self, models_dir: Path, catalogue: ModelCatalogue | None = None,
                 folders: dict[str, Path] | None = None):
        """`catalogue`: where the standard files come from, for the download offer; `folders`:
        other folders than models/<kind folder> (--gfpgan-models-path, --codeformer-models-path)."""
        self.models_dir = Path(models_dir)
        self.catalogue = catalogue or ModelCatalogue()
        self._folders = {name: Path(folder) for name, folder in (folders or {}).items()}
        self._lock = threading.Lock()
        self._loaded: tuple[Path, float, nn.Module] | None = None
        self.detector = FaceDetector()

    def folder(self, name: str) -> Path:
        """Where the weights of `name` ("GFPGAN", "CodeFormer") are looked for."""
        return self._folders.get(name, self.models_dir / KINDS[name].folder)

    def _shown(self, name: str) -> str:
        """The folder as messages name it: relative to the models folder when inside it."""
        folder = self.folder(name)
        try:
            return f"models/{folder.relative_to(self.models_dir).as_posix()}"
        except ValueError:
            return str(folder)

    def weights(self, name: str) -> Path | None:
        """The weight file used for `name`: the last by name, so GFPGANv1.4 wins over v1.3.
        Files are only counted when their name says which network they are."""
        folder = self.folder(name)
        if not folder.is_dir():
            return None
        found = [path for path in folder.iterdir() if path.suffix.lower() in SUFFIXES
                 and name.lower() in path.name.lower() and not path.name.startswith(".")]
        return sorted(found, key=lambda p: p.name.lower())[-1] if found else None

    def unavailable_reason(self, name: str) -> str:
        kind = KINDS[name]
        if self.weights(name) is not None:
            return ""
        entry = self.catalogue.get(name)
        download = f", or let the app download it: {entry.size_label}" if entry is not None else ""
        return f"no {kind.name} weights in {self._shown(name)} (put {kind.example} there{download})"

    def require(self, name: str) -> None:
        """ModelNotDownloaded (the download can be offered) when `name` has no weight file yet."""
        if self.weights(name) is None:
            entry = self.catalogue.get(name)
            if entry is not None:
                raise ModelNotDownloaded([entry], self.catalogue, "face_restoration_model")
            raise RequestError(self.unavailable_reason(name), "face_restoration_model")

    def model(self, name: str) -> nn.Module:
        """The network for `name`, built from its file; RequestError when there is none or the
        file is not one."""
        from engine.postprocess.esrgan import read_state

        self.require(name)
        path = self.weights(name)
        with self._lock:
            stamp = path.stat().st_mtime
            if self._loaded is None or self._loaded[:2] != (path, stamp):
                self._loaded = None  # let the old network go before the new one is read
                try:
                    network = KINDS[name].build(read_state(path, "face_restoration_model"))
                except UserError:
                    raise
                except Exception as error:  # a wrong or damaged file is the user's to replace
                    raise RequestError(f"'{path.name}' in {self._shown(name)} is not a {name} "
                                       f"model this app can read: {error}", "face_restoration_model") from error
                self._loaded = (path, stamp, network)
            return self._loaded[2]

    @torch.inference_mode()
    def restore(self, name: str, face: torch.Tensor, device: torch.device | str, fidelity: float) -> torch.Tensor:
        """One face crop (1, 3, size, size) in [-1, 1], at the network's own size, restored."""
        model = self.model(name).to(device)
        face = face.to(device)
        out = model(face, fidelity) if name == "CodeFormer" else model(face)
        return out.float().cpu()
