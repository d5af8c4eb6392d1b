"""LoRA files from models/Lora, applied for one job through diffusers' PEFT integration.

`<lora:name:weight>` (or `<lora:name:te_weight:unet_weight>`) in a prompt loads that file's
weights as an adapter, several at once with their own weights; when the job ends every adapter
is removed again, so the next job starts from the untouched model. Only .safetensors files are
read: they hold tensors and nothing that runs.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file

from engine.memory.memory_guard import is_out_of_memory
from engine.files import HashCache
from engine.prompts.prompt_parser import ExtraNetwork, lora_weights

log = logging.getLogger(__name__)
LORA_KINDS = ("lora", "lyco")


@dataclass(frozen=True)
class LoraFile:
    name: str   # what users write in <lora:name:...>: the file name without suffix
    path: str
    alias: str  # the name the trainer stored in its metadata, if any

    @property
    def title(self) -> str:
        return self.name


class LoraLibrary:
    """The LoRA files on disk, by name. Thread-safe; refresh() rescans."""

    def __init__(self, folders: Path | list[Path], hashes: HashCache):
        """`folders`: the LoRA folder, then any others (the old separate LyCORIS folder)."""
        folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
        self.folders = [Path(folder) for folder in folders]
        self.folder = self.folders[0]
        self.hashes = hashes
        self._lock = threading.Lock()
        self._files: dict[str, LoraFile] = {}
        self.refresh()

    def refresh(self) -> list[LoraFile]:
        found: dict[str, LoraFile] = {}
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for root, dirs, files in os.walk(folder, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for file in sorted(files):
                    if file.lower().endswith(".safetensors") and not file.startswith("."):
                        path = Path(root) / file
                        name = path.stem
                        found.setdefault(name, LoraFile(name, str(path), _alias(path) or name))
        with self._lock:
            self._files = dict(sorted(found.items(), key=lambda item: item[0].lower()))
        return self.files

    @property
    def files(self) -> list[LoraFile]:
        with self._lock:
            return list(self._files.values())

    def find(self, name: str) -> LoraFile | None:
        with self._lock:
            if name in self._files:
                return self._files[name]
            for lora in self._files.values():  # a trainer's alias works too, as users expect
                if lora.alias == name:
                    return lora
        return None

    def short_hash(self, lora: LoraFile) -> str:
        return self.hashes.sha256(Path(lora.path))[:12]


def _alias(path: Path) -> str | None:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception:  # an unreadable file is reported when it is used, not when listed
        return None
    return metadata.get("ss_output_name")


def _adapter_name(index: int, name: str) -> str:
    return f"lora{index}_" + re.sub(r"\W", "_", name)[:40]


@dataclass
class AppliedLoras:
    hashes: dict[str, str]    # name -> short hash, for the infotext's "Lora hashes"
    warnings: list[str]


@contextmanager
def applied_loras(pipe, calls: list[ExtraNetwork], library: LoraLibrary):
    """Load the LoRAs a prompt names into `pipe` for the duration of the block, then remove them."""
    applied = AppliedLoras({}, [])
    names, weights = [], []
    try:
        for index, call in enumerate(c for c in calls if c.kind in LORA_KINDS):
            lora = library.find(call.name)
            if lora is None:
                applied.warnings.append(f"LoRA not found: {call.name}")
                continue
            te_weight, unet_weight = lora_weights(call)
            adapter = _adapter_name(index, lora.name)
            try:
                pipe.load_lora_weights(load_file(lora.path), adapter_name=adapter)
            except Exception as error:  # a file diffusers cannot read must not fail the job
                if is_out_of_memory(error):  # not the file's fault: the job ends with that message
                    raise
                applied.warnings.append(f"LoRA {lora.name} could not be loaded: {_first_line(error)}")
                log.warning("LoRA %s failed to load", lora.path, exc_info=True)
                continue
            names.append(adapter)
            weights.append(_component_weights(pipe, adapter, te_weight, unet_weight))
            applied.hashes[lora.name] = library.short_hash(lora)
        if names:
            pipe.set_adapters(names, adapter_weights=weights)
        yield applied
    finally:
        if names or _has_adapters(pipe):
            pipe.unload_lora_weights()


def _component_weights(pipe, adapter: str, te_weight: float, unet_weight: float) -> dict:
    parts = {part for part, adapters in pipe.get_list_adapters().items() if adapter in adapters}
    weights = {"unet": unet_weight, "text_encoder": te_weight, "text_encoder_2": te_weight}
    return {part: weight for part, weight in weights.items() if part in parts}


def _has_adapters(pipe) -> bool:
    try:
        return any(pipe.get_list_adapters().values())
    except Exception:
        return False


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
