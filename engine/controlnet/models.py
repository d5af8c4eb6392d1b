"""ControlNet models: finding them on disk, telling SD 1.x from SDXL ones, loading them offline.

Users download ControlNets in three shapes, all handled here:

* the original single-file layout of lllyasviel's releases (``control_model.input_blocks...``,
  ``zero_convs``, ``input_hint_block``, ``middle_block_out``; some files drop the
  ``control_model.`` prefix, the v1.0 ones carry a whole SD checkpoint beside it),
* a diffusers-layout state dict saved as one ``.safetensors`` (how most SDXL ControlNets travel),
* a diffusers folder (``config.json`` + ``diffusion_pytorch_model[.fp16].safetensors``).

Single files are converted here rather than by ``ControlNetModel.from_single_file``: diffusers
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
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from ..devices import DeviceConfig, free_memory
from ..errors import CheckpointError, NotFoundError

log = logging.getLogger(__name__)

FAMILIES = ("sd1", "sdxl")
FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
CONFIG_ROOT = Path(__file__).resolve().parent.parent / "model_configs"
MAX_LOADED = 3
FIELD = "controlnet"

SAFE_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".pth", ".ckpt", ".pt")
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
IGNORED_FOLDERS = ("annotators",)

LDM_PREFIX = "control_model."
# Original ResBlock sub-modules -> diffusers ResnetBlock2D names.
_RESNET_NAMES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                 "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
# SDXL's micro-conditioning numbers (sizes and crop) fed to the added embedding.
_TIME_IDS = 6


# ---------------------------------------------------------------------------------------------
# Key layouts


@dataclass(frozen=True)
class _Structure:
    levels: int          # resolution levels of the encoder
    layers: int          # ResBlocks per level
    hint_convs: int      # convolutions between the hint encoder's first and last one
    mid_attention: bool  # the middle block has a transformer between its two ResBlocks


def _module_pairs(s: _Structure) -> list[tuple[str, str, bool]]:
    """(diffusers module, original module, is a ResBlock) for every module holding weights."""
    pairs = [("time_embedding.linear_1", "time_embed.0", False),
             ("time_embedding.linear_2", "time_embed.2", False),
             ("add_embedding.linear_1", "label_emb.0.0", False),
             ("add_embedding.linear_2", "label_emb.0.2", False),
             ("conv_in", "input_blocks.0.0", False),
             ("controlnet_cond_embedding.conv_in", "input_hint_block.0", False)]
    # The original hint encoder is one Sequential with a SiLU after every convolution.
    pairs += [(f"controlnet_cond_embedding.blocks.{m}", f"input_hint_block.{2 * m + 2}", False)
              for m in range(s.hint_convs)]
    pairs.append(("controlnet_cond_embedding.conv_out", f"input_hint_block.{2 * s.hint_convs + 2}", False))
    block = 1
    for level in range(s.levels):
        for layer in range(s.layers):
            pairs.append((f"down_blocks.{level}.resnets.{layer}", f"input_blocks.{block}.0", True))
            pairs.append((f"down_blocks.{level}.attentions.{layer}", f"input_blocks.{block}.1", False))
            block += 1
        if level < s.levels - 1:
            pairs.append((f"down_blocks.{level}.downsamplers.0.conv", f"input_blocks.{block}.0.op", False))
            block += 1
    pairs += [(f"controlnet_down_blocks.{k}", f"zero_convs.{k}.0", False) for k in range(block)]
    pairs.append(("mid_block.resnets.0", "middle_block.0", True))
    if s.mid_attention:
        pairs.append(("mid_block.attentions.0", "middle_block.1", False))
        pairs.append(("mid_block.resnets.1", "middle_block.2", True))
    pairs.append(("controlnet_mid_block", "middle_block_out.0", False))
    return pairs


def _indices(keys, pattern: str) -> set[int]:
    regex = re.compile(pattern)
    return {int(m.group(1)) for m in map(regex.match, keys) if m}


def _structure_of_diffusers(keys) -> _Structure:
    levels = _indices(keys, r"down_blocks\.(\d+)\.")
    layers = _indices(keys, r"down_blocks\.0\.resnets\.(\d+)\.")
    hint = _indices(keys, r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    if not levels or not layers:
        raise ValueError("no encoder blocks (down_blocks) found")
    return _Structure(max(levels) + 1, max(layers) + 1, max(hint) + 1 if hint else 0,
                      any(k.startswith("mid_block.attentions.") for k in keys))


def _structure_of_ldm(keys) -> _Structure:
    blocks = _indices(keys, r"input_blocks\.(\d+)\.")
    downsamples = _indices(keys, r"input_blocks\.(\d+)\.0\.op\.")
    hint = _indices(keys, r"input_hint_block\.(\d+)\.")
    if not blocks or not hint:
        raise ValueError("no encoder blocks (input_blocks) or hint encoder found")
    levels = len(downsamples) + 1
    layers = min(downsamples) - 1 if downsamples else len(blocks) - 1
    if len(blocks) != 1 + levels * layers + levels - 1 or hint != set(range(0, max(hint) + 1, 2)):
        raise ValueError("the encoder blocks are not laid out like a Stable Diffusion UNet's")
    return _Structure(levels, layers, max(hint) // 2 - 1,
                      any(k.startswith("middle_block.1.") for k in keys))


def _rename(keys, table: dict[str, tuple[str, bool]], resnet_names: dict[str, str]) -> dict[str, str]:
    """old key -> new key, by the longest module prefix in ``table``; ValueError on a stray key."""
    renamed, stray = {}, []
    for key in keys:
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            target = table.get(".".join(parts[:cut]))
            if target is None:
                continue
            module, is_resnet = target
            rest = ".".join(parts[cut:])
            if is_resnet:
                for old, new in resnet_names.items():
                    if rest.startswith(old + "."):
                        rest = new + rest[len(old):]
                        break
                else:
                    continue
            renamed[key] = f"{module}.{rest}"
            break
        else:
            stray.append(key)
    if stray:
        raise ValueError(f"{len(stray)} unexpected tensor(s), e.g. {', '.join(sorted(stray)[:4])}")
    return renamed


def ldm_to_diffusers_keys(keys) -> dict[str, str]:
    """Original-layout key (without ``control_model.``) -> diffusers ControlNetModel key."""
    keys = list(keys)
    table = {ldm: (diff, res) for diff, ldm, res in _module_pairs(_structure_of_ldm(keys))}
    return _rename(keys, table, _RESNET_NAMES)


def diffusers_to_ldm_keys(keys) -> dict[str, str]:
    """diffusers ControlNetModel key -> original-layout key (without ``control_model.``)."""
    keys = list(keys)
    table = {diff: (ldm, res) for diff, ldm, res in _module_pairs(_structure_of_diffusers(keys))}
    return _rename(keys, table, {new: old for old, new in _RESNET_NAMES.items()})


def _not_a_controlnet(keys: list[str], name: str) -> CheckpointError:
    joined = " ".join(keys[:2000])
    if "lora_controlnet" in keys:
        why = "it is a Control-LoRA, which is not supported"
    elif "lora" in joined.lower():
        why = "it looks like a LoRA (those go in models/Lora)"
    elif any(k.startswith("model.diffusion_model.") for k in keys):
        why = "it looks like a Stable Diffusion checkpoint (those go in models/Stable-diffusion)"
    elif any(k.startswith(("adapter.", "body.")) for k in keys):
        why = "it looks like a T2I-Adapter, which is not supported"
    else:
        why = "it has no hint-encoder weights (input_hint_block or controlnet_cond_embedding)"
    return CheckpointError(f"'{name}' is not a ControlNet model: {why}.", FIELD)


def to_diffusers_names(keys, name: str) -> dict[str, str]:
    """Stored key -> diffusers key for a single file of either layout (other model parts dropped).

    Raises CheckpointError naming the file when it is no ControlNet this app can read.
    """
    keys = list(keys)
    if any(k in keys for k in ("task_embedding", "control_add_embedding.linear_1.weight")):
        raise CheckpointError(f"'{name}' is a ControlNet Union (ProMax) model, which is not supported.",
                              FIELD)
    try:
        if any(k.startswith(LDM_PREFIX) for k in keys):
            # v1.0 releases carry a whole SD checkpoint beside the ControlNet: keep only the latter.
            inner = {k[len(LDM_PREFIX):]: k for k in keys if k.startswith(LDM_PREFIX)}
            return {inner[k]: new for k, new in ldm_to_diffusers_keys(inner).items()}
        if "input_hint_block.0.weight" in keys:
            return ldm_to_diffusers_keys(keys)
        if "controlnet_cond_embedding.conv_in.weight" in keys:
            _structure_of_diffusers(keys)
            return {k: k for k in keys}
    except ValueError as error:
        raise CheckpointError(f"'{name}' looks like a ControlNet but its layout is not one this "
                              f"app knows: {error}.", FIELD) from error
    raise _not_a_controlnet(keys, name)


# ---------------------------------------------------------------------------------------------
# Families and configs


def family_of_shapes(shapes: dict[str, tuple[int, ...]]) -> str:
    """The family ("sd1", "sd2" or "sdxl") of diffusers-named tensor shapes."""
    if "add_embedding.linear_1.weight" in shapes:
        return "sdxl"
    cross = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight")), None)
    linear = any(len(s) == 2 for k, s in shapes.items() if k.endswith("proj_in.weight"))
    # SD 2.x: OpenCLIP-H context (1024 wide) and linear proj_in/proj_out; SD 1.x has neither.
    return "sd2" if cross == 1024 or linear else "sd1"


def family_of_config(config: dict) -> str:
    if config.get("addition_embed_type") == "text_time":
        return "sdxl"
    if config.get("cross_attention_dim") == 1024 or config.get("use_linear_projection"):
        return "sd2"
    return "sd1"


def base_config(family: str, config_root: Path = CONFIG_ROOT) -> dict:
    path = Path(config_root) / f"controlnet-{family}" / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"Missing or unreadable ControlNet config {path}: {error}", FIELD) from error


def _heads_like(base: dict, widths: list[int]) -> int | list[int]:
    """Attention heads for ``widths`` by the family's convention (shapes cannot tell heads apart).

    SD 1.x keeps a fixed head count (8); SDXL a fixed head width (64).
    """
    heads = base.get("num_attention_heads") or base.get("attention_head_dim", 8)
    if isinstance(heads, int):
        return heads
    head_width = base["block_out_channels"][0] // heads[0]
    return [max(1, w // head_width) for w in widths]


def config_from_shapes(shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
    """``base`` (a published config) with every size the tensors show taken from the tensors."""
    s = _structure_of_diffusers(shapes)
    config = {k: copy.deepcopy(v) for k, v in base.items() if not k.startswith("_")}
    widths = [shapes[f"down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(s.levels)]
    attention = [any(k.startswith(f"down_blocks.{i}.attentions.") for k in shapes) for i in range(s.levels)]
    depth = [len(_indices(shapes, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\."))
             for i in range(s.levels)]
    mid_depth = len(_indices(shapes, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\."))
    hint = shapes["controlnet_cond_embedding.conv_in.weight"]
    config.update(
        in_channels=shapes["conv_in.weight"][1],
        conditioning_channels=hint[1],
        conditioning_embedding_out_channels=[hint[0]] + [
            shapes[f"controlnet_cond_embedding.blocks.{m}.weight"][0] for m in range(1, s.hint_convs, 2)],
        block_out_channels=widths,
        layers_per_block=s.layers,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        mid_block_type="UNetMidBlock2DCrossAttn" if s.mid_attention else "UNetMidBlock2D",
    )
    cross = next((v[1] for k, v in shapes.items() if k.endswith("attn2.to_k.weight")), None)
    if cross is not None:
        config["cross_attention_dim"] = cross
    proj = next((v for k, v in shapes.items() if k.endswith("proj_in.weight")), None)
    if proj is not None:
        config["use_linear_projection"] = len(proj) == 2

    # Transformer depth per level; the middle block shares the last level's number.
    layers = [d if a else 1 for d, a in zip(depth, attention)]
    if s.mid_attention:
        if attention[-1] and layers[-1] != mid_depth:
            raise ValueError("the middle block's transformer depth differs from the last level's")
        layers[-1] = mid_depth
    old = base.get("transformer_layers_per_block", 1)
    if (list(old) if isinstance(old, (list, tuple)) else [old] * s.levels) != layers:
        config["transformer_layers_per_block"] = layers

    if widths != list(base["block_out_channels"]):
        config["attention_head_dim"] = _heads_like(base, widths)
        config["num_attention_heads"] = None

    if "add_embedding.linear_1.weight" in shapes:
        embed_in = shapes["add_embedding.linear_1.weight"][1]
        time_dim = base.get("addition_time_embed_dim") or 256
        if embed_in <= _TIME_IDS * time_dim:
            raise ValueError(f"an added embedding of {embed_in} inputs cannot hold {_TIME_IDS} "
                             f"micro-conditioning numbers of width {time_dim}")
        config.update(addition_embed_type="text_time", addition_time_embed_dim=time_dim,
                      projection_class_embeddings_input_dim=embed_in)
    else:
        config.update(addition_embed_type=None, addition_time_embed_dim=None,
                      projection_class_embeddings_input_dim=None)
    time_shape = shapes.get("time_embedding.linear_1.weight")
    if time_shape != (4 * widths[0], widths[0]):
        raise ValueError(f"time embedding of shape {time_shape} does not fit width {widths[0]}")
    return config


def _global_pooling_from_sidecar(path: Path) -> bool:
    """lllyasviel's .yaml beside a file marks models (shuffle) that pool the control signal."""
    sidecar = path.with_suffix(".yaml")
    if not sidecar.is_file():
        return False
    text = sidecar.read_text(encoding="utf-8", errors="replace")
    return re.search(r"global_average_pooling:\s*true\b", text, re.I) is not None


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
    from ..loading import read_pickled_state_dict
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
    """A ControlNetModel of ``config`` holding exactly ``state`` (diffusers names), strictly."""
    from diffusers import ControlNetModel

    try:
        with torch.device("meta"):  # no memory or init work for weights about to be replaced
            model = ControlNetModel.from_config(copy.deepcopy(config))
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
    """A ControlNetModel (float32 or the file's dtype, on the CPU) from a single file."""
    tensors = _read_tensors(path, name, allow_unsafe)
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
    if _global_pooling_from_sidecar(path):
        config["global_pool_conditions"] = True
    return build_from_state_dict(state, config, name)


