"""Write a diffusers SD pipeline as ONE ``.safetensors`` file in the original LDM key layout.

This is the layout of the CompVis / Stability checkpoints that A1111 users download:

* UNet under ``model.diffusion_model.`` (``input_blocks`` / ``middle_block`` /
  ``output_blocks`` / ``time_embed`` / ``out``, plus ``label_emb`` for SDXL),
* VAE under ``first_stage_model.`` (``encoder.down.N.block.M``, ``mid.block_1``,
  ``mid.attn_1`` with 1x1-conv q/k/v/proj_out, ``decoder.up.N`` counted from the bottom, ...),
* text encoders: SD 1.x ``cond_stage_model.transformer.text_model.`` (Hugging Face CLIP names),
  SD 2.x ``cond_stage_model.model.`` (OpenCLIP names), SDXL
  ``conditioner.embedders.0.transformer.text_model.`` (HF CLIP) and
  ``conditioner.embedders.1.model.`` (OpenCLIP).

Test and benchmark code (``python -m bench`` writes its random full-size model with it): it
exists so that the single-file loading path can be tested on files the tests make, since no real
checkpoint can be downloaded here. The app itself never imports it.
"""

from __future__ import annotations

import math
import os
import re

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer.text_model."
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."
# The SDXL refiner has one text encoder, OpenCLIP bigG, as embedder 0.
SDXL_REFINER_OPENCLIP_PREFIX = "conditioner.embedders.0.model."

# OpenCLIP's trained logit scale is clamped at log(100); the real files carry it.
_OPENCLIP_LOGIT_SCALE = math.log(100.0)

_UNET_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}

_UNET_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}

_VAE_TOP_LEVEL = {
    "encoder.conv_in": "encoder.conv_in",
    "encoder.conv_out": "encoder.conv_out",
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.conv_out": "decoder.conv_out",
    "decoder.conv_norm_out": "decoder.norm_out",
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
}

_VAE_ATTENTION_NAMES = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _split_module(rest: str) -> tuple[str, str]:
    """``"norm1.weight"`` -> ``("norm1", "weight")``; ``"to_out.0.bias"`` -> ``("to_out.0", "bias")``."""
    module, _, leaf = rest.rpartition(".")
    return module, leaf


