"""Which layer of a pipeline each tensor of a LoRA file belongs to.

LoRA files name their layers in several ways: kohya-ss and LyCORIS flatten the module path with
underscores after a prefix (`lora_unet_`, `lora_te_`, `lora_te1_`/`lora_te2_` for SDXL's two text
encoders), SD 1.x files with diffusers' module names and SDXL files with the original LDM/SGM UNet
names (`input_blocks_4_1_...`); diffusers and PEFT write dotted names (`unet.<module>.lora_A.weight`,
`text_encoder_2.<module>...`, the older `.lora.down.weight`). Underscores are ambiguous
(`to_out_0`, `transformer_blocks`), so a flattened name is never split by guessing: every layer's
flattened names are built forward from the model's own module names and looked up whole.

FLUX.1 and SD 3.x: "the UNet" is the denoising network, the pipeline's transformer (`lora_unet_`,
`transformer.`, `diffusion_model.` name it), under diffusers' names or the original model's
(flow_lora_keys.py); `lora_te1_` is CLIP-L, `lora_te2_` SD 3's CLIP-G and `lora_te3_` T5-XXL, which
is FLUX's second text encoder and SD 3's third.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.networks.flow_lora_keys import flow_layer_names

# What follows a layer's name in a key. Several spellings of one factor are kept under one name.
FACTOR_ALIASES = {
    "lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight",
    "lora.down.weight": "lora_down.weight", "lora.up.weight": "lora_up.weight",
    "lora_linear_layer.down.weight": "lora_down.weight", "lora_linear_layer.up.weight": "lora_up.weight",
}
FACTOR_NAMES = (
    "lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha", "scale", "dora_scale",
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
    "oft_blocks", "oft_diag", "rescale", "weight", "on_input", "diff", "diff_b", "w_norm", "b_norm",
)
# Longest first, so `x.lora_down.weight` is not read as the (IA)^3 factor `weight` of `x.lora_down`.
_SUFFIXES = sorted([*FACTOR_NAMES, *FACTOR_ALIASES], key=len, reverse=True)

# Key prefix -> the pipeline component it addresses (the order matters: longer prefixes first).
_PREFIXES = (
    ("lora_unet_", "unet"), ("lora_te1_", "text_encoder_1"), ("lora_te2_", "text_encoder_2"),
    ("lora_te3_", "text_encoder_3"), ("lora_te_", "text_encoder"), ("lora_transformer_", "unet"),
    ("unet.", "unet"), ("transformer.", "unet"), ("model.diffusion_model.", "unet"), ("diffusion_model.", "unet"),
    ("text_encoder_2.", "text_encoder_2"), ("text_encoder_3.", "text_encoder_3"),
    ("text_encoder.", "text_encoder"), ("lora_unet.", "unet"), ("base_model.model.", "unet"),
)
COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "text_encoder_3")
# `lora_te1_` names SDXL's (and the flow models') first encoder: on a model with one encoder (as in
# A1111) it matches nothing.
_FIRST_OF_TWO = "text_encoder_1"
# `lora_te3_` / `text_encoder_3.` name T5-XXL, which FLUX holds as its second encoder.
_T5 = "text_encoder_3"
# The old attention-processor layout: `attn1.processor.to_q_lora.down.weight`.
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.")
# XLabs' FLUX processors: `double_blocks.0.processor.qkv_lora1.down.weight` (flow_lora_keys.py).
_XLABS = re.compile(r"(\.processor\.(?:qkv|proj)_lora\d?)\.(down|up)\.weight$")

# diffusers' resnet layers -> their names inside an LDM ResBlock.
_RESNET_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_TOP_LEVEL_LDM = {
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0", "class_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
}


@dataclass
class LayerFactors:
    """One layer's tensors from a file: `factors` by factor name (`lora_up.weight`, `hada_w1_a`, ...)."""
    component: str
    module_name: str
    module: torch.nn.Module
    factors: dict[str, torch.Tensor] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)