def _check_supported(family: str, name: str) -> None:
    if family not in FAMILIES:
        raise CheckpointError(
            f"'{name}' is an {FAMILY_LABELS.get(family, family)} ControlNet; only SD 1.x and SDXL "
            "ControlNets are supported.", FIELD)


def save_original_layout(controlnet, path: Path) -> None:
    """Write ``controlnet`` as one .safetensors in lllyasviel's original layout (control_model.*)."""
    from safetensors.torch import save_file

    state = controlnet.state_dict()
    names = diffusers_to_ldm_keys(state.keys())
    tensors = {LDM_PREFIX + names[k]: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _family_of_unet(unet) -> str:
    family = family_of_config(dict(unet.config))
    if family not in FAMILIES:
        raise ValueError(f"no ControlNet convention for an {FAMILY_LABELS[family]} UNet")
    return family


@torch.no_grad()
def build_tiny_controlnet(unet, seed: int = 0, conditioning_channels=(4, 8, 16, 32),
                          config_root: Path = CONFIG_ROOT):
    """A ControlNet for ``unet`` (a tiny one from engine.tiny_models) with seeded random weights,
    float32 on the CPU.

    ``conditioning_channels`` are the hint encoder's widths (diffusers'
    ``conditioning_embedding_out_channels``); four of them downscale the image 8x like the VAE.
    Widths and depths follow ``unet``. What tensor shapes cannot show (norm groups, attention
    heads, SDXL's micro-conditioning width) follows the family's published config, so that a
    saved single file loads back to the same network with no config beside it. The zero
    convolutions get small non-zero weights: all-zero ones would make the control a no-op.
    """
    from diffusers import ControlNetModel

    from ..tiny_models import _randomize_

    family = _family_of_unet(unet)
    base = base_config(family, config_root)
    with torch.device("meta"):
        shaped = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(conditioning_channels),
                                           load_weights_from_unet=False)
    config = {k: v for k, v in dict(shaped.config).items() if not k.startswith("_")}
    widths = list(config["block_out_channels"])
    config.update(norm_num_groups=base["norm_num_groups"], num_attention_heads=None,
                  attention_head_dim=_heads_like(base, widths))
    if family == "sdxl":
        pooled = (unet.config.projection_class_embeddings_input_dim
                  - _TIME_IDS * unet.config.addition_time_embed_dim)
        time_dim = base["addition_time_embed_dim"]
        config.update(addition_time_embed_dim=time_dim,
                      projection_class_embeddings_input_dim=_TIME_IDS * time_dim + pooled)
    generator = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = ControlNetModel.from_config(config)
    _randomize_(model, generator)
    for name, param in model.named_parameters():
        if name.startswith(("controlnet_down_blocks.", "controlnet_mid_block.")):
            param.mul_(0.3)  # small, as after little training, but not zero
        elif name.startswith("controlnet_cond_embedding.conv_out."):
            param.mul_(3.0)
        elif name.startswith("controlnet_cond_embedding.") and name.endswith("weight"):
            # Gain 2 keeps the image's signal alive through the hint encoder's SiLU chain;
            # plain 1/fan_in weights shrink it ~100x, leaving the control image no effect.
            param.mul_(2.0)
    return model.eval()


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
        self._loaded: OrderedDict[str, tuple[tuple, object]] = OrderedDict()
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

    def _scan(self):
        if not self.folder.is_dir():
            return
        for root, dirs, files in os.walk(self.folder, followlinks=True):
            here = Path(root)
            if here != self.folder and _is_diffusers_folder(here):
                dirs[:] = []
                yield here.relative_to(self.folder), here, "diffusers"
                continue
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d.lower() not in IGNORED_FOLDERS)
            for file in sorted(files):
                suffix = Path(file).suffix.lower()
                if file.startswith(".") or suffix not in (SAFE_SUFFIX,) + PICKLE_SUFFIXES:
                    continue
                kind = "safetensors" if suffix == SAFE_SUFFIX else "pickle"
                yield (here / file).relative_to(self.folder), here / file, kind

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
            rel = entry.path.relative_to(self.folder).as_posix()
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
            family = family_of_config(self._folder_config(entry))
        else:
            if entry.kind == "safetensors":
                stored = _safetensors_shapes(entry.path, entry.path.name)
            else:
                stored = {k: tuple(v.shape) for k, v in
                          _read_tensors(entry.path, entry.path.name, self.allow_unsafe).items()}
            names = to_diffusers_names(stored, entry.path.name)
            family = family_of_shapes({new: stored[old] for old, new in names.items()})
        with self._lock:
            self._families[stamp] = family
        return family

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
        if config.get("_class_name", "ControlNetModel") != "ControlNetModel":
            raise CheckpointError(f"'{entry.name}' is a {config.get('_class_name')}, not a Stable "
                                  "Diffusion ControlNet (ControlNetModel).", FIELD)
        return config

    # -- loading

    def load(self, name: str):
        """The ControlNetModel called ``name`` on the configured device and dtype (cached, LRU)."""
        entry = self.entry(name)
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

    def loaded_names(self) -> list[str]:
        """Names of the models held, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def clear(self) -> None:
        with self._lock:
            self._loaded.clear()
        free_memory()

    def _load(self, entry: ControlNetFile):
        if entry.kind == "diffusers":
            model = self._load_folder(entry)
        else:
            model = load_single_file(entry.path, entry.path.name, self.config_root, self.allow_unsafe)
        device, dtype = self.device_config.device, self.device_config.dtype
        # nn.Module.to: diffusers' ModelMixin.to warns on every dtype cast in 0.42.
        torch.nn.Module.to(model, device=device, dtype=dtype)
        log.info("loaded ControlNet %s (%s)", entry.name, entry.kind)
        return model.eval()

    def _load_folder(self, entry: ControlNetFile):
        from diffusers import ControlNetModel

        config = self._folder_config(entry)
        _check_supported(family_of_config(config), entry.name)
        weights = _weights_file(entry.path)
        variant = "fp16" if weights is not None and weights.name.endswith(".fp16.safetensors") else None
        try:
            return ControlNetModel.from_pretrained(str(entry.path), local_files_only=True, variant=variant,
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