def _per_block(value, n: int) -> list[int]:
    if isinstance(value, int):
        return [value] * n
    return [int(v) for v in value]


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """The UNet's state dict under LDM names (without the ``model.diffusion_model.`` prefix)."""
    config = unet.config
    n_levels = len(config.block_out_channels)
    layers = _per_block(config.layers_per_block, n_levels)

    # LDM numbers every TimestepEmbedSequential; input block 0 is conv_in, then each level has
    # `layers` res(+attn) blocks and, except the last level, a separate downsampling block.
    down_start, index = [], 1
    for level in range(n_levels):
        down_start.append(index)
        index += layers[level] + (1 if level < n_levels - 1 else 0)
    # Output blocks: each up level has layers+1 res(+attn) blocks; the upsampler is appended
    # to the last block of the level (position 1, or 2 after an attention).
    up_layers = list(reversed(layers))
    up_start, index = [], 0
    for level in range(n_levels):
        up_start.append(index)
        index += up_layers[level] + 1

    out = {}

    def put(ldm_name, tensor):
        if ldm_name in out:
            raise AssertionError(f"two UNet tensors map to {ldm_name}")
        out[ldm_name] = tensor

    def resnet(prefix, rest):
        module, leaf = _split_module(rest)
        if module not in _UNET_RESNET_NAMES:
            raise KeyError(f"unknown UNet resnet tensor {rest}")
        return f"{prefix}.{_UNET_RESNET_NAMES[module]}.{leaf}"

    for name, tensor in unet.state_dict().items():
        module, leaf = _split_module(name)
        if module in _UNET_TOP_LEVEL:
            put(f"{_UNET_TOP_LEVEL[module]}.{leaf}", tensor)
            continue
        m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name)
        if m:
            level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            block = down_start[level] + j
            if kind == "resnets":
                put(resnet(f"input_blocks.{block}.0", rest), tensor)
            else:  # the attention internals already carry the LDM names
                put(f"input_blocks.{block}.1.{rest}", tensor)
            continue
        m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", name)
        if m:
            level = int(m[1])
            put(f"input_blocks.{down_start[level] + layers[level]}.0.op.{m[2]}", tensor)
            continue
        m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", name)
        if m:
            kind, k, rest = m[1], int(m[2]), m[3]
            if kind == "resnets":  # resnet, attention, resnet -> middle_block.0 / .1 / .2
                put(resnet(f"middle_block.{2 * k}", rest), tensor)
            else:
                put(f"middle_block.{2 * k + 1}.{rest}", tensor)
            continue
        m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name)
        if m:
            level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            block = up_start[level] + j
            if kind == "resnets":
                put(resnet(f"output_blocks.{block}.0", rest), tensor)
            else:
                put(f"output_blocks.{block}.1.{rest}", tensor)
            continue
        m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", name)
        if m:
            level = int(m[1])
            has_attention = hasattr(unet.up_blocks[level], "attentions")
            block = up_start[level] + up_layers[level]
            put(f"output_blocks.{block}.{2 if has_attention else 1}.conv.{m[2]}", tensor)
            continue
        raise KeyError(f"no LDM name for UNet tensor {name}")
    return out


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """The VAE's state dict under LDM names (without the ``first_stage_model.`` prefix)."""
    n_levels = len(vae.config.block_out_channels)
    out = {}

    def put(ldm_name, tensor):
        if ldm_name in out:
            raise AssertionError(f"two VAE tensors map to {ldm_name}")
        out[ldm_name] = tensor

    for name, tensor in vae.state_dict().items():
        module, leaf = _split_module(name)
        if module in _VAE_TOP_LEVEL:
            put(f"{_VAE_TOP_LEVEL[module]}.{leaf}", tensor)
            continue
        m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", name)
        if m:
            rest = m[3].replace("conv_shortcut", "nin_shortcut")
            put(f"{m[1]}.mid.block_{int(m[2]) + 1}.{rest}", tensor)
            continue
        m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", name)
        if m:
            module, leaf = _split_module(m[2])
            if module not in _VAE_ATTENTION_NAMES:
                raise KeyError(f"unknown VAE attention tensor {name}")
            if leaf == "weight" and module != "group_norm":
                tensor = tensor.reshape(*tensor.shape, 1, 1)  # Linear -> 1x1 conv
            put(f"{m[1]}.mid.attn_1.{_VAE_ATTENTION_NAMES[module]}.{leaf}", tensor)
            continue
        m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name)
        if m:
            rest = m[3].replace("conv_shortcut", "nin_shortcut")
            put(f"encoder.down.{m[1]}.block.{m[2]}.{rest}", tensor)
            continue
        m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", name)
        if m:
            put(f"encoder.down.{m[1]}.downsample.conv.{m[2]}", tensor)
            continue
        # LDM numbers the decoder levels from the lowest resolution up: up.N is up_blocks[n-1-N].
        m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name)
        if m:
            rest = m[3].replace("conv_shortcut", "nin_shortcut")
            put(f"decoder.up.{n_levels - 1 - int(m[1])}.block.{m[2]}.{rest}", tensor)
            continue
        m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", name)
        if m:
            put(f"decoder.up.{n_levels - 1 - int(m[1])}.upsample.conv.{m[2]}", tensor)
            continue
        raise KeyError(f"no LDM name for VAE tensor {name}")
    return out


def _text_model_state(text_encoder) -> dict[str, torch.Tensor]:
    """Text-transformer tensors without any ``text_model.`` prefix, plus ``text_projection.weight``.

    transformers 5 flattened ``CLIPTextModel`` (no ``text_model`` attribute) while
    ``CLIPTextModelWithProjection`` still wraps it; handle both.
    """
    return {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}


def _position_ids(text_encoder) -> torch.Tensor:
    n = text_encoder.config.max_position_embeddings
    return torch.arange(n, dtype=torch.int64).unsqueeze(0)


def hf_clip_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    """HF CLIP names under ``text_model.`` (as in SD 1.x files), with the ``position_ids`` buffer
    the real files carry (transformers 5 no longer saves it; loaders ignore it)."""
    state = _text_model_state(text_encoder)
    if "text_projection.weight" in state:
        raise ValueError("an LDM HF-CLIP text encoder has no text projection")
    out = dict(state)
    out["embeddings.position_ids"] = _position_ids(text_encoder)
    return out


def _random_like_layer(hidden: int, intermediate: int, generator: torch.Generator, dtype) -> dict:
    def rnd(*shape, scale):
        return (scale * torch.randn(shape, generator=generator)).to(dtype)

    return {
        "ln_1.weight": 1 + rnd(hidden, scale=0.1),
        "ln_1.bias": rnd(hidden, scale=0.1),
        "attn.in_proj_weight": rnd(3 * hidden, hidden, scale=hidden ** -0.5),
        "attn.in_proj_bias": rnd(3 * hidden, scale=0.1),
        "attn.out_proj.weight": rnd(hidden, hidden, scale=hidden ** -0.5),
        "attn.out_proj.bias": rnd(hidden, scale=0.1),
        "ln_2.weight": 1 + rnd(hidden, scale=0.1),
        "ln_2.bias": rnd(hidden, scale=0.1),
        "mlp.c_fc.weight": rnd(intermediate, hidden, scale=hidden ** -0.5),
        "mlp.c_fc.bias": rnd(intermediate, scale=0.1),
        "mlp.c_proj.weight": rnd(hidden, intermediate, scale=intermediate ** -0.5),
        "mlp.c_proj.bias": rnd(hidden, scale=0.1),
    }


