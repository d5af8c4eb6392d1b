"""Single files in the key layouts FLUX.1 and SD 3.x checkpoints are published in, holding only
what recognising them needs: every marker key the loader reads, with the shapes it reads, and
one-element tensors elsewhere (a real file's tensors are gigabytes)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

TRANSFORMER_PREFIX = "model.diffusion_model."
TEXT_ENCODER_KEYS = {
    "clip_l": "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight",
    "clip_g": "text_encoders.clip_g.transformer.text_model.embeddings.token_embedding.weight",
    "t5xxl": "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight",
}
VAE_PREFIXES = {"vae": "vae.", "first_stage_model": "first_stage_model."}


def flux_keys(guidance: bool = True, img_in_channels: int = 64) -> dict[str, tuple[int, ...]]:
    """A FLUX.1 transformer in BFL's original names (2 of its 19 double and 38 single blocks)."""
    keys = {"img_in.weight": (3072, img_in_channels), "txt_in.weight": (3072, 4096),
            "time_in.in_layer.weight": (3072, 256), "vector_in.in_layer.weight": (3072, 768),
            "final_layer.linear.weight": (64, 3072)}
    for n in range(2):
        for part in ("img_attn.qkv.weight", "img_attn.norm.key_norm.scale", "txt_attn.qkv.weight",
                     "img_mlp.0.weight", "txt_mod.lin.weight"):
            keys[f"double_blocks.{n}.{part}"] = (1,)
        keys[f"single_blocks.{n}.linear1.weight"] = (1,)
    if guidance:
        keys["guidance_in.in_layer.weight"] = (3072, 256)
        keys["guidance_in.in_layer.bias"] = (3072,)
    return keys


def sd3_keys(blocks: int, dual_attention_blocks: int = 0) -> dict[str, tuple[int, ...]]:
    """An SD 3.x MMDiT in Stability's original names: `blocks` joint blocks."""
    width = 64 * blocks
    keys = {"x_embedder.proj.weight": (width, 16, 2, 2), "pos_embed": (1, 192 * 192, width),
            "context_embedder.weight": (width, 4096)}
    for n in range(blocks):
        keys[f"joint_blocks.{n}.x_block.attn.qkv.weight"] = (1,)
        keys[f"joint_blocks.{n}.context_block.adaLN_modulation.1.bias"] = (6 * width,)
        if n < dual_attention_blocks:
            keys[f"joint_blocks.{n}.x_block.attn2.qkv.weight"] = (1,)
    return keys


def write_flow_file(path: Path, transformer: dict[str, tuple[int, ...]], prefix: str = TRANSFORMER_PREFIX,
                    text_encoders: tuple[str, ...] = (), vae: str | None = None) -> Path:
    """A .safetensors file with the transformer keys under `prefix`, plus the named text encoders
    ("clip_l", "clip_g", "t5xxl") and VAE ("vae" or "first_stage_model" prefix)."""
    shapes = {prefix + key: shape for key, shape in transformer.items()}
    for name in text_encoders:
        shapes[TEXT_ENCODER_KEYS[name]] = (1,)
    if vae is not None:
        shapes[VAE_PREFIXES[vae] + "decoder.conv_in.weight"] = (512, 16, 3, 3)
    # Only the shapes of a few keys are read: those are written whole, anything large as one element.
    tensors = {key: torch.zeros(shape if math.prod(shape) <= 2_000_000 else (1,), dtype=torch.float16)
               for key, shape in shapes.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path

