"""LoRA files from models/Lora, merged into the model's weights for one job, as A1111 does.

`<lora:name:weight>` (or `<lora:name:te_weight:unet_weight>`) in a prompt adds that file's change
to the layers it names (of the UNet, or of FLUX.1's / SD 3.x's transformer, and the text encoders),
several files at once with their own weights, in every format A1111 1.10 reads (lora_formats.py)
and under every key naming (lora_keys.py). When the job ends the original weights are copied
back, bit for bit, so the next job starts from the untouched model and no checkpoint is reloaded.
A file that changes nothing in this model is named in the job's warnings and left out of the
infotext's `Lora hashes`. Only .safetensors files are read: they hold tensors and nothing that runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file

from engine.files import HashCache
from engine.memory.memory_guard import is_out_of_memory
from engine.families import lora_made_for
from engine.networks.lora_keys import LayerIndex, denoising_network, split_key
from engine.networks.lora_merge import MergedWeights
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
        self._short_hashes: dict[tuple, str] = {}
        # Per model (keyed by its UNet or transformer, which every pipeline made from it shares):
        # what is merged.
        self._merged: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
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
        """What A1111 writes in `Lora hashes`: the file's `sshs_model_hash` metadata if it has one,
        else kohya's "addnet" hash (sha256 of the tensor data after the safetensors header), 12
        hex digits."""
        stat = os.stat(lora.path)
        key = (lora.path, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key in self._short_hashes:
                return self._short_hashes[key]
        value = (_metadata(Path(lora.path)).get("sshs_model_hash") or addnet_hash(lora.path))[:12]
        with self._lock:
            self._short_hashes[key] = value
        return value

    def merged_weights(self, pipe) -> MergedWeights:
        with self._lock:
            return self._merged.setdefault(denoising_network(pipe), MergedWeights())


def addnet_hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        header = int.from_bytes(handle.read(8), "little")
        handle.seek(8 + header)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception:  # an unreadable file is reported when it is used, not when listed
        return {}


def _alias(path: Path) -> str | None:
    return _metadata(path).get("ss_output_name")


FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "flux": "FLUX.1", "sd3": "SD 3.x"}
# A1111 takes these out of the name it writes in `Lora hashes` (they separate the entries).
_HASH_NAME_SYMBOLS = str.maketrans("", "", ":,")


@dataclass
class AppliedLoras:
    hashes: dict[str, str] = field(default_factory=dict)  # mentioned name -> short hash ("Lora hashes")
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Use:
    """One `<lora:...>` of the job, resolved to its file."""
    lora: LoraFile
    mentioned: str
    te_weight: float
    unet_weight: float

    def signature(self) -> tuple:
        stat = os.stat(self.lora.path)
        return self.lora.path, stat.st_mtime_ns, stat.st_size, self.te_weight, self.unet_weight


@contextmanager
def applied_loras(pipe, calls: list[ExtraNetwork], library: LoraLibrary, family: str | None = None):
    """The LoRAs a prompt names merged into `pipe`'s weights for the block, the originals back after.

    A pass inside the job (hires fix) naming no LoRA of its own keeps the job's; one naming others
    has its own for its duration, then the job's again."""
    merged = library.merged_weights(pipe)
    calls = [call for call in calls if call.kind in LORA_KINDS]
    if not calls and merged.depth:
        yield AppliedLoras()
        return
    outer_plan = merged.plan
    merged.depth += 1
    try:
        applied, plan = AppliedLoras(), []
        for call in calls:
            lora = library.find(call.name)
            if lora is None:
                applied.warnings.append(f"LoRA not found: {call.name}")
                continue
            plan.append(_Use(lora, call.name, *lora_weights(call)))
        yield _merge_plan(pipe, merged, plan, library, family, applied)
    finally:
        merged.depth -= 1
        if merged.depth == 0:
            merged.restore()
        elif merged.plan != outer_plan:
            _merge_plan(pipe, merged, outer_plan, library, family, AppliedLoras())


def _merge_plan(pipe, merged: MergedWeights, plan: list[_Use], library: LoraLibrary, family: str | None,
                applied: AppliedLoras) -> AppliedLoras:
    """Merge `plan` unless it is what is merged already (then its report is reused)."""
    try:
        signature = tuple(use.signature() for use in plan)
    except OSError as error:  # a file deleted since the scan: reported below, when it is read
        signature = (str(error),)
    if signature != merged.signature or merged.result is None:
        merged.restore()
        merged.result = _merge_all(pipe, merged, plan, library, FAMILY_LABELS.get(family or "", "this"))
        merged.signature, merged.plan = signature, plan
    applied.hashes.update(merged.result.hashes)
    applied.warnings.extend(merged.result.warnings)
    return applied


