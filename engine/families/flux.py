"""FLUX.1 (dev, schnell and their fine-tunes): a rectified-flow transformer over 2x2 patches of
16-channel latents, prompted with T5-XXL's token states and CLIP-L's pooled vector.

FLUX.1-dev is guidance-distilled: the guidance scale is an input of the transformer ("Distilled
CFG Scale", 3.5 by default), and real classifier-free guidance stays at 1, one transformer call
per step. schnell has no guidance input and is distilled for 4 steps. The shift of the flow times
grows with the picture's size unless the request sets one.

FLUX.1 Fill (guidance-distilled like dev, BFL's guidance 30) is an inpainting model: beside each
2x2 patch of noisy latents its transformer takes the same patch of the masked picture's latents
and the mask at full resolution (each latent pixel's 8x8 block of it as 64 channels), 64 + 64 +
256 = 384 inputs. `image_conditioning` builds those extra channels for the studio's inpainting
path (a txt2img job on it is an inpaint of an empty canvas).
"""

from __future__ import annotations

from typing import Any

import torch

from engine.families.base import FamilyDefaults
from engine.families.flow import FlowFamily
from engine.models.families import FLUX_FILL_IN_CHANNELS
from engine.request import DEFAULT_DISTILLED_CFG
from engine.sampling.flow_sigmas import flux_shift

FILL_DISTILLED_CFG = 30.0


class FluxDenoisingModel:
    """FluxTransformer2DModel as the CFG denoiser calls a UNet: latents (B, 16, h, w) in, the
    velocity in the same shape out. Packing into 2x2 patches, the patches' rotary positions
    (row, column) and the text's (zeros), and the distilled guidance happen here.

    For FLUX.1 Fill the CFG denoiser hands the latents with Fill's conditioning (FluxFamily.
    image_conditioning) appended as channels, (B, 16 + 16 + 64, h, w). Packing keeps the channel
    as the outer index of each patch's features, so the packed input is the packed latents with
    the packed masked picture and the packed mask appended after them: Fill's 64 + 64 + 256."""

    def __init__(self, transformer, guidance: float):
        self.transformer = transformer
        self.config = transformer.config
        self.guidance = guidance

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def __call__(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 return_dict: bool = False, added_cond_kwargs: dict | None = None, **_: Any):
        from diffusers import FluxPipeline  # its packing helpers are static methods

        batch, channels, height, width = x.shape
        dtype, device = x.dtype, x.device
        packed = FluxPipeline._pack_latents(x, batch, channels, height, width)
        image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, device, dtype)
        text_ids = torch.zeros(encoder_hidden_states.shape[1], 3, device=device, dtype=dtype)
        guidance = None
        if self.config.guidance_embeds:
            guidance = torch.full((batch,), float(self.guidance), device=device, dtype=torch.float32)
        pooled = (added_cond_kwargs or {}).get("text_embeds")
        velocity = self.transformer(hidden_states=packed, timestep=t.to(dtype), guidance=guidance,
                                    pooled_projections=pooled, encoder_hidden_states=encoder_hidden_states,
                                    txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]
        # _unpack_latents takes the picture's size in pixels (latents x 8); the velocity has the
        # latents' 16 channels (x 4 packed) whatever the input had beside them.
        return (FluxPipeline._unpack_latents(velocity, height * 8, width * 8, 8),)


class FluxFamily(FlowFamily):
    name, label = "flux", "FLUX.1"
    size_step = 16   # 2x2 patches of 8x-downscaled latents

    def defaults(self, pipe) -> FamilyDefaults:
        distilled = bool(pipe is not None and pipe.transformer.config.guidance_embeds)
        # BFL run Fill at guidance 30 (it repaints faithfully to the prompt there), dev at 3.5.
        fill = distilled and pipe.transformer.config.in_channels == FLUX_FILL_IN_CHANNELS
        guidance = (FILL_DISTILLED_CFG if fill else DEFAULT_DISTILLED_CFG) if distilled else None
        return FamilyDefaults(steps=20 if distilled else 4, cfg_scale=1.0, width=1024, height=1024,
                              sampler="Euler", schedule="Simple", distilled_cfg_scale=guidance)

    def denoising_module(self, pipe, request) -> FluxDenoisingModel:
        guidance = DEFAULT_DISTILLED_CFG if request is None else request.distilled_cfg_scale
        return FluxDenoisingModel(pipe.transformer, guidance)

    def prompt_encoder(self, pipe, request, embedding_options: dict):
        from engine.prompts.flow_conditioning import FlowPromptEncoder
        return FlowPromptEncoder(pipe, self.name, emphasis=request.emphasis or "Original")

    def shift(self, request, vae_scale: int) -> float:
        return request.shift or flux_shift(request.width, request.height, vae_scale)

    def notes(self, request, pipe) -> list[str]:
        if pipe.transformer.config.guidance_embeds and request.cfg_scale > 1:
            return [f"CFG scale {request.cfg_scale:g} on a guidance-distilled FLUX.1 model runs the negative prompt too "
                    "(twice the time) and usually burns the picture: its guidance is the Distilled CFG Scale "
                    f"({request.distilled_cfg_scale:g}); CFG scale 1 is its normal setting."]
        return []

    def image_conditioning(self, masked_latents: torch.Tensor, repaint: torch.Tensor) -> torch.Tensor:
        """FLUX.1 Fill's extra inputs in the latents' layout: the masked picture's latents, then the
        mask's 8x8 pixel blocks unshuffled into 64 channels per latent pixel (row by row within
        the block, as BFL's reference folds it)."""
        scale = repaint.shape[-1] // masked_latents.shape[-1]
        mask = torch.nn.functional.pixel_unshuffle(repaint.to(masked_latents), scale)
        return torch.cat([masked_latents, mask], dim=1)

    def infotext_params(self, request, pipe) -> dict[str, Any]:
        params = super().infotext_params(request, pipe)
        if pipe.transformer.config.guidance_embeds:
            params["Distilled CFG Scale"] = request.distilled_cfg_scale
        return params


FLUX = FluxFamily()
