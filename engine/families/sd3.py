"""Stable Diffusion 3.x (3.5 Large, Large Turbo, Medium): the MMDiT, a rectified-flow transformer
over 16-channel latents, prompted with CLIP-L and CLIP-G's token states beside T5-XXL's and their
two pooled vectors; real classifier-free guidance, flow times shifted by 3."""

from __future__ import annotations

from typing import Any

import torch

from engine.families.base import FamilyDefaults
from engine.families.flow import FlowFamily

SD3_SHIFT = 3.0
TIMESTEP_SCALE = 1000   # the MMDiT is conditioned on 1000 t


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

    def defaults(self, pipe) -> FamilyDefaults:
        return FamilyDefaults(steps=28, cfg_scale=4.5, width=1024, height=1024, sampler="Euler", schedule="Simple")

    def denoising_module(self, pipe, request) -> SD3DenoisingModel:
        return SD3DenoisingModel(pipe.transformer)

    def prompt_encoder(self, pipe, request, embedding_options: dict):
        from engine.prompts.flow_conditioning import FlowPromptEncoder
        return FlowPromptEncoder(pipe, self.name, emphasis=request.emphasis or "Original")

    def shift(self, request, vae_scale: int) -> float:
        return request.shift or SD3_SHIFT


SD3 = SD3Family()
