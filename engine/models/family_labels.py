"""The model family each checkpoint in the list holds ("SD 1.x", "SDXL", "FLUX.1-dev",
"SD 3.5 Large", ...), for /sdapi/v1/sd-models: read from a .safetensors header (a few kilobytes,
never the weights) or a diffusers folder's JSON files, and remembered per file signature (path,
size, modification time) so listing the models again reads nothing that has not changed."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from engine.errors import CheckpointError
from engine.families import recognise_flow_file, recognise_flow_folder
from engine.families.stable_diffusion import LABELS, folder_label
from engine.models.loading import detect_layout, read_shapes
from engine.models.registry import CheckpointInfo


def family_label(info: CheckpointInfo) -> str | None:
    """The family of a checkpoint, or None where it cannot be told cheaply (a pickle, which
    would have to be unpickled whole, or a file that is no model this app knows)."""
    if info.kind == "builtin":
        return LABELS["sd1"]
    if info.kind in ("safetensors", "gguf"):
        return _file_label(Path(info.path), info.name)
    if info.kind == "diffusers":
        return _folder_label(Path(info.path))
    return None


def _file_label(path: Path, name: str) -> str | None:
    try:
        shapes = read_shapes(path, allow_unsafe=False)
    except CheckpointError:
        return None
    flow_model = recognise_flow_file(shapes)
    if flow_model is not None:
        return flow_model.variant
    try:
        layout = detect_layout(shapes, name)
    except CheckpointError:
        return None
    return layout.label


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _folder_label(folder: Path) -> str | None:
    flow_model = recognise_flow_folder(folder)
    if flow_model is not None:
        return flow_model.variant
    return folder_label(_read_json(folder / "model_index.json"), _read_json(folder / "text_encoder" / "config.json"))


def _signature(info: CheckpointInfo) -> tuple | None:
    target = Path(info.path) / "model_index.json" if info.kind == "diffusers" else Path(info.path)
    try:
        stat = target.stat()
    except OSError:
        return None
    return (info.path, stat.st_size, stat.st_mtime_ns)


class FamilyLabels:
    """family_label() remembered per file signature (a file replaced under the same name is read again)."""

    def __init__(self) -> None:
        self._known: dict[tuple, str | None] = {}
        self._lock = threading.Lock()

    def of(self, info: CheckpointInfo) -> str | None:
        if info.kind == "builtin":
            return family_label(info)
        signature = _signature(info)
        if signature is None:
            return None
        with self._lock:
            if signature in self._known:
                return self._known[signature]
        label = family_label(info)
        with self._lock:
            self._known[signature] = label
        return label
