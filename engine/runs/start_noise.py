"""How txt2img starts: from pure noise, the whole schedule. The start strategy a generation run
(generation.py) takes when the request has no init images (img2img's is img2img.py)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from PIL import Image

from engine.families import family_of
from engine.networks.vae import encode


class NoiseStart:
    """Sampling from noise. On a dedicated inpainting model, as an inpaint of an empty canvas."""

    def __init__(self, request, model, addons, vae: Callable[[], Any]):
        self.request, self.model, self.addons, self._vae = request, model, addons, vae
        self._blank_conditioning: torch.Tensor | None = None

    @property
    def task(self) -> str:
        return "inpaint" if self.model.is_inpainting else "txt2img"

    def sampling_steps(self) -> int:
        """The steps that actually run (and that prompt editing counts in)."""
        return self.request.steps

    def task_params(self) -> dict[str, Any]:
        """Infotext keys only this kind of job has: none."""
        return {}

    def control_fallback(self) -> tuple[Image.Image | None, Image.Image | None]:
        """The picture (and mask) a ControlNet unit without its own image uses: none here."""
        return None, None

    def frame_control(self, image: Image.Image | None) -> Image.Image | None:
        """A unit's own picture (or mask) framed like the region the job generates: all of it."""
        return image

    def latent_start(self, batch: int, first_noise: torch.Tensor, denoiser, seeds) -> None:
        """What sampling starts from: None, pure noise."""
        return None

    def after_sampling(self, latents: torch.Tensor, denoiser) -> torch.Tensor:
        return latents

    def image_conditioning(self, count: int, batch: int) -> torch.Tensor | None:
        """An inpainting model's extra input channels: everything masked, a grey picture behind."""
        if not self.model.is_inpainting:
            return None
        if self._blank_conditioning is None:
            grey = torch.zeros(1, 3, self.request.height, self.request.width)
            encoded = encode(self._vae(), grey, faults=self.addons.faults).float()
            # The family's own layout (FLUX.1 Fill: the mask at full resolution) or the SD UNet's.
            own = family_of(self.model.family).image_conditioning(encoded, torch.ones_like(grey[:, :1]))
            self._blank_conditioning = own if own is not None else \
                torch.cat([torch.ones_like(encoded[:, :1]), encoded], dim=1)
        return self._blank_conditioning.expand(count, -1, -1, -1)

    def finish(self, images: list[Image.Image], batch: int, seeds, subseeds, save_before) -> list[Image.Image]:
        return images
