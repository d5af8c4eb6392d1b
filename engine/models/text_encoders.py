"""The parts users put beside a FLUX.1 / SD 3.x transformer: text encoders in models/text_encoder
(the folder Forge and ComfyUI use: clip_l.safetensors, clip_g.safetensors, t5xxl_fp16.safetensors,
...) and 16-channel VAEs in models/VAE (ae.safetensors), and the "modules" choice that picks them
(Forge's `forge_additional_modules`: a list of files).

Each file is told by its keys and shapes, read from its header (engine/families/files.py's facts), never by
its name. A CLIP text tower is CLIP-L or CLIP-G by its width: 768 and 1280 for the real ones, or,
for other widths, the widths of the config folder the checkpoint loads with (the tiny test models).

Only files inside these two folders can be picked: a modules choice comes from users over the
network, so a path anywhere else on the disk is refused rather than read.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.errors import CheckpointError
from engine.families.files import CLIP_G, CLIP_L, CLIP_Q_KEY, T5, T5_ENCODER_KEY, VAE, VAE_DECODER_IN

MODULE_SUFFIXES = (".safetensors",)
REAL_CLIP_WIDTHS = {CLIP_L: 768, CLIP_G: 1280}
PART_WORDS = {CLIP_L: "a CLIP-L text encoder", CLIP_G: "a CLIP-G text encoder", T5: "a T5-XXL text encoder",
              VAE: "a 16-channel VAE (ae.safetensors)"}

# What a file is, read from its header: T5, CLIP (with its width), a VAE (with its latent
# channels), or unknown.
T5_KIND, CLIP_KIND, VAE_KIND, UNKNOWN_KIND = "t5", "clip", "vae", "unknown"

# The settings that hold the choice: Forge's global one, and ours per checkpoint (file name ->
# the chosen files joined by ", ").
MODULES_KEY, CHECKPOINT_MODULES_KEY = "forge_additional_modules", "checkpoint_modules"
MODULES_JOIN = ", "


@dataclass(frozen=True)
class ModuleFile:
    name: str       # path below its folder, as the choice lists it ("t5xxl_fp16.safetensors")
    path: str
    kind: str       # T5_KIND | CLIP_KIND | VAE_KIND | UNKNOWN_KIND
    width: int = 0  # CLIP: hidden width; VAE: latent channels

    def part(self, clip_widths: Mapping[str, int]) -> str | None:
        """The part this file can be (CLIP_L, CLIP_G, T5, VAE), or None."""
        if self.kind == T5_KIND:
            return T5
        if self.kind == VAE_KIND and self.width == 16:
            return VAE
        if self.kind == CLIP_KIND:
            for widths in (REAL_CLIP_WIDTHS, clip_widths):
                found = [part for part, width in widths.items() if width == self.width]
                if len(found) == 1:
                    return found[0]
        return None

    def describe(self) -> str:
        if self.kind == VAE_KIND:
            return "a VAE (SD 1.x / 2.x / SDXL)" if self.width == 4 else f"a {self.width}-channel VAE"
        if self.kind == CLIP_KIND:
            return f"a CLIP text encoder {self.width} wide"
        return "a T5 text encoder" if self.kind == T5_KIND else "not a text encoder or VAE this app recognises"


def read_module_kind(path: Path) -> tuple[str, int]:
    """(kind, width) of a component file, from its header."""
    from engine.models.loading import read_shapes

    shapes = read_shapes(path, allow_unsafe=False)
    if T5_ENCODER_KEY in shapes:
        return T5_KIND, 0
    for key in (CLIP_Q_KEY, CLIP_Q_KEY.removeprefix("text_model.")):
        if key in shapes:
            return CLIP_KIND, shapes[key][0]
    if VAE_DECODER_IN in shapes:
        return VAE_KIND, shapes[VAE_DECODER_IN][1]
    return UNKNOWN_KIND, 0


class TextEncoderLibrary:
    """The files in models/text_encoder (and the VAEs in models/VAE) a modules choice can name."""

    def __init__(self, folder: Path | None, vae_folder: Path | None = None):
        self.folder = Path(folder) if folder else None
        self.vae_folder = Path(vae_folder) if vae_folder else None
        self._lock = threading.Lock()
        self._files: list[ModuleFile] = []
        # path -> (signature, kind, width): a header is read again only when the file changes.
        self._kinds: dict[str, tuple[tuple, str, int]] = {}
        self.refresh()

    @property
    def folders(self) -> list[Path]:
        return [folder for folder in (self.folder, self.vae_folder) if folder is not None]

    def refresh(self) -> list[ModuleFile]:
        found = []
        for folder in self.folders:
            for path in _scan(folder):
                found.append(self._describe(path, path.relative_to(folder).as_posix()))
        with self._lock:
            self._files = found
        return list(found)

    def _describe(self, path: Path, name: str) -> ModuleFile:
        stat = path.stat()
        signature = (stat.st_size, stat.st_mtime_ns)
        known = self._kinds.get(str(path))
        if known is None or known[0] != signature:
            try:
                kind, width = read_module_kind(path)
            except CheckpointError:   # a broken or half-copied file: listed, never picked
                kind, width = UNKNOWN_KIND, 0
            known = self._kinds[str(path)] = (signature, kind, width)
        return ModuleFile(name, str(path), known[1], known[2])

    @property
    def files(self) -> list[ModuleFile]:
        with self._lock:
            return list(self._files)

    def choices(self) -> list[str]:
        """Every file a modules choice can name: the text encoders, then the VAEs of 16 channels."""
        return [f.name for f in self.files if f.kind in (T5_KIND, CLIP_KIND) or (f.kind == VAE_KIND and f.width == 16)]

    def find(self, wanted: str) -> ModuleFile | None:
        """The file a choice entry names: a name below one of the folders, or a path inside one.
        A path anywhere else is refused (CheckpointError)."""
        wanted = str(wanted).strip()
        if not wanted:
            return None
        for module in self.files:
            if wanted in (module.name, Path(module.name).stem):
                return module
        path = Path(wanted).expanduser()
        resolved = path.resolve() if path.is_absolute() or len(path.parts) > 1 else None
        if resolved is None:
            return None
        inside = [folder for folder in self.folders if resolved.is_relative_to(folder.resolve())]
        if not inside:
            raise CheckpointError(
                f"Module '{wanted}' is outside the module folders: only files in "
                f"{' and '.join(str(f) for f in self.folders) or 'models/text_encoder and models/VAE'} "
                "can be picked (a path elsewhere is not read).", "modules")
        for module in self.files:
            if Path(module.path).resolve() == resolved:
                return module
        if resolved.is_file() and resolved.suffix.lower() in MODULE_SUFFIXES:   # added since the last refresh
            return self._describe(resolved, resolved.relative_to(inside[0].resolve()).as_posix())
        return None

    def resolve_modules(self, choice: Iterable[str] | str | None, missing: Iterable[str],
                        clip_widths: Mapping[str, int] | None = None) -> dict[str, Path]:
        """{part: file} for a checkpoint that lacks the parts `missing` (CLIP_L, CLIP_G, T5, VAE).

        A chosen file fills the part it is (and may replace a part the checkpoint has; chosen
        files of parts this model does not use are left out: the choice is kept across
        checkpoints, as Forge's is). With an empty choice each missing
        part is picked automatically when exactly one file of its kind is there. Anything else
        (a file not found, of no usable kind, two of one part, a part with none or several
        candidates) is refused by name."""
        widths = dict(clip_widths or REAL_CLIP_WIDTHS)
        missing = tuple(missing)
        entries = [choice] if isinstance(choice, str) else list(choice or ())
        entries = [entry for entry in entries if str(entry).strip()]
        chosen: dict[str, ModuleFile] = {}
        for entry in entries:
            module = self.find(entry)
            if module is None:
                raise CheckpointError(f"Module '{entry}' not found. Available: "
                                      f"{', '.join(self.choices()) or 'none'}", "modules")
            part = module.part(widths)
            if part is None and module.kind == CLIP_KIND:
                # A CLIP tower of a width this model's encoders do not have (CLIP-G for FLUX,
                # in a choice kept across checkpoints): not one of its parts, so not used.
                continue
            if part is None:
                raise CheckpointError(f"Module '{module.name}' is {module.describe()}: FLUX.1 and SD 3 models take "
                                      "CLIP-L, CLIP-G and T5-XXL text encoders and a 16-channel VAE.", "modules")
            if part in chosen:
                raise CheckpointError(f"Modules '{chosen[part].name}' and '{module.name}' are both "
                                      f"{PART_WORDS[part]}: pick one.", "modules")
            chosen[part] = module
        if not entries:
            for part in missing:
                candidates = [m for m in self.files if m.part(widths) == part]
                if len(candidates) == 1:
                    chosen[part] = candidates[0]
        unfilled = [part for part in missing if part not in chosen]
        if unfilled:
            raise CheckpointError(self._missing_message(unfilled, widths, bool(entries)), "modules")
        return {part: Path(module.path) for part, module in chosen.items()}

    def _missing_message(self, parts: list[str], widths: Mapping[str, int], picked: bool) -> str:
        lines = []
        for part in parts:
            candidates = [m.name for m in self.files if m.part(widths) == part]
            where = "models/VAE" if part == VAE else "models/text_encoder"
            if not candidates:
                lines.append(f"{PART_WORDS[part]} (none found: put one in {where})")
            elif len(candidates) == 1 or picked:
                lines.append(f"{PART_WORDS[part]} (pick {' or '.join(candidates)})")
            else:
                lines.append(f"{PART_WORDS[part]} (several found, pick one of {', '.join(candidates)})")
        return "This checkpoint needs " + "; ".join(lines) + " in the modules choice."


def _scan(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in files if f.lower().endswith(MODULE_SUFFIXES) and not f.startswith(".")]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix().lower())


def resolve_modules(library: TextEncoderLibrary, choice, missing, clip_widths=None) -> dict[str, Path]:
    """Module-level form of TextEncoderLibrary.resolve_modules."""
    return library.resolve_modules(choice, missing, clip_widths)
