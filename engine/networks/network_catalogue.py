"""The extra networks as cards: every LoRA (LyCORIS files included), embedding and checkpoint
with its preview, user metadata, model-site info, training metadata and family.

Listing reads only what is small: the folder listings, each file's stat, the safetensors
headers (never the weights) and the JSON files beside the models; each is remembered per file
signature (path, size, modification time), so listing 2,000 LoRAs again reads nothing that has
not changed. Writing is confined to the place A1111 writes: `name.json` and `name.png` beside a
network that is listed, inside its folder.
"""

from __future__ import annotations

import io
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import RequestError
from engine.files import write_atomically
from engine.networks import network_files as files
from engine.option import Option

LORA, EMBEDDING, CHECKPOINT = "lora", "textual_inversion", "checkpoints"
KINDS = (CHECKPOINT, EMBEDDING, LORA)
SUFFIXES = {LORA: (".safetensors",), EMBEDDING: (".pt", ".bin", ".safetensors")}
SECTION = "Extra Networks"

# A1111's names and defaults, so its clients' settings apply.
EXTRA_NETWORK_OPTIONS = (
    Option("extra_networks_default_multiplier", 1.0, "Default multiplier (weight) a LoRA card inserts",
           SECTION, minimum=-10.0, maximum=10.0),
    Option("extra_networks_card_width", 0, "Card width in pixels (0: the default, 180)", SECTION,
           minimum=0, maximum=1000),
    Option("extra_networks_card_height", 0, "Card height in pixels (0: the default, 240)", SECTION,
           minimum=0, maximum=1000),
    Option("extra_networks_add_text_separator", " ", "Text put between the prompt and what a card adds",
           SECTION),
    Option("extra_networks_hide_incompatible", False,
           "Hide the cards of networks made for another model family than the loaded checkpoint's "
           "(otherwise they are dimmed)", SECTION),
    Option("lora_preferred_name", "Alias from file", "When adding a LoRA to the prompt, refer to it by",
           SECTION, choices=("Alias from file", "Filename")),
)


@dataclass(frozen=True)
class NetworkEntry:
    """One card: a network file and what is known about it."""

    kind: str
    name: str                  # the file name without suffix (what prompts use)
    alias: str                 # the trainer's ss_output_name, else the name
    path: Path                 # absolute
    relative: str              # below its folder, with "/" (the card's id within its kind)
    folder: str                # the sub-folder, "" at the top
    mtime: float
    size: int
    preview: Path | None
    family: str | None         # "sd1", "sd2", "sdxl", "flux", "sd3"; None when unknown
    user: dict = field(default_factory=dict)       # name.json
    civitai: dict = field(default_factory=dict)    # name.civitai.info
    metadata: dict = field(default_factory=dict)   # the header's __metadata__, decoded
    title: str = ""            # checkpoints: the title the checkpoint list uses

    @property
    def preview_relative(self) -> str | None:
        if self.preview is None:
            return None
        return str(Path(self.relative).parent / self.preview.name).replace("\\", "/").removeprefix("./")


def _stem(path: Path) -> Path:
    return path.with_name(path.name[:-len(path.suffix)] if path.suffix else path.name)


