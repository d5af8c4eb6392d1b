"""The checkpoint registry: which models are on disk, their names, titles and hashes.

Folders and titles follow the mature web UIs, so users can point at folders they already have and
client programs can name a model the way they always did ("v1-5-pruned-emaonly.safetensors
[6ce0161689]", the bare name, or the short hash).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from engine.errors import NotFoundError
from engine.files import HashCache

log = logging.getLogger(__name__)

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# Quantised FLUX.1 / SD 3.x transformers (city96's and others' GGUF files).
GGUF_SUFFIXES = (".gguf",)
CHECKPOINT_SUFFIXES = SAFE_SUFFIXES + (".ckpt",) + GGUF_SUFFIXES
DIFFUSERS_MARKER = "model_index.json"
BUILTIN_DEMO = "demo-tiny"


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint the app can load. `name` is its path below the models folder, with suffix."""

    name: str
    path: str  # absolute path of the file or diffusers folder; "" for the built-in demo model
    kind: str  # "safetensors" | "pickle" | "gguf" | "diffusers" | "builtin"
    sha256: str | None = None

    @property
    def model_name(self) -> str:
        """The name without folder suffix, as written in infotext's `Model:`."""
        stem = self.name
        for suffix in CHECKPOINT_SUFFIXES:
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
        return stem.replace("\\", "/")

    @property
    def short_hash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        if self.kind == "builtin":
            return f"{self.name} (built-in demo)"
        return f"{self.name} [{self.short_hash}]" if self.short_hash else self.name

    def matches(self, wanted: str, fold_case: bool = False) -> bool:
        wanted = wanted.strip()
        if not wanted:
            return False
        candidates = {self.title, self.name, self.model_name, self.name.split(" [")[0]}
        if self.path:
            candidates.add(self.path)
        if self.short_hash:
            candidates.update({self.short_hash, self.sha256})
        # Titles from another install carry a hash in brackets; the name before it still counts.
        bare = wanted.split(" [")[0]
        # The file's name alone too: A1111's short titles (a refiner's in the infotext) drop the folders.
        names = {self.name, self.model_name, self.model_name.rsplit("/", 1)[-1]}
        if fold_case:
            wanted, bare = wanted.lower(), bare.lower()
            candidates, names = {c.lower() for c in candidates}, {n.lower() for n in names}
        return wanted in candidates or bare in names


def _hash_target(path: Path, kind: str) -> Path | None:
    """The file whose sha256 identifies a checkpoint (a diffusers folder: its UNet's weights, or
    its transformer's for FLUX.1 / SD 3.x when they are in one file)."""
    if kind != "diffusers":
        return path
    for folder in ("unet", "transformer"):
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                     "diffusion_pytorch_model.bin"):
            candidate = path / folder / name
            if candidate.is_file():
                return candidate
    return None


class ModelRegistry:
    """Scans the checkpoint folders. Cheap: hashes come from the cache or are computed on load."""

    def __init__(self, folders: list[Path], hashes: HashCache, extra_files: list[Path] | None = None,
                 include_demo: bool = False, hashing: bool = True):
        self.folders = [Path(f) for f in folders]
        self.extra_files = [Path(f) for f in extra_files or []]
        self.hashes = hashes
        self.include_demo = include_demo
        self.hashing = hashing  # --no-hashing: never read a whole checkpoint just to hash it
        self._lock = threading.Lock()
        self._checkpoints: list[CheckpointInfo] = []
        self.refresh()

    def refresh(self) -> list[CheckpointInfo]:
        found: list[CheckpointInfo] = []
        if self.include_demo:
            found.append(CheckpointInfo(BUILTIN_DEMO, "", "builtin", _demo_hash()))
        seen: set[str] = set()
        for folder in self.folders:
            for path, name in _scan(folder):
                self._add(found, seen, path, name)
        for file in self.extra_files:
            if file.exists():
                self._add(found, seen, file.resolve(), file.name)
        with self._lock:
            self._checkpoints = found
        return list(found)

    def _add(self, found: list, seen: set, path: Path, name: str) -> None:
        if str(path) in seen:
            return
        seen.add(str(path))
        kind = _kind_of(path)
        target = _hash_target(path, kind)
        sha = self.hashes.cached(target) if target else None
        found.append(CheckpointInfo(name, str(path), kind, sha))

    @property
    def checkpoints(self) -> list[CheckpointInfo]:
        with self._lock:
            return list(self._checkpoints)

    def titles(self) -> list[str]:
        return [c.title for c in self.checkpoints]

    def find(self, wanted: str) -> CheckpointInfo:
        for checkpoint in self.checkpoints:
            if checkpoint.matches(wanted):
                return checkpoint
        # Client programs that lower-case names before matching (webuiapi's util_set_model does).
        folded = [c for c in self.checkpoints if c.matches(wanted, fold_case=True)]
        if len(folded) == 1:
            return folded[0]
        known = ", ".join(self.titles()) or "none: put a .safetensors file into models/Stable-diffusion"
        raise NotFoundError(f"Checkpoint not found: '{wanted}'. Available: {known}", "checkpoint")

    def with_hash(self, checkpoint: CheckpointInfo) -> CheckpointInfo:
        """The same checkpoint with its sha256 computed (once; cached on disk)."""
        if checkpoint.sha256 or checkpoint.kind == "builtin" or not self.hashing:
            return checkpoint
        target = _hash_target(Path(checkpoint.path), checkpoint.kind)
        if target is None or not target.is_file():
            return checkpoint
        hashed = CheckpointInfo(checkpoint.name, checkpoint.path, checkpoint.kind,
                                self.hashes.sha256(target))
        with self._lock:
            self._checkpoints = [hashed if c.path == checkpoint.path else c for c in self._checkpoints]
        return hashed


def _kind_of(path: Path) -> str:
    if path.is_dir():
        return "diffusers"
    if path.suffix.lower() in SAFE_SUFFIXES:
        return "safetensors"
    if path.suffix.lower() in GGUF_SUFFIXES:
        return "gguf"
    return "pickle"


def _scan(folder: Path):
    """(path, name relative to folder) of every checkpoint below folder, sorted by name."""
    if not folder.is_dir():
        return []
    results = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        root_path = Path(root)
        if DIFFUSERS_MARKER in files and root_path != folder:
            results.append((root_path.resolve(), root_path.relative_to(folder).as_posix()))
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file in files:
            if file.lower().endswith(CHECKPOINT_SUFFIXES) and not file.startswith("."):
                path = root_path / file
                results.append((path.resolve(), path.relative_to(folder).as_posix()))
    return sorted(results, key=lambda item: item[1].lower())


def _demo_hash() -> str:
    return hashlib.sha256(b"sd-studio built-in demo model v1").hexdigest()
