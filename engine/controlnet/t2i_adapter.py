"""T2I-Adapters as ControlNet unit models: a small network that turns the control map into one
feature map per UNet level, added inside the UNet's encoder (diffusers'
`down_intrablock_additional_residuals`), computed once per picture size rather than at every step.

The files users download, all loaded as diffusers' T2IAdapter:

* TencentARC's original SD 1.x files (`t2iadapter_canny_sd15v2.pth`, `..._sd14v1.pth`, or their
  .safetensors): `conv_in` and a flat `body.N` list of residual blocks, `nums_rb` per level, the
  first block of a level after the first one down-sampling (average pool) and, where the width
  changes, projecting with a 1x1 `in_conv`; each block is `block1` (3x3), ReLU, `block2` (1x1)
  plus its input. That is diffusers' FullAdapter block for block, its `body.N` being level
  N // nums_rb, block N % nums_rb.
* diffusers-layout files and folders (the SDXL adapters TencentARC publish:
  `adapter.conv_in...`, `adapter.body.L.resnets.R...`; config.json `"_class_name": "T2IAdapter"`).
* The light adapter of the colour adapter (`t2iadapter_color_sd14v1.pth`): per level an
  `in_conv` (1x1, to a quarter of the level's width), `body.R` blocks of two 3x3 convolutions
  around a ReLU plus their input, an `out_conv` (1x1) to the level's width, every level after the
  first down-sampling first (average pool). That is diffusers' LightAdapter block for block
  (`body.L.body.R` -> `body.L.resnets.R`), whose last level repeats the width before it.

Grey-input adapters (canny, sketch: 1 x 8 x 8 = 64 inputs to conv_in) take the map's first channel,
as the ControlNet extension does.
"""

from __future__ import annotations

import re

import torch

from engine.controlnet.layouts import FIELD
from engine.errors import CheckpointError

ORIGINAL_MARKER, DIFFUSERS_MARKER = "body.0.block1.weight", "adapter.conv_in.weight"
LIGHT_MARKER, DIFFUSERS_LIGHT_MARKER = "body.0.body.0.block1.weight", "adapter.body.0.in_conv.weight"
_LIGHT = re.compile(r"body\.(\d+)\.(in_conv|out_conv|body\.(\d+)\.block[12])\.(weight|bias)$")
_BODY = re.compile(r"body\.(\d+)\.(in_conv|block1|block2)\.(weight|bias)$")
# conv_in's inputs: the map's channels x the unshuffle factor squared (8 for SD 1.x, 16 for SDXL).
_SDXL_INPUTS = (256, 768)


def is_light(keys) -> bool:
    return LIGHT_MARKER in keys or (DIFFUSERS_LIGHT_MARKER in keys and DIFFUSERS_MARKER not in keys)


def is_t2i_adapter(keys) -> bool:
    return ORIGINAL_MARKER in keys or DIFFUSERS_MARKER in keys or is_light(keys)


def _conv_in_inputs(shapes) -> int:
    return int(shapes.get("conv_in.weight", shapes.get(DIFFUSERS_MARKER))[1])


def family_of_keys(shapes: dict) -> str:
    if is_light(shapes):   # only SD 1.x light adapters were released (the colour adapter)
        return "sd1"
    return "sdxl" if _conv_in_inputs(shapes) in _SDXL_INPUTS else "sd1"


def family_of_config(config: dict) -> str:
    return "sdxl" if config.get("adapter_type") == "full_adapter_xl" else "sd1"


def _light_names(tensors: dict[str, torch.Tensor], name: str) -> tuple[dict[str, torch.Tensor], list[int], int]:
    """A light adapter's tensors under LightAdapter's names, its channels (one fewer than its
    levels: the last level repeats the last width) and blocks per level."""
    if DIFFUSERS_LIGHT_MARKER in tensors:
        state = {key[len("adapter."):]: value for key, value in tensors.items() if key.startswith("adapter.")}
    else:
        state = {}
        for key, value in tensors.items():
            match = _LIGHT.match(key)
            if not match:
                raise CheckpointError(f"'{name}' looks like a light T2I-Adapter but has a tensor this app cannot "
                                      f"place: {key}", FIELD)
            level, part, block, leaf = match.group(1), match.group(2), match.group(3), match.group(4)
            inner = f"resnets.{block}.{part.rsplit('.', 1)[1]}" if block is not None else part
            state[f"body.{level}.{inner}.{leaf}"] = value
    levels = sorted({int(key.split(".")[1]) for key in state})
    widths = [int(state[f"body.{level}.out_conv.weight"].shape[0]) for level in levels]
    blocks = len({key.split(".")[3] for key in state if key.startswith("body.0.resnets.")})
    if len(widths) < 2 or widths[-1] != widths[-2]:
        raise CheckpointError(f"'{name}': a light T2I-Adapter's last level repeats the width before it; "
                              f"these levels are {widths} wide", FIELD)
    return state, widths[:-1], blocks


