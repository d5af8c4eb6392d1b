"""What the rectified-flow families (FLUX.1, SD 3.x) share: 16-channel latents, a transformer
called through an adapter that looks like the UNet to the CFG denoiser, shifted flow times as the
noise table (engine/sampling/flow_sigmas.py), and the samplers that can sample a flow.

Samplers: those that only ask the denoiser for the picture (Euler, Heun, LMS, DPM2, DPM++ 2M, the
DPM fast/adaptive solvers) run as they are, as Forge runs them; Euler a re-noises the flow's way
(engine/sampling/flow_steps.py). The SDE and other ancestral samplers add noise the SD way, which
would leave noise in a flow's picture, and the timestep samplers (DDIM, PLMS, UniPC, LCM) are
written for a discrete noise table: those are refused with the list of what works.
"""

from __future__ import annotations

from typing import Any

from engine.errors import RequestError
from engine.families.base import ModelFamily
from engine.families.files import FlowModelFile, included_parts, transformer_prefix

FLOW_SAMPLERS = ("Euler", "Euler a", "Heun", "LMS", "DPM2", "DPM++ 2M", "DPM fast", "DPM adaptive")
# Align Your Steps' published sigmas are SD 1.x / SDXL noise levels, not flow times.
FLOW_REFUSED_SCHEDULES = ("Align Your Steps",)
DEFAULT_FLOW_SCHEDULE = "Simple"


class FlowFamily(ModelFamily):
    latent_channels = 16
    flow = True
    uncond_at_scale_one = False   # Forge's and ComfyUI's way: CFG 1 is the positive prompt alone
    prompt_encoding = "flow"      # CLIP's pooled vector and T5's (or CLIP's and T5's) token states
    marker = ""                   # a key only this family's transformer has (bare, or prefixed)

    # --- its files ---

    def recognise_file(self, shapes: dict) -> FlowModelFile | None:
        """A single file whose transformer keys carry `marker`: which variant (`variant_of`), which
        text encoders and whether a VAE it includes."""
        prefix = transformer_prefix(shapes, self.marker)
        if prefix is None:
            return None
        text_encoders, has_vae = included_parts(shapes)
        return self.found(self.variant_of(shapes, prefix), text_encoders, has_vae)

    def variant_of(self, shapes: dict, prefix: str) -> str:
        """The variant a single file's transformer keys (under `prefix`) and shapes tell."""
        raise NotImplementedError

    def needed_text_encoders(self, variant: str) -> tuple[str, ...]:
        return tuple(self.text_encoder_components)

    def found(self, variant: str, text_encoders: tuple[str, ...] = (), has_vae: bool = False,
              folder: bool = False) -> FlowModelFile:
        """A file or folder of `variant`, with its config folder when one is kept for it."""
        return FlowModelFile(self.name, variant, self.variants.get(variant), text_encoders, has_vae, folder,
                             self.needed_text_encoders(variant), self.vae_name)

    # --- its jobs ---

    def check_request(self, request, sampler, model_name: str) -> None:
        super().check_request(request, sampler, model_name)
        if sampler.name not in FLOW_SAMPLERS:
            raise RequestError(f"{sampler.name} cannot sample {model_name} ({self.label}, a flow-matching model). "
                               f"Pick one of: {', '.join(FLOW_SAMPLERS)}.", "sampler_name")
        if request.scheduler in FLOW_REFUSED_SCHEDULES:
            raise RequestError(f"The {request.scheduler} schedule is made for SD 1.x and SDXL noise levels, not "
                               f"for {self.label}: pick Simple, Normal, Beta, Karras or another.", "scheduler")
        if request.s_churn:
            raise RequestError(f"Sampler churn adds noise the SD way, which a {self.label} model does not take: "
                               "set s_churn to 0.", "s_churn")
        if request.refiner is not None:
            raise RequestError(f"A refiner hands latents between SD-family models; {model_name} is {self.label}.",
                               "refiner_checkpoint")
        if request.active_controlnet_units:
            raise RequestError(f"ControlNet units for {self.label} are not available yet; turn the units off "
                               f"to generate with {model_name}.", "controlnet_units")

    def is_inpainting(self, pipe) -> bool:
        return False

    def schedule_for(self, schedule: str) -> str:
        """The schedule type a flow model samples with: Automatic is Simple (Forge's default)."""
        return DEFAULT_FLOW_SCHEDULE if schedule == "Automatic" else schedule

    def infotext_params(self, request, pipe) -> dict[str, Any]:
        return {"Shift": request.shift} if request.shift else {}
