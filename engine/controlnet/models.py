"""ControlNet models: finding them on disk, telling SD 1.x from SDXL ones, loading them offline.

Users download ControlNets in three shapes, all handled here:

* the original single-file layout of lllyasviel's releases (``control_model.input_blocks...``,
  ``zero_convs``, ``input_hint_block``, ``middle_block_out``; some files drop the
  ``control_model.`` prefix, the v1.0 ones carry a whole SD checkpoint beside it),
* a diffusers-layout state dict saved as one ``.safetensors`` (how most SDXL ControlNets travel),
* a diffusers folder (``config.json`` + ``diffusion_pytorch_model[.fp16].safetensors``).

Single files are converted by us (key renaming and configs in ``layouts.py``) rather than by
``ControlNetModel.from_single_file``: diffusers
0.42's converter assumes a 4-stage hint encoder (``input_hint_block.14``), drops SDXL's
``label_emb`` and loads non-strictly, so a wrong file would come up half-random. The model is
built from the family's published config (``model_configs/controlnet-<family>``) with every
width the tensors reveal taken from the tensors, then loaded with ``strict=True``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.devices import DeviceConfig, free_memory
from engine.errors import CheckpointError, NotFoundError
from engine.controlnet import annotator_downloads, control_lora, ip_adapter, style_adapter, t2i_adapter
from engine.controlnet.annotators import Annotators
from engine.controlnet.layouts import (
    CONFIG_ROOT,
    FAMILIES,
    FAMILY_LABELS,
    FIELD,
    base_config,
    config_from_shapes,
    family_of_config,
    family_of_shapes,
    global_pooling_from_sidecar,
    is_union,
    to_diffusers_names,
)

log = logging.getLogger(__name__)

MAX_LOADED = 3

SAFE_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".pth", ".ckpt", ".pt", ".bin")  # .bin: IP-Adapters as released (ip-adapter_sd15.bin)
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
IGNORED_FOLDERS = ("annotators",)
# The diffusers classes a ControlNet folder may hold (a Union / ProMax model is the second).
FOLDER_CLASSES = ("ControlNetModel", "ControlNetUnionModel", "T2IAdapter")

# ---------------------------------------------------------------------------------------------
# Reading files


def _short(error: BaseException, limit: int = 300) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:limit]


def _safetensors_shapes(path: Path, name: str) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except Exception as error:  # safetensors has its own error types for a bad header
        raise CheckpointError(f"'{name}' is not a valid .safetensors file (it may be incomplete or "
                              f"corrupt: {_short(error)}). Download it again.", FIELD) from error


def _read_tensors(path: Path, name: str, allow_unsafe: bool) -> dict[str, torch.Tensor]:
    if path.suffix.lower() == SAFE_SUFFIX:
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except Exception as error:
            raise CheckpointError(f"'{name}' is not a valid .safetensors file (it may be incomplete "
                                  f"or corrupt: {_short(error)}). Download it again.", FIELD) from error
    from engine.models.loading import read_pickled_state_dict
    try:
        state = read_pickled_state_dict(path, allow_unsafe)
    except CheckpointError as error:
        raise CheckpointError(error.message, FIELD) from error
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _weights_file(folder: Path) -> Path | None:
    return next((folder / n for n in DIFFUSERS_WEIGHTS if (folder / n).is_file()), None)


def _is_diffusers_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and _weights_file(folder) is not None


# ---------------------------------------------------------------------------------------------
# Building and saving


def build_from_state_dict(state: dict[str, torch.Tensor], config: dict, name: str = "ControlNet"):
    """A ControlNetModel (a ControlNetUnionModel for a Union / ProMax file) of ``config`` holding
    exactly ``state`` (diffusers names), strictly."""
    import diffusers

    model_class = diffusers.ControlNetUnionModel if is_union(state) else diffusers.ControlNetModel
    try:
        with torch.device("meta"):  # no memory or init work for weights about to be replaced
            model = model_class.from_config(copy.deepcopy(config))
    except Exception as error:
        raise CheckpointError(f"'{name}': its tensors describe no valid ControlNet ({_short(error)})",
                              FIELD) from error
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise CheckpointError(f"'{name}' does not match the ControlNet its tensors describe: "
                              f"{_describe_mismatch(error)}", FIELD) from error
    return model.eval()


def _describe_mismatch(error: RuntimeError) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[1:4])[:400] or _short(error)


def load_single_file(path: Path, name: str, config_root: Path = CONFIG_ROOT,
                     allow_unsafe: bool = False):
    """A ControlNetModel (float32 or the file's dtype, on the CPU) from a single file (a
    T2IAdapter for a T2I-Adapter file)."""
    tensors = _read_tensors(path, name, allow_unsafe)
    if t2i_adapter.is_t2i_adapter(tensors):
        return t2i_adapter.build(tensors, name)
    if style_adapter.is_style_adapter(tensors):
        return style_adapter.build(tensors, name)
    names = to_diffusers_names(tensors.keys(), name)
    state = {new: tensors[old] for old, new in names.items()}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    family = family_of_shapes(shapes)
    _check_supported(family, name)
    try:
        config = config_from_shapes(shapes, base_config(family, config_root))
    except (ValueError, KeyError) as error:
        raise CheckpointError(f"'{name}': cannot tell its architecture from its tensors ({error})",
                              FIELD) from error
    if global_pooling_from_sidecar(path):
        config["global_pool_conditions"] = True
    return build_from_state_dict(state, config, name)


def _check_supported(family: str, name: str) -> None:
    if family not in FAMILIES:
        raise CheckpointError(
            f"'{name}' is an {FAMILY_LABELS.get(family, family)} ControlNet; only SD 1.x and SDXL "
            "ControlNets are supported.", FIELD)


# ---------------------------------------------------------------------------------------------
# The library


@dataclass(frozen=True)
class ControlNetFile:
    name: str
    path: Path
    kind: str  # "safetensors" | "pickle" | "diffusers"


class ControlNetLibrary:
    """The ControlNets in ``folder``: names, families (read cheaply) and an LRU of loaded models."""

    def __init__(self, folder: Path, device_config: DeviceConfig, allow_unsafe: bool = False,
                 config_root: Path = CONFIG_ROOT, max_loaded: int = MAX_LOADED):
        self.folder = Path(folder)
        self.device_config = device_config
        self.allow_unsafe = allow_unsafe
        self.config_root = Path(config_root)
        self.max_loaded = max(1, int(max_loaded))
        self._lock = threading.RLock()
        self._entries: dict[str, ControlNetFile] = {}
        self._families: dict[tuple, str] = {}
        self._kinds: dict[tuple, bool] = {}   # (what was asked, file version) -> answer
        self._control_loras: dict[tuple, bool] = {}
        self._encoder: tuple | None = None  # (stamp, (CLIP image encoder, its processor)) for IP-Adapters
        self._loaded: OrderedDict[str, tuple[tuple, object]] = OrderedDict()
        # The preprocessors' detectors (annotators/ below the folder), on the same device.
        self.annotators = Annotators(str(device_config.device))
        self.refresh()

    # -- listing

    def refresh(self) -> dict[str, Path]:
        found = sorted(self._scan(), key=lambda e: e[0].as_posix().lower())
        stems = [rel.name if kind == "diffusers" else rel.stem for rel, _, kind in found]
        entries = {}
        for stem, (rel, path, kind) in zip(stems, found):
            # Two models with one stem (a .pth and its .safetensors, or two subfolders) keep paths.
            name = stem if stems.count(stem) == 1 else rel.as_posix()
            entries[name] = ControlNetFile(name, path, kind)
        with self._lock:
            self._entries = dict(sorted(entries.items(), key=lambda item: item[0].lower()))
        return self.files()

    @property
    def ip_adapter_folder(self) -> Path:
        """ComfyUI's folder of IP-Adapter files, beside models/ControlNet."""
        return self.folder.parent / "ipadapter"

    def _scan(self):
        yield from self._scan_folder(self.folder)
        # ComfyUI's folder holds IP-Adapter files (ip-adapter_sd15.bin as released, or .safetensors).
        for rel, path, kind in self._scan_folder(self.ip_adapter_folder):
            if kind != "diffusers":  # named ipadapter/<file> where a stem is in both folders
                yield Path(self.ip_adapter_folder.name) / rel, path, kind

    def _scan_folder(self, top: Path):
        if not top.is_dir():
            return
        for root, dirs, files in os.walk(top, followlinks=True):
            here = Path(root)
            if here != top and _is_diffusers_folder(here):
                dirs[:] = []
                yield here.relative_to(top), here, "diffusers"
                continue
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d.lower() not in IGNORED_FOLDERS)
            for file in sorted(files):
                suffix = Path(file).suffix.lower()
                if file.startswith(".") or suffix not in (SAFE_SUFFIX,) + PICKLE_SUFFIXES:
                    continue
                kind = "safetensors" if suffix == SAFE_SUFFIX else "pickle"
                yield (here / file).relative_to(top), here / file, kind

    def files(self) -> dict[str, Path]:
        with self._lock:
            return {name: entry.path for name, entry in self._entries.items()}

    def names(self) -> list[str]:
        return list(self.files())

    def entry(self, wanted: str) -> ControlNetFile:
        """The model called ``wanted`` (name, file name, relative path, or "name [hash]")."""
        for attempt in range(2):
            with self._lock:
                found = self._match(wanted)
            if found is not None and found.path.exists():
                return found
            if attempt == 0:
                self.refresh()  # a file added or moved since the last scan
        known = ", ".join(self.names()) or f"none: put ControlNet .safetensors files into {self.folder}"
        raise NotFoundError(f"ControlNet model not found: '{wanted}'. Available: {known}", FIELD)

    def _match(self, wanted: str) -> ControlNetFile | None:
        wanted = (wanted or "").strip()
        if not wanted:
            return None
        bare = wanted.split(" [")[0].strip()
        for candidate in (wanted, bare):
            if candidate in self._entries:
                return self._entries[candidate]
        for entry in self._entries.values():
            if entry.path.is_relative_to(self.folder):
                rel = entry.path.relative_to(self.folder).as_posix()
            else:
                rel = (Path(self.ip_adapter_folder.name) / entry.path.relative_to(self.ip_adapter_folder)).as_posix()
            if bare in (entry.path.name, rel, str(entry.path)):
                return entry
        return None

    # -- families

    def family(self, name: str) -> str:
        """The model's family: "sd1", "sdxl" (or "sd2", which load() refuses), read cheaply from the
        safetensors header or config.json and cached per file version."""
        entry = self.entry(name)
        stamp = _stamp(entry)
        with self._lock:
            cached = self._families.get(stamp)
        if cached is not None:
            return cached
        if entry.kind == "diffusers":
            config = self._folder_config(entry)
            family = (t2i_adapter.family_of_config(config) if config.get("_class_name") == "T2IAdapter"
                      else family_of_config(config))
        elif self.is_ip_adapter(entry.name):
            family = ip_adapter.family_of(ip_adapter.key_shapes(entry.path, entry.path.name, self.allow_unsafe))
        else:
            if entry.kind == "safetensors":
                stored = _safetensors_shapes(entry.path, entry.path.name)
            else:
                stored = {k: tuple(v.shape) for k, v in
                          _read_tensors(entry.path, entry.path.name, self.allow_unsafe).items()}
            if control_lora.is_control_lora(stored):
                family = control_lora.family_of_keys(stored)
            elif t2i_adapter.is_t2i_adapter(stored):
                family = t2i_adapter.family_of_keys(stored)
            elif style_adapter.is_style_adapter(stored):
                family = style_adapter.family_of_keys(stored)
            else:
                names = to_diffusers_names(stored, entry.path.name)
                family = family_of_shapes({new: stored[old] for old, new in names.items()})
        with self._lock:
            self._families[stamp] = family
        return family

    def is_ip_adapter(self, name: str) -> bool:
        """Whether the model called ``name`` is an IP-Adapter (image_proj.* and ip_adapter.* tensors)."""
        return self._keys_are(name, ip_adapter.is_ip_adapter_keys)

    def is_style_adapter(self, name: str) -> bool:
        """Whether the model called ``name`` is a T2I style adapter (style_embedding)."""
        return self._keys_are(name, style_adapter.is_style_adapter)

    def _keys_are(self, name: str, test) -> bool:
        """`test` of the single-file model's tensor names, read cheaply and cached per file version."""
        entry = self.entry(name)
        if entry.kind == "diffusers":
            return False
        stamp = (test.__name__, *_stamp(entry))
        with self._lock:
            cached = self._kinds.get(stamp)
        if cached is None:
            cached = test(ip_adapter.key_shapes(entry.path, entry.path.name, self.allow_unsafe))
            with self._lock:
                self._kinds[stamp] = cached
        return cached

    def families(self) -> dict[str, str | None]:
        """name -> family for every model; None where the file cannot be read or is refused."""
        result = {}
        for name in self.names():
            try:
                result[name] = self.family(name)
            except (CheckpointError, NotFoundError) as error:
                log.info("ControlNet %s: %s", name, error.message)
                result[name] = None
        return result

    def _folder_config(self, entry: ControlNetFile) -> dict:
        try:
            config = json.loads((entry.path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CheckpointError(f"'{entry.name}': unreadable config.json ({_short(error)})", FIELD) from error
        if config.get("_class_name", "ControlNetModel") not in FOLDER_CLASSES:
            raise CheckpointError(f"'{entry.name}' is a {config.get('_class_name')}, not a Stable "
                                  "Diffusion ControlNet (ControlNetModel).", FIELD)
        return config

    # -- loading

    def load(self, name: str, unet=None):
        """The ControlNetModel called ``name`` on the configured device and dtype (cached, LRU). A
        Control-LoRA is built from ``unet`` (the checkpoint's, as it runs), each time, uncached."""
        entry = self.entry(name)
        if self.is_control_lora(entry):
            if unet is None:
                raise CheckpointError(f"'{entry.name}' is a Control-LoRA: it is built from the loaded "
                                      "checkpoint's UNet, in a job", FIELD)
            tensors = _read_tensors(entry.path, entry.path.name, self.allow_unsafe)
            model = control_lora.build(tensors, unet, entry.name)
            torch.nn.Module.to(model, device=self.device_config.device, dtype=self.device_config.dtype)
            return model
        stamp = _stamp(entry)
        with self._lock:
            cached = self._loaded.get(entry.name)
            if cached is not None and cached[0] == stamp:
                self._loaded.move_to_end(entry.name)
                return cached[1]
            model = self._load(entry)
            self._loaded[entry.name] = (stamp, model)
            self._loaded.move_to_end(entry.name)
            dropped = False
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
                dropped = True
        if dropped:
            free_memory()
        return model

    def is_control_lora(self, entry: ControlNetFile) -> bool:
        """Whether the file is a Control-LoRA: its header read once per file version. Stability
        publishes them as .safetensors only: a pickle is not unpickled to ask."""
        if entry.kind != "safetensors":
            return False
        stamp = _stamp(entry)
        with self._lock:
            cached = self._control_loras.get(stamp)
        if cached is None:
            cached = control_lora.is_control_lora(_safetensors_shapes(entry.path, entry.path.name))
            with self._lock:
                self._control_loras[stamp] = cached
        return cached

    def loaded_names(self) -> list[str]:
        """Names of the models held, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def encoder_path(self, kind: str) -> Path:
        """The CLIP image encoder `kind`, downloaded on first use when the annotators may download."""
        return annotator_downloads.encoder_path(self.folder, kind, self.annotators.fetcher,
                                                self.annotators.downloads_on())

    def image_encoder(self, path: Path):
        """The CLIP image encoder at ``path`` and its image processor (ip_adapter.load_encoder), kept
        in RAM for the next job: one at a time (a ViT-H is 2.5 GB in float32, a ViT-bigG 7 GB)."""
        path = Path(path)
        target = path / "config.json" if path.is_dir() else path
        stat = target.stat()
        stamp = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if self._encoder is not None and self._encoder[0] == stamp:
                return self._encoder[1]
            self._encoder = None
        loaded = ip_adapter.load_encoder(path, self.allow_unsafe)
        with self._lock:
            self._encoder = (stamp, loaded)
        return loaded

    def clear(self) -> None:
        with self._lock:
            held = bool(self._loaded) or self._encoder is not None
            self._loaded.clear()
            self._encoder = None
        if held:  # a full garbage collection takes most of a second with a checkpoint loaded
            free_memory()

    def _load(self, entry: ControlNetFile):
        if entry.kind == "diffusers":
            model = self._load_folder(entry)
        elif self.is_ip_adapter(entry.name):
            raise CheckpointError(f"'{entry.name}' is an IP-Adapter, not a ControlNet: use it with an "
                                  "ip-adapter_* preprocessor", FIELD)
        else:
            model = load_single_file(entry.path, entry.path.name, self.config_root, self.allow_unsafe)
        device, dtype = self.device_config.device, self.device_config.dtype
        # nn.Module.to: diffusers' ModelMixin.to warns on every dtype cast in 0.42.
        torch.nn.Module.to(model, device=device, dtype=dtype)
        log.info("loaded ControlNet %s (%s)", entry.name, entry.kind)
        return model.eval()

    def _load_folder(self, entry: ControlNetFile):
        import diffusers

        config = self._folder_config(entry)
        model_class = getattr(diffusers, config.get("_class_name", "ControlNetModel"))
        if config.get("_class_name") != "T2IAdapter":
            _check_supported(family_of_config(config), entry.name)
        weights = _weights_file(entry.path)
        variant = "fp16" if weights is not None and weights.name.endswith(".fp16.safetensors") else None
        try:
            return model_class.from_pretrained(str(entry.path), local_files_only=True, variant=variant,
                                               use_safetensors=True)
        except Exception as error:
            raise CheckpointError(f"Could not load ControlNet folder '{entry.name}': {_short(error)}",
                                  FIELD) from error


def _stamp(entry: ControlNetFile) -> tuple:
    """What identifies one version of a model on disk: path, modification time and size."""
    target = entry.path
    if entry.kind == "diffusers":
        target = _weights_file(entry.path) or entry.path / "config.json"
    try:
        stat = target.stat()
    except OSError as error:
        raise CheckpointError(f"ControlNet '{entry.name}' cannot be read: {_short(error)}", FIELD) from error
    return str(target), stat.st_mtime_ns, stat.st_size
