"""Stable Diffusion 3.x (3.5 Large, Large Turbo, Medium): the MMDiT, a rectified-flow transformer
over 16-channel latents, prompted with CLIP-L and CLIP-G's token states beside T5-XXL's and their
two pooled vectors; real classifier-free guidance, flow times shifted by 3."""

from __future__ import annotations

from typing import Any

import torch

from engine.families.base import FamilyDefaults
from engine.families.files import CLIP_G, CLIP_L, T5, FlowModelFile
from engine.families.flow import FlowFamily

SD3_SHIFT = 3.0
TIMESTEP_SCALE = 1000   # the MMDiT is conditioned on 1000 t

# Recognition (the keys of Stability's files): `joint_blocks.N.{x_block,context_block}...`, bare or
# under `model.diffusion_model.`; 38 blocks for 3.5 Large (and Large Turbo), 24 for Medium; 3.5
# Medium adds a second attention (`x_block.attn2`) to its first blocks, SD 3 Medium has none.
SD3_MARKER = "joint_blocks.0.context_block.adaLN_modulation.1.bias"
LARGE_BLOCKS, MEDIUM_BLOCKS = 38, 24

# The MMDiT's names (Stability's reference code, sd-scripts) -> diffusers' SD3Transformer2DModel,
# for LoRA files (engine/networks/flow_lora_keys.py); a fused layer is the rows of several modules.
MMDIT_TOP = {
    "x_embedder.proj": "pos_embed.proj", "context_embedder": "context_embedder",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "final_layer.linear": "proj_out", "final_layer.adaLN_modulation.1": "norm_out.linear",
}
MMDIT_BLOCK = {
    "x_block": {"attn.proj": "attn.to_out.0", "attn.ln_q": "attn.norm_q", "attn.ln_k": "attn.norm_k",
                "attn2.proj": "attn2.to_out.0", "attn2.ln_q": "attn2.norm_q", "attn2.ln_k": "attn2.norm_k",
                "mlp.fc1": "ff.net.0.proj", "mlp.fc2": "ff.net.2", "adaLN_modulation.1": "norm1.linear"},
    "context_block": {"attn.proj": "attn.to_add_out", "attn.ln_q": "attn.norm_added_q",
                      "attn.ln_k": "attn.norm_added_k", "mlp.fc1": "ff_context.net.0.proj",
                      "mlp.fc2": "ff_context.net.2", "adaLN_modulation.1": "norm1_context.linear"},
}
MMDIT_FUSED = {"x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
               "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
               "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}


class SD3DenoisingModel:
    """SD3Transformer2DModel as the CFG denoiser calls a UNet: latents in, the velocity out."""

    def __init__(self, transformer):
        self.transformer = transformer
        self.config = transformer.config

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def __call__(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 return_dict: bool = False, added_cond_kwargs: dict | None = None, **_: Any):
        pooled = (added_cond_kwargs or {}).get("text_embeds")
        velocity = self.transformer(hidden_states=x, timestep=t * TIMESTEP_SCALE,
                                    encoder_hidden_states=encoder_hidden_states, pooled_projections=pooled,
                                    return_dict=False)[0]
        return (velocity,)


class SD3Family(FlowFamily):
    name, label = "sd3", "Stable Diffusion 3"
    size_step = 16   # the MMDiT's 2x2 patches
    variants = {"SD 3.5 Large": "sd3.5-large", "SD 3.5 Medium": "sd3.5-medium", "SD 3 Medium": "sd3-medium"}
    text_encoder_components = {CLIP_L: "text_encoder", CLIP_G: "text_encoder_2", T5: "text_encoder_3"}
    tokenizers = {"tokenizer": "CLIPTokenizer", "tokenizer_2": "CLIPTokenizer", "tokenizer_3": "T5TokenizerFast"}
    transformer_class = "SD3Transformer2DModel"
    identity_projection_parts = (CLIP_L,)   # its CLIP-L is used unprojected, as diffusers loads it
    vae_name = "the SD3 VAE"
    lora_blocks = r"joint_blocks|context_block|x_block"

    marker = SD3_MARKER

    # --- its files ---

    @staticmethod
    def variant_of(shapes: dict, prefix: str) -> str:
        start = prefix + "joint_blocks."
        blocks = 1 + max(int(key[len(start):].split(".", 1)[0]) for key in shapes if key.startswith(start))
        if blocks == LARGE_BLOCKS:
            return "SD 3.5 Large"
        if blocks == MEDIUM_BLOCKS:
            dual = prefix + "joint_blocks.0.x_block.attn2.qkv.weight" in shapes
            return "SD 3.5 Medium" if dual else "SD 3 Medium"
        return f"SD 3.x ({blocks}-block)"

    def recognise_folder(self, class_name: str, transformer_config: dict) -> FlowModelFile | None:
        if not class_name.startswith("StableDiffusion3"):
            return None
        if transformer_config.get("num_layers") == LARGE_BLOCKS:
            variant = "SD 3.5 Large"
        elif transformer_config.get("dual_attention_layers"):
            variant = "SD 3.5 Medium"
        else:
            variant = "SD 3 Medium"
        return self.found(variant, folder=True)

    def pipeline_class(self, flow_model: FlowModelFile):
        import diffusers

        return diffusers.StableDiffusion3Pipeline

    def original_layers(self, model) -> list[tuple[str, tuple[str, ...]]]:
        """The MMDiT's layer names in an SD3Transformer2DModel -> the diffusers modules each is."""
        layers = [(original, (target,)) for original, target in MMDIT_TOP.items()]
        for i in range(len(model.transformer_blocks)):
            block, target = f"joint_blocks.{i}", f"transformer_blocks.{i}"
            layers += [(f"{block}.{kind}.{inner}", (f"{target}.{name}",))
                       for kind, table in MMDIT_BLOCK.items() for inner, name in table.items()]
            layers += [(f"{block}.{inner}", tuple(f"{target}.{part}" for part in parts))
                       for inner, parts in MMDIT_FUSED.items()]
        return layers

    # --- its jobs ---

    def defaults(self, pipe) -> FamilyDefaults:
        return FamilyDefaults(steps=28, cfg_scale=4.5, width=1024, height=1024, sampler="Euler", schedule="Simple")

    def denoising_module(self, pipe, request) -> SD3DenoisingModel:
        return SD3DenoisingModel(pipe.transformer)

    def shift(self, request, vae_scale: int) -> float:
        return request.shift or SD3_SHIFT


SD3 = SD3Family()