def open_clip_to_ldm(text_encoder, extra_final_layer: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """OpenCLIP names (as under ``cond_stage_model.model.`` in SD 2.x files).

    q/k/v are concatenated into ``attn.in_proj_weight/bias``; ``text_projection`` is stored
    (width, embed_dim), i.e. transposed relative to the ``nn.Linear`` weight.

    ``extra_final_layer`` mimics SD 2.x files, which carry the whole OpenCLIP ViT-H text tower
    (24 resblocks) although SD 2.x conditions on the penultimate layer, so the diffusers text
    encoder has one layer fewer (23).  The extra resblock, and the ``text_projection`` SD 2.x's
    ``CLIPTextModel`` lacks, get seeded random values: the loader must ignore them.
    """
    state = _text_model_state(text_encoder)
    config = text_encoder.config
    hidden = config.hidden_size
    dtype = state["embeddings.token_embedding.weight"].dtype
    out = {
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
    }
    generator = torch.Generator().manual_seed(int(seed) + 12345)
    if "text_projection.weight" in state:
        out["text_projection"] = state.pop("text_projection.weight").T.contiguous()
    else:
        proj_dim = getattr(config, "projection_dim", hidden)
        out["text_projection"] = (torch.randn(hidden, proj_dim, generator=generator) * hidden ** -0.5).to(dtype)
    out["logit_scale"] = torch.tensor(_OPENCLIP_LOGIT_SCALE, dtype=dtype)

    names = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "self_attn.out_proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    n_layers = config.num_hidden_layers
    for i in range(n_layers):
        src = f"encoder.layers.{i}."
        dst = f"transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            parts = [state.pop(f"{src}self_attn.{p}_proj.{leaf}") for p in ("q", "k", "v")]
            out[f"{dst}attn.in_proj_{leaf}"] = torch.cat(parts, dim=0)
            for hf, oc in names.items():
                out[f"{dst}{oc}.{leaf}"] = state.pop(f"{src}{hf}.{leaf}")
    state.pop("embeddings.position_ids", None)  # a buffer; OpenCLIP has no such tensor
    if state:
        raise KeyError(f"no OpenCLIP name for text encoder tensors {sorted(state)}")
    if extra_final_layer:
        layer = _random_like_layer(hidden, config.intermediate_size, generator, dtype)
        for k, v in layer.items():
            out[f"transformer.resblocks.{n_layers}.{k}"] = v
    return out


def ldm_state_dict(pipe, family: str) -> dict[str, torch.Tensor]:
    """The whole checkpoint (UNet, VAE, text encoders) under original LDM key names."""
    if family not in ("sd1", "sd2", "sdxl", "sdxl-refiner"):
        raise ValueError(f"unknown family {family!r}")
    out = {}

    def add(prefix, tensors):
        for k, v in tensors.items():
            key = prefix + k
            if key in out:
                raise AssertionError(f"duplicate key {key}")
            out[key] = v

    add(UNET_PREFIX, unet_to_ldm(pipe.unet))
    add(VAE_PREFIX, vae_to_ldm(pipe.vae))
    if family == "sd1":
        add(SD1_CLIP_PREFIX, hf_clip_to_ldm(pipe.text_encoder))
    elif family == "sd2":
        add(SD2_OPENCLIP_PREFIX, open_clip_to_ldm(pipe.text_encoder, extra_final_layer=True))
    elif family == "sdxl-refiner":
        add(SDXL_REFINER_OPENCLIP_PREFIX, open_clip_to_ldm(pipe.text_encoder_2))
    else:
        add(SDXL_CLIP_PREFIX, hf_clip_to_ldm(pipe.text_encoder))
        add(SDXL_OPENCLIP_PREFIX, open_clip_to_ldm(pipe.text_encoder_2))
    return out


def save_ldm_state_dict(state: dict[str, torch.Tensor], path) -> str:
    from safetensors.torch import save_file

    path = os.fspath(path)
    # safetensors refuses shared or non-contiguous storage: give every tensor its own copy.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    save_file(tensors, path, metadata={"format": "pt"})
    return path


def export_single_file(pipe, path, family: str) -> str:
    """Write ``pipe``'s UNet, VAE and text encoder(s) as one LDM-layout ``.safetensors`` file."""
    return save_ldm_state_dict(ldm_state_dict(pipe, family), path)