class NetworkCatalogue:
    """The cards of each kind. Thread-safe; the caches are keyed by file signatures."""

    def __init__(self, lora_folders: list[Path], embedding_folders: list[Path]):
        self.folders = {LORA: [Path(f) for f in lora_folders], EMBEDDING: [Path(f) for f in embedding_folders],
                        CHECKPOINT: []}
        self._checkpoint_files: list[tuple[str, Path]] = []
        self._lock = threading.Lock()
        # By path: (signature, what was read), so a changed file replaces its old entry.
        self._headers: dict[str, tuple[tuple, tuple[str | None, dict[str, Any]]]] = {}
        self._sidecars: dict[str, tuple[tuple, dict]] = {}

    # -- listing ---------------------------------------------------------------------------

    def set_checkpoints(self, folders: list[Path], files: list[tuple[str, Path]]) -> None:
        """The checkpoint folders and files (title, path) as the model registry lists them."""
        with self._lock:
            self.folders[CHECKPOINT] = [Path(f) for f in folders]
            self._checkpoint_files = [(title, Path(path)) for title, path in files]

    def entries(self, kind: str) -> list[NetworkEntry]:
        """Every network of `kind`, sorted by name (the first folder wins a name found twice)."""
        if kind == CHECKPOINT:
            return self._checkpoints()
        if kind not in SUFFIXES:
            raise RequestError(f"Unknown kind of network {kind!r}: one of {', '.join(KINDS)}", "kind")
        found: dict[str, NetworkEntry] = {}
        for root in self.folders[kind]:
            if not root.is_dir():
                continue
            for directory, dirs, names in os.walk(root, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                here = set(names)
                for name in sorted(names):
                    if name.startswith(".") or not name.lower().endswith(SUFFIXES[kind]):
                        continue
                    entry = self._entry(kind, root, Path(directory) / name, here)
                    if entry is not None:
                        found.setdefault(entry.name, entry)
        return sorted(found.values(), key=lambda e: e.name.lower())

    def _checkpoints(self) -> list[NetworkEntry]:
        with self._lock:
            listed, roots = list(self._checkpoint_files), list(self.folders[CHECKPOINT])
        entries = []
        for title, path in listed:
            root = next((r for r in roots if _inside(path, r)), path.parent)
            try:
                here = set(os.listdir(path.parent))
            except OSError:
                continue
            entry = self._entry(CHECKPOINT, root, path, here, title)
            if entry is not None:
                entries.append(entry)
        return entries

    def _entry(self, kind: str, root: Path, path: Path, here: set[str], title: str = "") -> NetworkEntry | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        stem = _stem(path) if path.is_file() else path
        relative = path.relative_to(root).as_posix() if _inside(path, root) else path.name
        folder = Path(relative).parent.as_posix()
        user = self._sidecar(stem.with_name(stem.name + ".json"), here)
        civitai = self._sidecar(stem.with_name(stem.name + ".civitai.info"), here)
        family, metadata = self._header(kind, path, stat)
        decides, chosen = files.user_family(user)
        if decides:
            family = chosen
        alias = metadata.get("ss_output_name")
        return NetworkEntry(
            kind=kind, name=stem.name, alias=alias if isinstance(alias, str) and alias else stem.name, path=path,
            relative=relative, folder="" if folder == "." else folder, mtime=stat.st_mtime,
            size=stat.st_size, preview=files.preview_of(stem, here), family=family, user=user,
            civitai=civitai, metadata=metadata, title=title or stem.name)

    def _header(self, kind: str, path: Path, stat: os.stat_result) -> tuple[str | None, dict[str, Any]]:
        """(family, decoded header metadata) of a .safetensors file, read once per signature."""
        if path.suffix.lower() != ".safetensors":
            return None, {}
        signature = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._headers.get(str(path))
        if cached is not None and cached[0] == signature:
            return cached[1]
        shapes, metadata = files.read_safetensors_header(path)
        if kind == EMBEDDING:
            family = files.embedding_family(shapes)
        else:
            family = files.family_from_metadata(metadata) or files.family_from_shapes(shapes)
        read = (family, files.decoded_metadata(metadata))
        with self._lock:
            self._headers[str(path)] = (signature, read)
        return read

    def _sidecar(self, path: Path, here: set[str]) -> dict:
        if path.name not in here:
            return {}
        try:
            stat = path.stat()
        except OSError:
            return {}
        signature = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._sidecars.get(str(path))
        if cached is not None and cached[0] == signature:
            return dict(cached[1])
        data = files.read_json_file(path)
        with self._lock:
            self._sidecars[str(path)] = (signature, data)
        return dict(data)

    def find(self, kind: str, relative: str) -> NetworkEntry:
        """The network of `kind` at `relative` (below its folder), or RequestError."""
        if not isinstance(relative, str) or not relative or len(relative) > 4096:
            raise RequestError("Name the network by its path below its folder", "path")
        for entry in self.entries(kind):
            if entry.relative == relative:
                return entry
        raise RequestError(f"No {kind} network {relative!r} is listed", "path")

    # -- the thumbnail route ---------------------------------------------------------------

    def preview_file(self, kind: str, relative: str) -> Path | None:
        """The picture at `relative` below a folder of `kind`, only if it is a listed network's
        preview there; None for anything else (another file, a path leading out, a link out)."""
        if kind not in KINDS or not isinstance(relative, str) or not relative or "\\" in relative \
                or "\x00" in relative or relative.startswith("/") or ".." in Path(relative).parts:
            return None
        if not relative.lower().endswith(files.PREVIEW_SUFFIXES):
            return None
        with self._lock:
            roots = list(self.folders[kind])
        for root in roots:
            candidate = root / relative
            try:
                if not candidate.is_file() or not _inside(candidate.resolve(), root.resolve()):
                    continue
            except OSError:  # a name too long for the file system, a loop of links
                continue
            for suffix in files.PREVIEW_SUFFIXES:
                if not candidate.name.lower().endswith(suffix) or len(candidate.name) == len(suffix):
                    continue
                stem = candidate.with_name(candidate.name[:-len(suffix)])
                if self._is_network(kind, stem) and files.preview_of(stem) == candidate:
                    return candidate.resolve()
        return None

    def _is_network(self, kind: str, stem: Path) -> bool:
        if kind == CHECKPOINT:
            with self._lock:
                listed = {str(path) for _, path in self._checkpoint_files}
            return str(stem) in listed or any(str(stem) + suffix in listed for suffix in
                                              (".safetensors", ".ckpt", ".gguf", ".pt", ".bin", ".pth"))
        return any(stem.with_name(stem.name + suffix).is_file() for suffix in SUFFIXES[kind])

    # -- writing ---------------------------------------------------------------------------

    def save_user_metadata(self, kind: str, relative: str, values: dict[str, Any]) -> NetworkEntry:
        """Write the card editor's fields to `name.json` beside the network (atomically), keeping
        the keys it does not edit; returns the entry as listed afterwards."""
        entry = self.find(kind, relative)
        clean = checked_user_values(values)
        target = _stem(entry.path).with_name(_stem(entry.path).name + ".json") if entry.path.is_file() \
            else entry.path.with_name(entry.path.name + ".json")
        self._check_writable(entry, target)
        data = files.read_json_file(target)
        data.update(clean)
        _write(target, json.dumps(data, indent=4, ensure_ascii=False).encode("utf-8"))
        return self.find(kind, relative)

    def save_preview(self, kind: str, relative: str, image) -> Path:
        """Save a PIL image as the network's preview, `name.png` beside it (A1111's place)."""
        entry = self.find(kind, relative)
        stem = _stem(entry.path) if entry.path.is_file() else entry.path
        target = stem.with_name(stem.name + ".png")
        self._check_writable(entry, target)
        buffer = io.BytesIO()
        image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB").save(buffer, format="PNG")
        _write(target, buffer.getvalue())
        return target

    def _check_writable(self, entry: NetworkEntry, target: Path) -> None:
        roots = self.folders[entry.kind] or [entry.path.parent]
        real = target.parent.resolve()
        if not any(_inside(real, root.resolve()) for root in roots) or target.is_symlink():
            raise RequestError(f"{entry.relative} is not inside its network folder: nothing was written", "path")


def checked_user_values(values: dict[str, Any]) -> dict[str, Any]:
    """The editor's fields checked: texts of bounded length, a number for the weight, a known
    "sd version". RequestError names the first bad one."""
    if not isinstance(values, dict):
        raise RequestError("The metadata must be an object of the editor's fields", "metadata")
    clean: dict[str, Any] = {}
    for key, value in values.items():
        if key not in files.USER_KEYS:
            raise RequestError(f"Unknown metadata field {key!r}: one of {', '.join(files.USER_KEYS)}", key)
        if key == "preferred weight":
            try:
                number = float(value if value not in (None, "") else 0)
            except (TypeError, ValueError):
                raise RequestError(f"preferred weight must be a number, got {str(value)[:40]!r}", key) from None
            if not -10 <= number <= 10:
                raise RequestError(f"preferred weight must be between -10 and 10, got {number}", key)
            clean[key] = number
        elif key == "sd version":
            value = value or "Unknown"
            if value not in files.SD_VERSIONS:
                raise RequestError(f"sd version must be one of {', '.join(files.SD_VERSIONS)}, got {str(value)[:40]!r}",
                                   key)
            clean[key] = value
        else:
            if value is None:
                value = ""
            if not isinstance(value, str) or len(value) > files.MAX_TEXT_CHARS:
                raise RequestError(f"{key} must be text of at most {files.MAX_TEXT_CHARS} characters", key)
            clean[key] = value
    return clean


def _write(target: Path, data: bytes) -> None:
    try:
        write_atomically(target, data)
    except OSError as error:  # a read-only folder, a folder where the file should be
        raise RequestError(f"Could not write {target.name}: {error.strerror or error}", "path") from None


def _inside(path: Path, root: Path) -> bool:
    try:
        Path(path).relative_to(root)
    except ValueError:
        return False
    return True