def split_key(key: str) -> tuple[str, str, str] | None:
    """`(component, flattened layer name, factor name)` of a key, or None when no factor ends it."""
    key = _PROCESSOR.sub(lambda m: f".{'to_out.0' if m[1] == 'to_out' else m[1]}.lora.", key)
    key = _XLABS.sub(lambda m: f"{m[1]}.lora_{m[2]}.weight", key)
    for suffix in _SUFFIXES:
        if key.endswith("." + suffix):
            layer = key[:-len(suffix) - 1]
            break
    else:
        return None
    component = "unet"  # PEFT files of a UNet alone name its modules bare (`down_blocks.0...`)
    for prefix, target in _PREFIXES:
        if layer.startswith(prefix):
            component, layer = target, layer[len(prefix):]
            break
    return component, layer.replace(".", "_"), FACTOR_ALIASES.get(suffix, suffix)


def denoising_network(pipe) -> torch.nn.Module:
    """What `lora_unet_` keys change: the UNet, or a flow model's transformer."""
    unet = getattr(pipe, "unet", None)
    return unet if isinstance(unet, torch.nn.Module) else getattr(pipe, "transformer", None)


def _component(pipe, component: str):
    return denoising_network(pipe) if component == "unet" else getattr(pipe, component, None)


class LayerIndex:
    """The layers of a pipeline a LoRA can change, by every flattened name a file may use. A layer
    is a module, or a FusedRows (flow_lora_keys.py) where a file's layer is several modules here."""

    def __init__(self, pipe):
        self.layers: dict[str, dict[str, tuple[str, torch.nn.Module]]] = {}
        for component in COMPONENTS:
            model = _component(pipe, component)
            if isinstance(model, torch.nn.Module):
                self.layers[component] = _flat_names(component, model)
        # Key component -> the component it means in this pipeline.
        self.aliases: dict[str, str] = {}
        if "text_encoder_2" in self.layers and "text_encoder" in self.layers:
            self.aliases[_FIRST_OF_TWO] = "text_encoder"
        if _T5 not in self.layers and "T5" in type(getattr(pipe, "text_encoder_2", None)).__name__:
            self.aliases[_T5] = "text_encoder_2"

    def resolve(self, component: str) -> str:
        return self.aliases.get(component, component)

    def find(self, component: str, flat: str) -> tuple[str, torch.nn.Module] | None:
        return self.layers.get(self.resolve(component), {}).get(flat)

    def names_layer(self, key: str) -> bool:
        """Whether a kohya-style key (`lora_unet_<layer>.<anything>`) names a layer of this model,
        whatever follows: an unmatched key that does names a format not known here."""
        head = key.split(".", 1)[0]
        for prefix, component in _PREFIXES:
            if prefix.endswith("_") and head.startswith(prefix):
                return self.find(component, head[len(prefix):]) is not None
        return False

    def group(self, state: dict[str, torch.Tensor]) -> tuple[list[LayerFactors], list[str]]:
        """The file's tensors grouped by the layer they change, and the keys that name no layer."""
        groups: dict[tuple[str, str], LayerFactors] = {}
        unmatched: list[str] = []
        for key, tensor in state.items():
            parts = split_key(key)
            found = self.find(parts[0], parts[1]) if parts else None
            if found is None:
                unmatched.append(key)
                continue
            name, module = found
            component = self.resolve(parts[0])
            layer = groups.setdefault((component, name), LayerFactors(component, name, module))
            layer.factors[parts[2]] = tensor
            layer.keys.append(key)
        return list(groups.values()), unmatched


def _has_weight(module: torch.nn.Module) -> bool:
    return isinstance(getattr(module, "weight", None), torch.Tensor)


