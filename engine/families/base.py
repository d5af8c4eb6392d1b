"""What every model family answers (see engine/families/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import RequestError


@dataclass(frozen=True)
class FamilyDefaults:
    """What a new picture starts with for this family (the UI's presets, the API's fields left out)."""

    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    sampler: str = "DPM++ 2M"
    schedule: str = "Automatic"
    distilled_cfg_scale: float | None = None   # a guidance-distilled model's guidance input (FLUX.1)


class ModelFamily:
    name = ""                  # the LoadedModel's `family`
    label = ""                 # as people name it ("SDXL", "FLUX.1")
    latent_channels = 4
    flow = False               # a rectified-flow model (engine/sampling/flow_sigmas.py)
    size_step = 8              # width and height must be multiples of this
    # The UNet's own guidance half at scale 1: A1111 runs the negative prompt at every scale.
    uncond_at_scale_one = True

    def defaults(self, pipe) -> FamilyDefaults:
        return FamilyDefaults()

    def denoising_module(self, pipe, request) -> Any:
        """What the CFG denoiser calls as its UNet for this job."""
        return pipe.unet

    def prompt_encoder(self, pipe, request, embedding_options: dict) -> Any:
        raise NotImplementedError

    def check_request(self, request, sampler, model_name: str) -> None:
        """RequestError when this family cannot run the request as asked (size, sampler, parts)."""
        step = self.size_step
        for name in ("width", "height"):
            value = getattr(request, name)
            if value % step:
                raise RequestError(f"{self.label} pictures are made in {step}-pixel steps: {name} {value} is not "
                                   f"a multiple of {step} (try {value // step * step or step}).", name)

    def schedule_for(self, schedule: str) -> str:
        """The schedule type the job samples with for the one asked for."""
        return schedule

    def shift(self, request, vae_scale: int) -> float | None:
        """The flow shift of this job (None: not a flow model)."""
        return None

    def infotext_params(self, request, pipe) -> dict[str, Any]:
        """This family's own infotext keys for the request."""
        return {}

    def notes(self, request, pipe) -> list[str]:
        """What the job's result should tell about the request on this family (warnings)."""
        return []

    def image_conditioning(self, masked_latents: Any, repaint: Any) -> Any:
        """An inpainting model's extra input channels in this family's own layout, from the latents
        of the picture with its repainted part blanked (B, C, h, w) and the mask at full resolution
        (B, 1, H, W; 1 where it repaints), or None: the SD inpainting UNet's layout (a latent-size
        mask channel, then the picture), which the starts build (engine/runs/img2img.py,
        start_noise.py)."""
        return None

    def dtype(self, pipe):
        return self.denoising_module(pipe, None).dtype