def _merge_all(pipe, merged: MergedWeights, plan: list[_Use], library: LoraLibrary, family: str) -> AppliedLoras:
    """Merge each file of `plan`. A file with a layer that cannot take its change (the shapes of
    another model) changes nothing: the weights are restored and the others merged again."""
    index = LayerIndex(pipe) if plan else None
    refused: dict[int, str] = {}
    while True:
        notes: dict[int, list[str]] = {}
        hashes: dict[str, str] = {}
        for number, use in enumerate(plan):
            if number in refused:
                continue
            notes[number] = []
            outcome = _merge_file(merged, index, use, family, notes[number])
            if outcome == "refused":
                refused[number] = notes[number][-1]
                merged.restore()
                break
            if outcome == "applied":
                hashes[use.mentioned.translate(_HASH_NAME_SYMBOLS)] = library.short_hash(use.lora)
        else:
            warnings = [note for number in range(len(plan))
                        for note in ([refused[number]] if number in refused else notes.get(number, []))]
            return AppliedLoras(hashes, warnings)


def _merge_file(merged: MergedWeights, index: LayerIndex, use: _Use, family: str, warnings: list[str]) -> str:
    """Merge one file: "applied" when it changed (or, at strength 0, matched) a layer, "skipped"
    when it matched none, "refused" when a layer could not take its change (it must be undone)."""
    name = use.lora.name
    try:
        tensors = load_file(use.lora.path)
    except Exception as error:  # a damaged file must not fail the job
        if is_out_of_memory(error):  # not the file's fault: the job ends with that message
            raise
        log.warning("LoRA %s could not be read", use.lora.path, exc_info=True)
        warnings.append(f"LoRA {name} could not be read: {_first_line(error)}; it was not applied")
        return "skipped"
    layers, unmatched = index.group(tensors)
    model = f"{family} model" if family == "this" else f"this {family} model"
    other = _other_family(layers, unmatched, family)
    if other is not None:
        # Its text-encoder layers may fit by name (CLIP-L is in every family), but without its
        # denoising network a file made for another kind of model is not what the prompt asked for.
        warnings.append(f"LoRA {name}: it is made for {other} models: none of its transformer or UNet "
                        f"layers is in {model}; it was not applied")
        return "skipped"
    outcome = merged.merge(layers, {"unet": use.unet_weight, "text_encoder": use.te_weight,
                                    "text_encoder_2": use.te_weight, "text_encoder_3": use.te_weight})
    if outcome.failures:
        warnings.append(f"LoRA {name}: its layers do not fit {model} (made for another model?): "
                        f"{outcome.failures[0]}; it was not applied" if not outcome.fits else
                        f"LoRA {name} could not be merged: {outcome.failures[0]}; it was not applied")
        return "refused"
    if outcome.layers == 0:
        if any(index.names_layer(key) for key in unmatched) or all(split_key(key) is None for key in unmatched):
            reason = f"its tensors are of no LoRA format known here (e.g. {unmatched[0]!r})"
        else:
            reason = f"none of its {len(tensors)} tensors matched a layer of {model}"
        warnings.append(f"LoRA {name}: {reason}; it was not applied")
        return "skipped"
    if unmatched:
        warnings.append(f"LoRA {name}: {len(unmatched)} of its {len(tensors)} tensors matched no layer "
                        f"of {model} and were left out")
    return "applied"


def _other_family(layers, unmatched: list[str], family: str) -> str | None:
    """The kind of model a file was made for, when its denoising-network keys all miss this model
    and name another kind's blocks (a FLUX.1 file on SD, an SD file on SD 3.x); else None."""
    if any(layer.component == "unet" for layer in layers):
        return None
    network_keys = [key for key in unmatched if (split_key(key) or ("",))[0] == "unet"]
    made_for = lora_made_for(network_keys) if network_keys else None
    other = None if made_for is None else "SD" if made_for == "sd" else FAMILY_LABELS[made_for]
    flow = family in ("FLUX.1", "SD 3.x")
    if other is None or other == family or (other == "SD" and not flow):
        return None
    return "SD 1.x / 2.x / SDXL" if other == "SD" else other


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
