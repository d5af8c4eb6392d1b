"""LoRA files in the kohya-ss layout (what most LoRAs users download are), written for a pipeline."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

# Attention projections the common trainers adapt, by module-name suffix.
_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _linear_modules(module, suffixes):
    for name, child in module.named_modules():
        if isinstance(child, torch.nn.Linear) and name.endswith(suffixes):
            yield name, child


def kohya_lora_state_dict(pipe, rank: int = 4, scale: float = 0.5, seed: int = 0,
                          text_encoder: bool = True, alpha: float | None = None) -> dict[str, torch.Tensor]:
    """Random low-rank updates for the UNet's (and text encoders') attention projections.

    Keys look like `lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down
    .weight`, `..._to_q.lora_up.weight` and `..._to_q.alpha` (`alpha`, the rank unless given).
    """
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def add(prefix: str, name: str, linear: torch.nn.Linear) -> None:
        key = f"{prefix}_{name.replace('.', '_')}"
        down = torch.randn(rank, linear.in_features, generator=generator) * scale
        up = torch.randn(linear.out_features, rank, generator=generator) * scale
        state[f"{key}.lora_down.weight"] = down
        state[f"{key}.lora_up.weight"] = up
        state[f"{key}.alpha"] = torch.tensor(float(rank if alpha is None else alpha))

    for prefix, name, linear in _targets(pipe, text_encoder):
        add(prefix, name, linear)
    return state


def _targets(pipe, text_encoder: bool = True):
    """(key prefix, module name as the key spells it, the Linear) for every module a LoRA adapts."""
    for name, linear in _linear_modules(pipe.unet, _UNET_TARGETS):
        yield "lora_unet", name, linear
    if text_encoder:
        encoders = [("lora_te" if getattr(pipe, "text_encoder_2", None) is None else "lora_te1",
                     pipe.text_encoder)]
        if getattr(pipe, "text_encoder_2", None) is not None:
            encoders.append(("lora_te2", pipe.text_encoder_2))
        for prefix, encoder in encoders:
            inner = getattr(encoder, "text_model", encoder)
            for name, linear in _linear_modules(inner, _TEXT_TARGETS):
                yield prefix, f"text_model.{name}", linear


@torch.no_grad()
def merge_kohya_lora(pipe, state: dict[str, torch.Tensor], te_weight: float, unet_weight: float) -> int:
    """Merge a kohya-layout LoRA into `pipe`'s own weights by hand, as the format defines it:
    W + weight * up @ down * alpha / rank, with the text encoders' weight and the UNet's apart.
    Independent of diffusers' and PEFT's loading; returns how many layers were changed."""
    merged = 0
    for prefix, name, linear in _targets(pipe):
        key = f"{prefix}_{name.replace('.', '_')}"
        if f"{key}.lora_down.weight" not in state:
            continue
        down, up = state[f"{key}.lora_down.weight"].double(), state[f"{key}.lora_up.weight"].double()
        alpha = float(state[f"{key}.alpha"]) if f"{key}.alpha" in state else down.shape[0]
        weight = unet_weight if prefix == "lora_unet" else te_weight
        delta = weight * (up @ down) * (alpha / down.shape[0])
        linear.weight.copy_((linear.weight.double() + delta).to(linear.weight.dtype))
        merged += 1
    return merged


def write_kohya_lora(pipe, path, metadata: dict[str, str] | None = None, **options) -> str:
    save_file(kohya_lora_state_dict(pipe, **options), str(path), metadata=metadata)
    return str(path)