def _diffusers_names(tensors: dict[str, torch.Tensor], name: str) -> tuple[dict[str, torch.Tensor], list[int], int]:
    """The file's tensors under FullAdapter's names, its level widths and blocks per level."""
    if DIFFUSERS_MARKER in tensors:
        state = {key[len("adapter."):]: value for key, value in tensors.items() if key.startswith("adapter.")}
        levels = sorted({int(key.split(".")[1]) for key in state if key.startswith("body.")})
        widths = [state[f"body.{level}.resnets.0.block1.weight"].shape[0] for level in levels]
        blocks = len({key.split(".")[3] for key in state if key.startswith("body.0.resnets.")})
        return state, widths, blocks
    found = {}
    for key in tensors:
        match = _BODY.match(key)
        if match:
            found.setdefault(int(match.group(1)), {})[match.group(2)] = True
        elif key not in ("conv_in.weight", "conv_in.bias"):
            raise CheckpointError(f"'{name}' looks like a T2I-Adapter but has a tensor this app cannot place: "
                                  f"{key}", FIELD)
    widths_per_block = [tensors[f"body.{n}.block1.weight"].shape[0] for n in sorted(found)]
    blocks = next((n for n, width in enumerate(widths_per_block) if width != widths_per_block[0]),
                  len(widths_per_block))
    if not blocks or len(widths_per_block) % blocks:
        raise CheckpointError(f"'{name}': its {len(widths_per_block)} adapter blocks do not divide into levels",
                              FIELD)
    state = {"conv_in.weight": tensors["conv_in.weight"], "conv_in.bias": tensors["conv_in.bias"]}
    for key, value in tensors.items():
        match = _BODY.match(key)
        if not match:
            continue
        number, module, leaf = int(match.group(1)), match.group(2), match.group(3)
        level, block = divmod(number, blocks)
        if module == "in_conv":
            if block:
                raise CheckpointError(f"'{name}': only a level's first adapter block projects ({key})", FIELD)
            state[f"body.{level}.in_conv.{leaf}"] = value
        else:
            state[f"body.{level}.resnets.{block}.{module}.{leaf}"] = value
    return state, widths_per_block[::blocks], blocks


def build(tensors: dict[str, torch.Tensor], name: str):
    """A diffusers T2IAdapter holding exactly the file's tensors (float32, on the CPU)."""
    from diffusers import T2IAdapter

    if is_light(tensors):
        state, widths, blocks = _light_names(tensors, name)
        inputs, factor, adapter_type = int(state["body.0.in_conv.weight"].shape[1]), 8, "light_adapter"
    else:
        state, widths, blocks = _diffusers_names(tensors, name)
        inputs = int(state["conv_in.weight"].shape[1])
        factor = 16 if inputs in _SDXL_INPUTS else 8
        adapter_type = "full_adapter_xl" if factor == 16 else "full_adapter"
    try:
        with torch.device("meta"):
            adapter = T2IAdapter(in_channels=inputs // factor ** 2, channels=widths, num_res_blocks=blocks,
                                 downscale_factor=factor, adapter_type=adapter_type)
        adapter.adapter.load_state_dict(state, strict=True, assign=True)
    except (RuntimeError, ValueError) as error:
        raise CheckpointError(f"'{name}' does not match the T2I-Adapter its tensors describe: "
                              f"{str(error).splitlines()[0][:300]}", FIELD) from error
    return adapter.float().eval()


def is_adapter(net) -> bool:
    return type(net).__name__ == "T2IAdapter"


@torch.no_grad()
def features(adapter, control: torch.Tensor) -> list[torch.Tensor]:
    """The adapter's feature maps for a (1, 3, H, W) control picture in [0, 1]."""
    if adapter.config.in_channels == 1:
        control = control[:, :1]
    return list(adapter(control.to(adapter.device, adapter.dtype)))