def _flat_names(component: str, model: torch.nn.Module) -> dict[str, tuple[str, torch.nn.Module]]:
    names: dict[str, tuple[str, torch.nn.Module]] = {}
    ambiguous: set[str] = set()

    def add(flat: str, name: str, module: torch.nn.Module) -> None:
        if flat in names and names[flat][1] is not module:
            ambiguous.add(flat)  # two layers, one spelling: neither can be told apart, so none is used
        names.setdefault(flat, (name, module))

    ldm = ldm_unet_names(model) if component == "unet" else {}
    for name, module in model.named_modules():
        if not name or not _has_weight(module):
            continue
        add(name.replace(".", "_"), name, module)
        if component != "unet" and not name.startswith("text_model."):
            # transformers 5 dropped CLIP's `text_model` level; files keep writing it.
            add("text_model_" + name.replace(".", "_"), name, module)
        if name in ldm:
            add(ldm[name].replace(".", "_"), name, module)
    if component == "unet":
        for original, (name, layer) in flow_layer_names(model).items():
            add(original.replace(".", "_"), name, layer)
    for flat in ambiguous:
        del names[flat]
    return names


def _per_level(value, levels: int) -> list[int]:
    return [int(value)] * levels if isinstance(value, int) else [int(v) for v in value]


def ldm_unet_names(unet: torch.nn.Module) -> dict[str, str]:
    """diffusers module name -> the LDM/SGM UNet's name for it, worked out from the UNet's config.

    LDM numbers its blocks in one sequence: input block 0 is conv_in, then each down level has
    `layers_per_block` res(+attention) blocks and, except the last, a downsampler block; each up
    level has one more res(+attention) block than its down level, its upsampler riding in the
    last one (after the attention, when there is one); the middle block is res, attention, res.
    """
    config = getattr(unet, "config", None)
    if config is None or not hasattr(config, "block_out_channels") or not hasattr(unet, "down_blocks"):
        return {}
    levels = len(config.block_out_channels)
    layers = _per_level(config.layers_per_block, levels)
    down_start, index = [], 1
    for level in range(levels):
        down_start.append(index)
        index += layers[level] + (1 if level < levels - 1 else 0)
    up_layers = list(reversed(layers))
    up_start, index = [], 0
    for level in range(levels):
        up_start.append(index)
        index += up_layers[level] + 1

    def block_part(rest: str, block: Callable[[int], str]) -> str | None:
        kind, _, inner = rest.partition(".")
        if kind == "resnets":
            number, _, sub = inner.partition(".")
            return f"{block(int(number))}.0.{_RESNET_LDM[sub]}" if sub in _RESNET_LDM else None
        if kind == "attentions":
            number, _, sub = inner.partition(".")
            return f"{block(int(number))}.1.{sub}" if sub else None
        return None

    names: dict[str, str] = {}
    for name, module in unet.named_modules():
        if not _has_weight(module):
            continue
        ldm = _TOP_LEVEL_LDM.get(name)
        match = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(.+)", name)
        if ldm is None and match:
            level, rest = int(match[2]), match[3]
            if match[1] == "down":
                if rest == "downsamplers.0.conv":
                    ldm = f"input_blocks.{down_start[level] + layers[level]}.0.op"
                else:
                    ldm = block_part(rest, lambda j, s=down_start[level]: f"input_blocks.{s + j}")
            elif rest == "upsamplers.0.conv":
                position = 2 if hasattr(unet.up_blocks[level], "attentions") else 1
                ldm = f"output_blocks.{up_start[level] + up_layers[level]}.{position}.conv"
            else:
                ldm = block_part(rest, lambda j, s=up_start[level]: f"output_blocks.{s + j}")
        elif ldm is None and name.startswith("mid_block."):
            rest = name[len("mid_block."):]
            kind, _, inner = rest.partition(".")
            number, _, sub = inner.partition(".")
            if kind == "resnets" and sub in _RESNET_LDM:
                ldm = f"middle_block.{2 * int(number)}.{_RESNET_LDM[sub]}"
            elif kind == "attentions" and sub:
                ldm = f"middle_block.{2 * int(number) + 1}.{sub}"
        if ldm is not None:
            names[name] = ldm
    return names
