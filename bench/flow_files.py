"""Single files in the layouts FLUX.1 and SD 3.x models are published in, written from diffusers
components (the benchmark's full-size random models and the tests' tiny ones alike):

* FLUX.1 transformer in Black Forest Labs' original names (`double_blocks.N.img_attn.qkv`, fused
  q/k/v and, in the single blocks, q/k/v/MLP fused in `linear1`; the final norm's modulation
  stored shift-first), bare as BFL publish it or under `model.diffusion_model.` in all-in-one files;
* SD 3.x MMDiT in Stability's names (`joint_blocks.N.x_block.attn.qkv`, `x_embedder.proj`, ...);
* text encoders under `text_encoders.clip_l.transformer.`, `text_encoders.clip_g.transformer.`,
  `text_encoders.t5xxl.transformer.` (Hugging Face names below the prefix), or alone with no
  prefix (`clip_l.safetensors`, `t5xxl_fp16.safetensors`);
* the VAE in LDM names under `vae.` (FLUX all-in-one) or `first_stage_model.` (SD 3.x), or bare
  (BFL's `ae.safetensors`).

The name mappings are the inverse of the conversions diffusers' single-file loader applies
(facts: the key names; the code is this project's). The app never imports it: the benchmark
(python -m bench) and the tests do (tests/support/flow_writers.py adds the test-only helpers).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.models.loading import CONFIG_ROOT
from engine.models.tiny_flow_models import FLOW_COMPONENT_CLASSES, tiny_flow_configs
from tests.support.ldm_export import vae_to_ldm

TRANSFORMER_PREFIX = "model.diffusion_model."
ENCODER_PREFIXES = {"clip_l": "text_encoders.clip_l.transformer.", "clip_g": "text_encoders.clip_g.transformer.",
                    "t5xxl": "text_encoders.t5xxl.transformer."}
# Which diffusers component each encoder file name is, per family.
ENCODER_COMPONENTS = {"flux": {"clip_l": "text_encoder", "t5xxl": "text_encoder_2"},
                      "sd3": {"clip_l": "text_encoder", "clip_g": "text_encoder_2", "t5xxl": "text_encoder_3"}}


def _qkv(state: dict, prefix: str, names: tuple[str, str, str], suffix: str) -> torch.Tensor:
    return torch.cat([state.pop(f"{prefix}{name}.{suffix}") for name in names])


def _shift_first(tensor: torch.Tensor) -> torch.Tensor:
    # diffusers' AdaLayerNormContinuous splits (scale, shift); the original models (shift, scale).
    scale, shift = tensor.chunk(2)
    return torch.cat([shift, scale])


def _renamed(state: dict, names: dict[str, str]) -> dict[str, torch.Tensor]:
    """Pop each diffusers module in `names` and give its weight and bias the original name."""
    out = {}
    for diffusers_name, original in names.items():
        for leaf in ("weight", "bias", "scale"):
            key = f"{diffusers_name}.{leaf}"
            if key in state:
                out[f"{original}.{'scale' if original.endswith('_norm') else leaf}"] = state.pop(key)
    return out


def flux_to_bfl(transformer) -> dict[str, torch.Tensor]:
    """A FluxTransformer2DModel's weights under BFL's original names (no prefix)."""
    state = dict(transformer.state_dict())
    out = _renamed(state, {
        "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
        "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
        "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
        "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
        "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
        "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
        "context_embedder": "txt_in", "x_embedder": "img_in", "proj_out": "final_layer.linear"})
    for leaf in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{leaf}"] = _shift_first(state.pop(f"norm_out.linear.{leaf}"))
    for i in range(transformer.config.num_layers):
        d, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for leaf in ("weight", "bias"):
            out[f"{b}img_attn.qkv.{leaf}"] = _qkv(state, d + "attn.", ("to_q", "to_k", "to_v"), leaf)
            out[f"{b}txt_attn.qkv.{leaf}"] = _qkv(state, d + "attn.", ("add_q_proj", "add_k_proj", "add_v_proj"), leaf)
        out.update(_renamed(state, {
            d + "norm1.linear": b + "img_mod.lin", d + "norm1_context.linear": b + "txt_mod.lin",
            d + "attn.norm_q": b + "img_attn.norm.query_norm", d + "attn.norm_k": b + "img_attn.norm.key_norm",
            d + "attn.norm_added_q": b + "txt_attn.norm.query_norm",
            d + "attn.norm_added_k": b + "txt_attn.norm.key_norm",
            d + "ff.net.0.proj": b + "img_mlp.0", d + "ff.net.2": b + "img_mlp.2",
            d + "ff_context.net.0.proj": b + "txt_mlp.0", d + "ff_context.net.2": b + "txt_mlp.2",
            d + "attn.to_out.0": b + "img_attn.proj", d + "attn.to_add_out": b + "txt_attn.proj"}))
    for i in range(transformer.config.num_single_layers):
        d, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for leaf in ("weight", "bias"):
            out[f"{b}linear1.{leaf}"] = _qkv(state, d, ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), leaf)
        out.update(_renamed(state, {d + "norm.linear": b + "modulation.lin", d + "attn.norm_q": b + "norm.query_norm",
                                    d + "attn.norm_k": b + "norm.key_norm", d + "proj_out": b + "linear2"}))
    if state:
        raise KeyError(f"no BFL name for FLUX tensors {sorted(state)}")
    return out


def sd3_to_original(transformer) -> dict[str, torch.Tensor]:
    """An SD3Transformer2DModel's weights under Stability's original MMDiT names (no prefix)."""
    state = dict(transformer.state_dict())
    out = {"pos_embed": state.pop("pos_embed.pos_embed")}
    out.update(_renamed(state, {
        "pos_embed.proj": "x_embedder.proj", "context_embedder": "context_embedder",
        "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
        "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
        "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
        "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
        "proj_out": "final_layer.linear"}))
    for leaf in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{leaf}"] = _shift_first(state.pop(f"norm_out.linear.{leaf}"))
    last = transformer.config.num_layers - 1
    for i in range(transformer.config.num_layers):
        d, j = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        for leaf in ("weight", "bias"):
            out[f"{j}x_block.attn.qkv.{leaf}"] = _qkv(state, d + "attn.", ("to_q", "to_k", "to_v"), leaf)
            out[f"{j}context_block.attn.qkv.{leaf}"] = _qkv(
                state, d + "attn.", ("add_q_proj", "add_k_proj", "add_v_proj"), leaf)
            if f"{d}attn2.to_q.{leaf}" in state:
                out[f"{j}x_block.attn2.qkv.{leaf}"] = _qkv(state, d + "attn2.", ("to_q", "to_k", "to_v"), leaf)
            if i == last:   # the last block's context stream ends with a (shift, scale) norm, no MLP
                out[f"{j}context_block.adaLN_modulation.1.{leaf}"] = _shift_first(
                    state.pop(f"{d}norm1_context.linear.{leaf}"))
        out.update({f"{j}{name}.weight": state.pop(f"{d}{diffusers_name}.weight") for name, diffusers_name in (
            ("x_block.attn.ln_q", "attn.norm_q"), ("x_block.attn.ln_k", "attn.norm_k"),
            ("context_block.attn.ln_q", "attn.norm_added_q"), ("context_block.attn.ln_k", "attn.norm_added_k"),
            ("x_block.attn2.ln_q", "attn2.norm_q"), ("x_block.attn2.ln_k", "attn2.norm_k"))
            if f"{d}{diffusers_name}.weight" in state})
        out.update(_renamed(state, {
            d + "norm1.linear": j + "x_block.adaLN_modulation.1", d + "norm1_context.linear": j + "context_block.adaLN_modulation.1",
            d + "attn.to_out.0": j + "x_block.attn.proj", d + "attn.to_add_out": j + "context_block.attn.proj",
            d + "attn2.to_out.0": j + "x_block.attn2.proj",
            d + "ff.net.0.proj": j + "x_block.mlp.fc1", d + "ff.net.2": j + "x_block.mlp.fc2",
            d + "ff_context.net.0.proj": j + "context_block.mlp.fc1", d + "ff_context.net.2": j + "context_block.mlp.fc2"}))
    if state:
        raise KeyError(f"no original name for SD3 tensors {sorted(state)}")
    return out


def encoder_state(encoder) -> dict[str, torch.Tensor]:
    """A text encoder's tensors as the standalone files carry them (Hugging Face names): CLIP's
    under `text_model.` (transformers 5's CLIPTextModel no longer nests them there). T5's token
    embedding is written twice, as `shared.weight` and `encoder.embed_tokens.weight` (one tensor
    in memory, so copied): diffusers' single-file T5 route does not re-tie them, and a file with
    `shared.weight` alone leaves the encoder's embedding unloaded (on the meta device)."""
    state = encoder.state_dict()
    if "shared.weight" in state:
        return {key: tensor.clone() if key == "encoder.embed_tokens.weight" else tensor for key, tensor in state.items()}
    return {key if key.startswith(("text_model.", "text_projection.")) else "text_model." + key: tensor
            for key, tensor in state.items()}


def transformer_state(family: str, transformer) -> dict[str, torch.Tensor]:
    return flux_to_bfl(transformer) if family == "flux" else sd3_to_original(transformer)


def single_file_state(family: str, components: dict, text_encoders: tuple[str, ...] = (),
                      vae: bool = True, prefix: str = TRANSFORMER_PREFIX) -> dict[str, torch.Tensor]:
    """One checkpoint's tensors: the transformer under `prefix`, the named encoders ("clip_l",
    "clip_g", "t5xxl") under `text_encoders.<name>.transformer.`, the VAE under `vae.` (FLUX) or
    `first_stage_model.` (SD 3.x)."""
    state = {prefix + key: value for key, value in transformer_state(family, components["transformer"]).items()}
    for name in text_encoders:
        encoder = components[ENCODER_COMPONENTS[family][name]]
        state.update({ENCODER_PREFIXES[name] + key: value for key, value in encoder_state(encoder).items()})
    if vae:
        vae_prefix = "vae." if family == "flux" else "first_stage_model."
        state.update({vae_prefix + key: value for key, value in vae_to_ldm(components["vae"]).items()})
    return state


def write(state: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return path


def write_config_folder(layout: str, components: dict, folder: Path) -> Path:
    """A diffusers-style config folder for the tiny `layout` (one subfolder per component, configs
    only), as model_configs/<layout>/ is for the real model."""
    family = "flux" if layout.startswith("flux") else "sd3"
    for name, config in tiny_flow_configs(layout).items():
        sub = folder / name
        sub.mkdir(parents=True, exist_ok=True)
        if name in ("transformer", "vae"):
            config = {"_class_name": FLOW_COMPONENT_CLASSES[family][name][1], **config}
            (sub / "config.json").write_text(json.dumps(config), encoding="utf-8")
        else:
            components[name].config.save_pretrained(sub)
    return folder


def write_tiny_config_folder(layout: str, components: dict, folder: Path) -> Path:
    """write_config_folder plus the real tokenizers, scheduler config and model index of the
    layout (engine/models/model_configs): a config folder the app loads the tiny model with."""
    write_config_folder(layout, components, folder)
    for sub in (CONFIG_ROOT / layout).iterdir():
        if sub.name.startswith(("tokenizer", "scheduler", "model_index")) and not (folder / sub.name).exists():
            (shutil.copytree if sub.is_dir() else shutil.copy)(sub, folder / sub.name)
    return folder
