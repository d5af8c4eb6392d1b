"""SD 1.x, SD 2.x and SDXL: a UNet over 4-channel latents, CLIP text encoders read the A1111 way
(engine/prompts/conditioning.py), discrete noise tables (engine/sampling/schedules.py)."""

from __future__ import annotations

from engine.families.base import FamilyDefaults, ModelFamily
from engine.prompts.conditioning import PromptEncoder


class StableDiffusionFamily(ModelFamily):
    def __init__(self, name: str, label: str, size: int):
        self.name, self.label, self._size = name, label, size

    def defaults(self, pipe) -> FamilyDefaults:
        return FamilyDefaults(width=self._size, height=self._size)

    def prompt_encoder(self, pipe, request, embedding_options: dict) -> PromptEncoder:
        return PromptEncoder(pipe, self.name, clip_skip=request.clip_skip, emphasis=request.emphasis,
                             **embedding_options)


SD1 = StableDiffusionFamily("sd1", "SD 1.x", 512)
SD2 = StableDiffusionFamily("sd2", "SD 2.x", 768)
SDXL = StableDiffusionFamily("sdxl", "SDXL", 1024)
