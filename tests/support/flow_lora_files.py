"""LoRA files for the tiny FLUX.1 / SD 3.5 pipelines, in each format's own key names.

Every layer a file changes is written here by hand as the format's facts say it: the key stem
the trainer writes, and the diffusers modules (in the file's row order) its matrix is in the
tiny model. The widths are read from those modules, never assumed. A fused layer (`qkv`,
FLUX's `linear1`) is the modules' rows stacked; the final / last context modulations of the
original models are (shift, scale) where diffusers keeps (scale, shift): their parts are the
halves of one module, second half first. Test-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from safetensors.torch import save_file

WHOLE, FIRST_HALF, SECOND_HALF = None, 0, 1


@dataclass(frozen=True)
class FileLayer:
    stem: str                                  # the key up to the factor name
    component: str                             # the pipeline attribute: transformer, text_encoder, ...
    parts: tuple[tuple[str, int | None], ...]  # (module name, WHOLE or which half), in file row order


@dataclass(frozen=True)
class Format:
    down: str                   # factor suffixes as this format writes them
    up: str
    alpha: str | None           # None: the format stores no alpha (scale 1)
    layers: tuple[FileLayer, ...] = field(default_factory=tuple)


def _whole(*names: str) -> tuple[tuple[str, None], ...]:
    return tuple((name, WHOLE) for name in names)


def _qkv(prefix: str, names=("to_q", "to_k", "to_v")) -> tuple[tuple[str, None], ...]:
    return _whole(*(f"{prefix}.{name}" for name in names))


_SWAPPED_NORM_OUT = (("norm_out.linear", SECOND_HALF), ("norm_out.linear", FIRST_HALF))
_T = "transformer"

# FLUX.1's layers in Black Forest Labs' names, as kohya (flattened) and ComfyUI / BFL (dotted) write them.
_FLUX_BFL = (
    ("double_blocks.0.img_attn.qkv", _qkv("transformer_blocks.0.attn")),
    ("double_blocks.0.txt_attn.qkv", _qkv("transformer_blocks.0.attn", ("add_q_proj", "add_k_proj", "add_v_proj"))),
    ("double_blocks.0.img_attn.proj", _whole("transformer_blocks.0.attn.to_out.0")),
    ("double_blocks.0.txt_attn.proj", _whole("transformer_blocks.0.attn.to_add_out")),
    ("double_blocks.0.img_mlp.0", _whole("transformer_blocks.0.ff.net.0.proj")),
    ("double_blocks.0.txt_mlp.2", _whole("transformer_blocks.0.ff_context.net.2")),
    ("double_blocks.0.img_mod.lin", _whole("transformer_blocks.0.norm1.linear")),
    ("double_blocks.0.txt_mod.lin", _whole("transformer_blocks.0.norm1_context.linear")),
    ("single_blocks.1.linear1", _qkv("single_transformer_blocks.1.attn") +
     _whole("single_transformer_blocks.1.proj_mlp")),
    ("single_blocks.1.linear2", _whole("single_transformer_blocks.1.proj_out")),
    ("single_blocks.0.modulation.lin", _whole("single_transformer_blocks.0.norm.linear")),
    ("final_layer.adaLN_modulation.1", _SWAPPED_NORM_OUT),
)
# CLIP module names: transformers 5's CLIPTextModel has no `text_model` level (FLUX's CLIP-L), the
# WithProjection models (SD 3's CLIP-L and CLIP-G) keep it; files write it either way.
_CLIP_L_Q = "encoder.layers.0.self_attn.q_proj"
_CLIP_V1 = "encoder.layers.1.self_attn.v_proj"
_T5_Q = "encoder.block.0.layer.0.SelfAttention.q"

FORMATS: dict[str, Format] = {
    "flux-kohya": Format("lora_down.weight", "lora_up.weight", "alpha", tuple(
        [FileLayer("lora_unet_" + name.replace(".", "_"), _T, parts) for name, parts in _FLUX_BFL] +
        [FileLayer("lora_te1_text_model_" + _CLIP_L_Q.replace(".", "_"), "text_encoder", _whole(_CLIP_L_Q)),
         FileLayer("lora_te3_" + _T5_Q.replace(".", "_"), "text_encoder_2", _whole(_T5_Q))])),
    "flux-bfl": Format("lora_A.weight", "lora_B.weight", None, tuple(
        FileLayer("diffusion_model." + name, _T, parts) for name, parts in _FLUX_BFL)),
    "flux-xlabs": Format("down.weight", "up.weight", None, (
        FileLayer("double_blocks.0.processor.qkv_lora1", _T, _qkv("transformer_blocks.0.attn")),
        FileLayer("double_blocks.0.processor.qkv_lora2", _T,
                  _qkv("transformer_blocks.0.attn", ("add_q_proj", "add_k_proj", "add_v_proj"))),
        FileLayer("double_blocks.0.processor.proj_lora1", _T, _whole("transformer_blocks.0.attn.to_out.0")),
        FileLayer("double_blocks.0.processor.proj_lora2", _T, _whole("transformer_blocks.0.attn.to_add_out")),
        FileLayer("single_blocks.0.processor.qkv_lora", _T, _qkv("single_transformer_blocks.0.attn")),
    )),
    "flux-diffusers": Format("lora_A.weight", "lora_B.weight", "alpha", (
        FileLayer("transformer.transformer_blocks.0.attn.to_k", _T, _whole("transformer_blocks.0.attn.to_k")),
        FileLayer("transformer.transformer_blocks.0.ff_context.net.0.proj", _T,
                  _whole("transformer_blocks.0.ff_context.net.0.proj")),
        FileLayer("transformer.single_transformer_blocks.1.proj_out", _T,
                  _whole("single_transformer_blocks.1.proj_out")),
        FileLayer("transformer.norm_out.linear", _T, _whole("norm_out.linear")),  # diffusers' own order
        FileLayer("text_encoder.text_model." + _CLIP_V1, "text_encoder", _whole(_CLIP_V1)),
    )),
    "sd3-diffusers": Format("lora_A.weight", "lora_B.weight", "alpha", (
        FileLayer("transformer.transformer_blocks.0.attn.to_q", _T, _whole("transformer_blocks.0.attn.to_q")),
        FileLayer("transformer.transformer_blocks.0.attn2.to_v", _T, _whole("transformer_blocks.0.attn2.to_v")),
        FileLayer("transformer.transformer_blocks.5.ff_context.net.2", _T,
                  _whole("transformer_blocks.5.ff_context.net.2")),
        FileLayer("text_encoder.text_model." + _CLIP_L_Q, "text_encoder", _whole("text_model." + _CLIP_L_Q)),
        FileLayer("text_encoder_2.text_model." + _CLIP_V1, "text_encoder_2", _whole("text_model." + _CLIP_V1)),
        FileLayer("text_encoder_3." + _T5_Q, "text_encoder_3", _whole(_T5_Q)),
    )),
    "sd3-kohya": Format("lora_down.weight", "lora_up.weight", "alpha", (
        FileLayer("lora_unet_joint_blocks_0_x_block_attn_qkv", _T, _qkv("transformer_blocks.0.attn")),
        FileLayer("lora_unet_joint_blocks_0_context_block_attn_qkv", _T,
                  _qkv("transformer_blocks.0.attn", ("add_q_proj", "add_k_proj", "add_v_proj"))),
        FileLayer("lora_unet_joint_blocks_2_x_block_attn2_qkv", _T, _qkv("transformer_blocks.2.attn2")),
        FileLayer("lora_unet_joint_blocks_1_x_block_attn_proj", _T, _whole("transformer_blocks.1.attn.to_out.0")),
        FileLayer("lora_unet_joint_blocks_1_context_block_attn_proj", _T,
                  _whole("transformer_blocks.1.attn.to_add_out")),
        FileLayer("lora_unet_joint_blocks_1_x_block_mlp_fc1", _T, _whole("transformer_blocks.1.ff.net.0.proj")),
        FileLayer("lora_unet_joint_blocks_3_context_block_mlp_fc2", _T,
                  _whole("transformer_blocks.3.ff_context.net.2")),
        FileLayer("lora_unet_joint_blocks_0_x_block_adaLN_modulation_1", _T,
                  _whole("transformer_blocks.0.norm1.linear")),
        FileLayer("lora_unet_joint_blocks_23_context_block_adaLN_modulation_1", _T,
                  (("transformer_blocks.23.norm1_context.linear", SECOND_HALF),
                   ("transformer_blocks.23.norm1_context.linear", FIRST_HALF))),
        FileLayer("lora_unet_final_layer_adaLN_modulation_1", _T, _SWAPPED_NORM_OUT),
        FileLayer("lora_te1_text_model_" + _CLIP_L_Q.replace(".", "_"), "text_encoder",
                  _whole("text_model." + _CLIP_L_Q)),
        FileLayer("lora_te2_text_model_" + _CLIP_V1.replace(".", "_"), "text_encoder_2",
                  _whole("text_model." + _CLIP_V1)),
        FileLayer("lora_te3_" + _T5_Q.replace(".", "_"), "text_encoder_3", _whole(_T5_Q)),
    )),
}


def module(pipe, component: str, name: str) -> torch.nn.Module:
    return getattr(pipe, component).get_submodule(name)


def part_rows(pipe, component: str, part: tuple[str, int | None]) -> int:
    rows = module(pipe, component, part[0]).weight.shape[0]
    return rows if part[1] is WHOLE else rows // 2


def flow_lora_state(pipe, kind: str, rank: int = 2, alpha: float = 1.0, seed: int = 0,
                    scale: float = 0.3) -> dict[str, torch.Tensor]:
    """Random rank-`rank` down/up pairs for every layer of format `kind` (FORMATS), sized from the
    tiny model's modules, with `alpha` where the format stores one."""
    spec = FORMATS[kind]
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for layer in spec.layers:
        rows = sum(part_rows(pipe, layer.component, part) for part in layer.parts)
        columns = module(pipe, layer.component, layer.parts[0][0]).weight.shape[1]
        state[f"{layer.stem}.{spec.down}"] = torch.randn(rank, columns, generator=generator) * scale
        state[f"{layer.stem}.{spec.up}"] = torch.randn(rows, rank, generator=generator) * scale
        if spec.alpha:
            state[f"{layer.stem}.{spec.alpha}"] = torch.tensor(alpha)
    return state


def write_flow_lora(path, state: dict[str, torch.Tensor]) -> str:
    save_file(state, str(path))
    return str(path)
