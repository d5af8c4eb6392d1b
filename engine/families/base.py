"""What every model family answers (see engine/families/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import RequestError

# An inpainting UNet takes the latents plus the mask (1) and the masked image's latents (4).
INPAINTING_CHANNELS = 9


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
    """A family answers two sets of questions: what its files are (recognition, the config folders
    under engine/models/model_configs that load them offline, the parts a pipeline is built from,
    the layer names LoRA files use), and how its jobs run (below "its jobs")."""

    name = ""                  # the LoadedModel's `family`
    label = ""                 # as people name it ("SDXL", "FLUX.1")
    latent_channels = 4
    flow = False               # a rectified-flow model (engine/sampling/flow_sigmas.py)
    size_step = 8              # width and height must be multiples of this
    # The UNet's own guidance half at scale 1: A1111 runs the negative prompt at every scale.
    uncond_at_scale_one = True
    # How its prompts become conditioning (engine/prompts/encoders.py): "clip", A1111's way for the
    # SD families; "flow", T5 with CLIP for the flow transformers.
    prompt_encoding = "clip"

    # --- its files ---
    variants: dict[str, str] = {}                  # variant loaded -> its config folder
    text_encoder_components: dict[str, str] = {}   # part (CLIP-L, T5-XXL, ...) -> pipeline component
    tokenizers: dict[str, str] = {}                # pipeline component -> transformers class name
    transformer_class = ""                         # the diffusers class of a flow model's transformer
    identity_projection_parts: tuple[str, ...] = ()   # CLIP parts whose pooled output skips the projection
    vae_name = "the VAE"
    lora_blocks = ""           # a regex of block names only this family's LoRA keys carry

    def recognise_file(self, shapes: dict[str, tuple[int, ...]]) -> Any:
        """What a single file of this family holds (read from its keys and a few shapes), or None."""
        return None

    def recognise_folder(self, class_name: str, transformer_config: dict) -> Any:
        """What a diffusers folder of this family holds (its model_index.json's pipeline class and
        its transformer's config), or None."""
        return None

    def original_layers(self, model) -> list[tuple[str, tuple[str, ...]]]:
        """The names the publisher's layout (and LoRA files trained on it) gives the layers of this
        family's denoising network -> the diffusers modules each is (several: rows stacked)."""
        return []

    # --- its jobs ---

    def is_inpainting(self, pipe) -> bool:
        """A dedicated inpainting model: its network also takes the mask and the masked picture."""
        return pipe.unet.config.in_channels == INPAINTING_CHANNELS

    def defaults(self, pipe) -> FamilyDefaults:
        return FamilyDefaults()

    def denoising_module(self, pipe, request) -> Any:
        """What the CFG denoiser calls as its UNet for this job."""
        return pipe.unet


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
