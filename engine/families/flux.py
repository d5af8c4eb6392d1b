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

import math
from typing import Any

import torch

from engine.families.base import FamilyDefaults
from engine.families.files import CLIP_L, T5, FlowModelFile
from engine.families.flow import FlowFamily

DEFAULT_DISTILLED_CFG = 3.5   # FLUX.1-dev's guidance input, as BFL and Forge run it
FILL_DISTILLED_CFG = 30.0
# The resolution-dependent shift (its scheduler config: base/max image_seq_len and shift).
FLUX_BASE_PATCHES, FLUX_MAX_PATCHES = 256, 4096
FLUX_BASE_MU, FLUX_MAX_MU = 0.5, 1.15

# Recognition (the keys of BFL's files): the transformer's `double_blocks.N.img_attn...`, bare or
# under `model.diffusion_model.`; FLUX.1-dev (guidance-distilled) has `guidance_in`, schnell does
# not; `img_in` takes 64 channels (16 latent x 2x2), 384 for Fill (+ the masked picture's latents
# and the mask), 128 for the Depth / Canny models (+ the control picture's latents).
FLUX_MARKER = "double_blocks.0.img_attn.qkv.weight"
CHROMA_MARKER = "distilled_guidance_layer.in_proj.weight"
FLUX_FILL_IN_CHANNELS = 384
CHROMA = "Chroma (FLUX.1-based)"   # FLUX.1-schnell pruned and retrained: T5 only, no CLIP

# BFL's layer names -> diffusers' FluxTransformer2DModel (checkpoint conversion in
# engine/families/flux_keys.py, LoRA files in engine/networks/flow_lora_keys.py). A fused layer is
# the rows of several diffusers modules, in the order listed.
TOP_LEVEL = {
    "img_in": "x_embedder", "txt_in": "context_embedder", "final_layer.linear": "proj_out",
    **{f"{original}.{side}_layer": f"time_text_embed.{embedder}.linear_{number}"
       for original, embedder in (("time_in", "timestep_embedder"), ("vector_in", "text_embedder"),
                                  ("guidance_in", "guidance_embedder"))
       for side, number in (("in", 1), ("out", 2))},
}
# Stored (shift, scale) by BFL, read (scale, shift) by diffusers' AdaLayerNormContinuous.
FINAL_MODULATION = ("final_layer.adaLN_modulation.1", "norm_out.linear")
DOUBLE = {  # inside double_blocks.N -> inside transformer_blocks.N
    "img_mod.lin": "norm1.linear", "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0", "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj", "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj", "txt_mlp.2": "ff_context.net.2",
    "img_attn.norm.query_norm": "attn.norm_q", "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q", "txt_attn.norm.key_norm": "attn.norm_added_k",
}
DOUBLE_FUSED = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
SINGLE = {"linear2": "proj_out", "modulation.lin": "norm.linear",  # inside single_(transformer_)blocks.N
          "norm.query_norm": "attn.norm_q", "norm.key_norm": "attn.norm_k"}
SINGLE_FUSED = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")  # linear1's rows, in order
# XLabs' LoRA processors, by the original layer they change (`double_blocks.0.processor.qkv_lora1.
# down.weight`); 1 is the picture's stream, 2 the text's. A single block's `qkv_lora` changes
# only the q, k, v rows of `linear1`.
XLABS_DOUBLE = {"processor.qkv_lora1": "img_attn.qkv", "processor.qkv_lora2": "txt_attn.qkv",
                "processor.proj_lora1": "img_attn.proj", "processor.proj_lora2": "txt_attn.proj"}


