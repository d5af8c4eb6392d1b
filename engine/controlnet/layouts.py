"""ControlNet weight layouts: renaming between the original single-file keys (lllyasviel's
``control_model.*``) and diffusers' names, telling SD 1.x from SDXL ControlNets, and the model
config a file's tensor shapes describe (on top of the family's published config)."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

from engine.errors import CheckpointError

FAMILIES = ("sd1", "sdxl")
FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
CONFIG_ROOT = Path(__file__).resolve().parent.parent / "models" / "model_configs"
FIELD = "controlnet"

LDM_PREFIX = "control_model."
# Original ResBlock sub-modules -> diffusers ResnetBlock2D names.
_RESNET_NAMES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                 "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
# SDXL's micro-conditioning numbers (sizes and crop) fed to the added embedding.
TIME_IDS = 6


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
    if "lora" in joined.lower():
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


def heads_like(base: dict, widths: list[int]) -> int | list[int]:
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
        config["attention_head_dim"] = heads_like(base, widths)
        config["num_attention_heads"] = None

    if "add_embedding.linear_1.weight" in shapes:
        embed_in = shapes["add_embedding.linear_1.weight"][1]
        time_dim = base.get("addition_time_embed_dim") or 256
        if embed_in <= TIME_IDS * time_dim:
            raise ValueError(f"an added embedding of {embed_in} inputs cannot hold {TIME_IDS} "
                             f"micro-conditioning numbers of width {time_dim}")
        config.update(addition_embed_type="text_time", addition_time_embed_dim=time_dim,
                      projection_class_embeddings_input_dim=embed_in)
    else:
        config.update(addition_embed_type=None, addition_time_embed_dim=None,
                      projection_class_embeddings_input_dim=None)
    time_shape = shapes.get("time_embedding.linear_1.weight")
    if time_shape != (4 * widths[0], widths[0]):
        raise ValueError(f"time embedding of shape {time_shape} does not fit width {widths[0]}")
    if is_union(shapes):
        config.update(union_config(shapes))
    return config


# ControlNet Union / ProMax (xinsir's SDXL models, diffusers' ControlNetUnionModel): one network for
# several kinds of control, told which by a control type per condition. The order of the types is
# the model's training order (ProMax adds Tile and Inpaint after the first six); the names are the
# ControlNet extension's (its `union_control_type`).
UNION_CONTROL_TYPES = ("OpenPose", "Depth", "Soft Edge", "Hard Edge", "Normal Map", "Segmentation", "Tile",
                       "Inpaint")
UNION_MARKER = "task_embedding"
UNION_TRANSFORMER_HEADS = 8   # not in the tensors' shapes: the released models' number


def is_union(keys) -> bool:
    return UNION_MARKER in keys


def union_heads(channels: int) -> int:
    """The control-type transformer's heads (the released models' 8, one for a width 8 does not divide)."""
    return UNION_TRANSFORMER_HEADS if channels % UNION_TRANSFORMER_HEADS == 0 else 1


def union_config(shapes: dict[str, tuple[int, ...]]) -> dict:
    """The Union-specific config of a ControlNetUnionModel, from its tensors' shapes."""
    types, channels = shapes[UNION_MARKER]
    layers = _indices(shapes, r"transformer_layes\.(\d+)\.")   # (sic: diffusers' and xinsir's name)
    return {"num_control_type": types, "num_trans_channel": channels,
            "num_trans_head": union_heads(channels),
            "num_trans_layer": max(layers) + 1 if layers else 0,
            "num_proj_channel": shapes["spatial_ch_projs.weight"][0]}


def global_pooling_from_sidecar(path: Path) -> bool:
    """lllyasviel's .yaml beside a file marks models (shuffle) that pool the control signal."""
    sidecar = path.with_suffix(".yaml")
    if not sidecar.is_file():
        return False
    text = sidecar.read_text(encoding="utf-8", errors="replace")
    return re.search(r"global_average_pooling:\s*true\b", text, re.I) is not None
