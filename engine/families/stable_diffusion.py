"""SD 1.x, SD 2.x and SDXL: a UNet over 4-channel latents, CLIP text encoders read the A1111 way
(engine/prompts/conditioning.py, their `prompt_encoding` "clip"), discrete noise tables (engine/sampling/schedules.py).

Recognition (the keys of the original single-file layout): the UNet under `model.diffusion_model.`,
the text encoder tells the family -- SD 1.x's CLIP ViT-L under `cond_stage_model.transformer.`,
SD 2.x's OpenCLIP under `cond_stage_model.model.`, SDXL's two under `conditioner.embedders.0/1`
(a refiner has only OpenCLIP-G, as embedder 0). Each loads with its config folder under
engine/models/model_configs (sd1, sd2, sdxl, sdxl-refiner)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import CheckpointError
from engine.families.base import INPAINTING_CHANNELS, FamilyDefaults, ModelFamily

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
SD1_TEXT = ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
            "cond_stage_model.transformer.embeddings.token_embedding.weight")
SD2_TEXT = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"
SDXL_TEXT_G = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"
SDXL_REFINER_TEXT = "conditioner.embedders.0.model.transformer.resblocks.0.attn.in_proj_weight"


@dataclass(frozen=True)
class CheckpointLayout:
    family: str        # "sd1" | "sd2" | "sdxl" (the SDXL refiner is of the SDXL family: its latent space)
    unet_in_channels: int
    # An SDXL refiner: one OpenCLIP-G text encoder and aesthetic-score conditioning. It loads
    # with its own config folder, and makes pictures as any model does (A1111 lets it).
    refiner: bool = False

    @property
    def config_name(self) -> str:
        """The folder under model_configs/ describing this layout."""
        return "sdxl-refiner" if self.refiner else self.family

    @property
    def label(self) -> str:
        return "SDXL Refiner" if self.refiner else LABELS[self.family]


class StableDiffusionFamily(ModelFamily):
    lora_blocks = r"down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block"

    def __init__(self, name: str, label: str, size: int):
        self.name, self.label, self._size = name, label, size
        self.variants = {label: name}

    def defaults(self, pipe) -> FamilyDefaults:
        return FamilyDefaults(width=self._size, height=self._size)



SD1 = StableDiffusionFamily("sd1", "SD 1.x", 512)
SD2 = StableDiffusionFamily("sd2", "SD 2.x", 768)
SDXL = StableDiffusionFamily("sdxl", "SDXL", 1024)
LABELS = {family.name: family.label for family in (SD1, SD2, SDXL)}


def recognise_layout(shapes: dict[str, tuple[int, ...]], name: str) -> CheckpointLayout:
    """The SD 1.x / 2.x / SDXL layout of a single file whose keys have the UNet (UNET_IN), or a
    CheckpointError naming what it is not."""
    in_channels = shapes[UNET_IN][1]
    refiner = False
    if SDXL_TEXT_G in shapes:
        family = "sdxl"
    elif SDXL_REFINER_TEXT in shapes:
        family, refiner = "sdxl", True
    elif SD2_TEXT in shapes:
        family = "sd2"
    elif any(key in shapes for key in SD1_TEXT):
        family = "sd1"
    else:
        raise CheckpointError(
            f"'{name}' has UNet weights but no text encoder this app recognises "
            "(SD 1.x, SD 2.x or SDXL)", "checkpoint")
    if in_channels not in (4, INPAINTING_CHANNELS):
        raise CheckpointError(
            f"'{name}' is a {LABELS[family]} model with a {in_channels}-channel UNet "
            "(an instruct-pix2pix style model?); only ordinary (4-channel) and inpainting "
            "(9-channel) models are supported.", "checkpoint")
    return CheckpointLayout(family, in_channels, refiner)


def family_of_pipeline(pipe) -> str:
    class_name = type(pipe).__name__
    if class_name.startswith(("Flux", "StableDiffusion3")):
        # These have a second text encoder too; they are not SDXL.
        raise CheckpointError(f"A {class_name} is not an SD 1.x, SD 2.x or SDXL pipeline", "checkpoint")
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    # SD 2.x's OpenCLIP text encoder uses gelu; SD 1.x's CLIP uses quick_gelu.
    return "sd2" if pipe.text_encoder.config.hidden_act == "gelu" else "sd1"


def folder_label(index: dict, text_encoder_config: dict) -> str | None:
    """The family of an SD diffusers folder, from its model_index.json and its text encoder's config."""
    class_name = index.get("_class_name", "")
    if "XL" in class_name:
        return "SDXL Refiner" if not index.get("text_encoder", [None])[0] else SDXL.label
    if class_name.startswith("StableDiffusion"):
        # SD 2.x's OpenCLIP text encoder uses GELU, SD 1.x's CLIP ViT-L quick GELU.
        return (SD2 if text_encoder_config.get("hidden_act") == "gelu" else SD1).label
    return None