def flux_shift(width: int, height: int, vae_scale: int = 8) -> float:
    """FLUX.1's shift for a picture of this size: exp(mu), mu linear in its 2x2 latent patches."""
    patches = (height // vae_scale // 2) * (width // vae_scale // 2)
    slope = (FLUX_MAX_MU - FLUX_BASE_MU) / (FLUX_MAX_PATCHES - FLUX_BASE_PATCHES)
    mu = FLUX_BASE_MU + slope * (patches - FLUX_BASE_PATCHES)
    return math.exp(mu)


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
    variants = {"FLUX.1-dev": "flux-dev", "FLUX.1-schnell": "flux-schnell", "FLUX.1 Fill": "flux-fill"}
    text_encoder_components = {CLIP_L: "text_encoder", T5: "text_encoder_2"}
    tokenizers = {"tokenizer": "CLIPTokenizer", "tokenizer_2": "T5TokenizerFast"}
    transformer_class = "FluxTransformer2DModel"
    vae_name = "the FLUX VAE (ae.safetensors)"
    lora_blocks = r"double_blocks|single_blocks|single_transformer_blocks"

    marker = FLUX_MARKER

    # --- its files ---

    def needed_text_encoders(self, variant: str) -> tuple[str, ...]:
        return (T5,) if variant == CHROMA else super().needed_text_encoders(variant)

    @staticmethod
    def variant_of(shapes: dict, prefix: str) -> str:
        if prefix + CHROMA_MARKER in shapes:
            return CHROMA
        img_in = shapes.get(prefix + "img_in.weight", (0, 64))
        if prefix + "guidance_in.in_layer.weight" not in shapes:
            return "FLUX.1-schnell"
        if img_in[1] == FLUX_FILL_IN_CHANNELS:
            return "FLUX.1 Fill"
        if img_in[1] == 128:
            return "FLUX.1 Depth/Canny"
        return "FLUX.1-dev"

    def recognise_folder(self, class_name: str, transformer_config: dict) -> FlowModelFile | None:
        if not class_name.startswith("Flux"):
            return None
        if "Fill" in class_name or transformer_config.get("in_channels") == FLUX_FILL_IN_CHANNELS:
            variant = "FLUX.1 Fill"
        elif "Kontext" in class_name:   # the same transformer as dev: only the pipeline class tells
            variant = "FLUX.1 Kontext"
        elif transformer_config.get("guidance_embeds") is False:
            variant = "FLUX.1-schnell"
        else:
            variant = "FLUX.1-dev"
        return self.found(variant, folder=True)

    def pipeline_class(self, flow_model: FlowModelFile):
        """FLUX.1 Fill's transformer takes the mask and the masked picture beside the latents, which
        FluxFillPipeline feeds it (the studio's own sampling drives the parts either way; the class
        tells what the model is to anyone who calls it)."""
        import diffusers

        return diffusers.FluxFillPipeline if flow_model.config_name == "flux-fill" else diffusers.FluxPipeline

    def original_layers(self, model) -> list[tuple[str, tuple[str, ...]]]:
        """BFL's (and XLabs') layer names in a FluxTransformer2DModel -> the diffusers modules each is
        (several: their rows stacked in that order)."""
        layers = [(original, (target,)) for original, target in TOP_LEVEL.items()]
        layers.append((FINAL_MODULATION[0], (FINAL_MODULATION[1],)))
        for i in range(len(model.transformer_blocks)):
            block, target = f"double_blocks.{i}", f"transformer_blocks.{i}"
            layers += [(f"{block}.{inner}", (f"{target}.{name}",)) for inner, name in DOUBLE.items()]
            layers += [(f"{block}.{inner}", tuple(f"{target}.{part}" for part in parts))
                       for inner, parts in DOUBLE_FUSED.items()]
            for processor, inner in XLABS_DOUBLE.items():
                parts = DOUBLE_FUSED.get(inner, (DOUBLE.get(inner),))
                layers.append((f"{block}.{processor}", tuple(f"{target}.{part}" for part in parts)))
        for i in range(len(model.single_transformer_blocks)):
            block, target = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
            layers += [(f"{block}.{inner}", (f"{target}.{name}",)) for inner, name in SINGLE.items()]
            layers.append((f"{block}.linear1", tuple(f"{target}.{part}" for part in SINGLE_FUSED)))
            layers.append((f"{block}.processor.qkv_lora", tuple(f"{target}.{part}" for part in SINGLE_FUSED[:3])))
            layers.append((f"{block}.processor.proj_lora", (f"{target}.{SINGLE['linear2']}",)))
        return layers

    # --- its jobs ---

    def defaults(self, pipe) -> FamilyDefaults:
        distilled = bool(pipe is not None and pipe.transformer.config.guidance_embeds)
        # BFL run Fill at guidance 30 (it repaints faithfully to the prompt there), dev at 3.5.
        fill = distilled and pipe.transformer.config.in_channels == FLUX_FILL_IN_CHANNELS
        guidance = (FILL_DISTILLED_CFG if fill else DEFAULT_DISTILLED_CFG) if distilled else None
        return FamilyDefaults(steps=20 if distilled else 4, cfg_scale=1.0, width=1024, height=1024,
                              sampler="Euler", schedule="Simple", distilled_cfg_scale=guidance)

    def guidance(self, request, pipe) -> float:
        """The Distilled CFG Scale a job runs with: the request's, or the model's own when it names
        none (an API call leaving the field out: 3.5 for dev, 30 for Fill)."""
        given = None if request is None else request.distilled_cfg_scale
        return given if given is not None else self.defaults(pipe).distilled_cfg_scale or DEFAULT_DISTILLED_CFG

    def denoising_module(self, pipe, request) -> FluxDenoisingModel:
        return FluxDenoisingModel(pipe.transformer, self.guidance(request, pipe))

    def shift(self, request, vae_scale: int) -> float:
        return request.shift or flux_shift(request.width, request.height, vae_scale)

    def notes(self, request, pipe) -> list[str]:
        if pipe.transformer.config.guidance_embeds and request.cfg_scale > 1:
            return [f"CFG scale {request.cfg_scale:g} on a guidance-distilled FLUX.1 model runs the negative prompt too "
                    "(twice the time) and usually burns the picture: its guidance is the Distilled CFG Scale "
                    f"({self.guidance(request, pipe):g}); CFG scale 1 is its normal setting."]
        return []

    def is_inpainting(self, pipe) -> bool:
        """FLUX.1 Fill: its transformer takes the masked picture and the mask beside the latents."""
        return pipe.transformer.config.in_channels == FLUX_FILL_IN_CHANNELS

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
            params["Distilled CFG Scale"] = self.guidance(request, pipe)
        return params


FLUX = FluxFamily()
