"""How img2img and inpainting start: the start strategy a generation run (generation.py) takes
when the request brings init images (txt2img's is start_noise.py).

Sampling starts from the encoded init images (masked content applied), the last `denoising
strength` part of the schedule. Masked content and the "only masked" crop are prepared in pixel
space by `image_prep`; results are pasted back onto the original so that everything outside the
mask keeps its pixels.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from engine.families import family_of
from engine.runs import color_correction
from engine import image_prep
from engine.image_prep import InitImage, PreparedMask
from engine.request import LATENT_UPSCALE_MODES
from engine.sampling.denoiser import CFGDenoiser
from engine.sampling.noise import ImageNoise
from engine.sampling.runner import Img2ImgStart
from engine.networks.vae import encode


def image_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as a (1, 3, H, W) tensor in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


class ImageStart:
    """Sampling from init images (img2img), with a mask (inpainting)."""

    def __init__(self, request, model, policy, addons, vae: Callable[[], Any], notes: list[str]):
        """`vae`: the job's VAE (the pipeline's, read when needed); `notes`: the job's warnings."""
        self.request, self.model, self.policy, self.addons = request, model, policy, addons
        self.options = part = request.img2img  # the request's img2img part
        self._vae, self.memory_notes = vae, notes
        self.mask: PreparedMask | None = None
        first = image_prep.flatten(part.init_images[0])
        if part.mask is not None:
            self.mask = image_prep.prepare_mask(
                part.mask, first.size, request.width, request.height,
                invert=part.inpainting_mask_invert, blur=part.mask_blur,
                only_masked=part.inpaint_full_res, padding=part.inpaint_full_res_padding,
                resize_mode=part.resize_mode)
        self.inits: list[InitImage] = [
            image_prep.prepare_init(image if image.size == first.size else
                                    image.resize(first.size, Image.Resampling.LANCZOS),
                                    request.width, request.height, part.resize_mode,
                                    self.mask, part.inpainting_fill, self._upscaler())
            for image in part.init_images]
        self._colour_targets = {index: color_correction.correction_target(init.image)
                                for index, init in enumerate(self.inits)} \
            if self.policy.run.img2img_color_correction else {}
        self._encoded: dict[int, torch.Tensor] = {}
        self._masked_encoded: dict[int, torch.Tensor] = {}

    @property
    def task(self) -> str:
        return "inpaint" if self.options.is_inpaint or self.model.is_inpainting else "img2img"

    def sampling_steps(self) -> int:
        """img2img runs the last `denoising strength` part of the schedule: steps x strength of
        it, or with exact_steps all `steps` of a longer schedule."""
        return self.request.img2img_steps

    def task_params(self) -> dict[str, Any]:
        part = self.options
        params: dict[str, Any] = {"Denoising strength": part.denoising_strength}
        if part.resize_mode != image_prep.JUST_RESIZE:
            params["Resize mode"] = image_prep.RESIZE_MODES[part.resize_mode]
        if part.initial_noise_multiplier != 1.0:
            params["Noise multiplier"] = part.initial_noise_multiplier
        if self.policy.run.img2img_extra_noise > 0:
            params["Extra noise"] = self.policy.run.img2img_extra_noise
        if part.mask is not None:
            params["Mask blur"] = part.mask_blur
            params["Masked content"] = image_prep.MASKED_CONTENT[part.inpainting_fill]
            params["Inpaint area"] = image_prep.INPAINT_AREAS[int(part.inpaint_full_res)]
            if part.inpaint_full_res:
                params["Masked area padding"] = part.inpaint_full_res_padding
            if part.inpainting_mask_invert:
                params["Mask mode"] = image_prep.MASK_MODES[1]
        return params

    def control_fallback(self):
        """The init image and mask as this job sees them (cropped for "only masked", the mask
        inverted when asked), so units that use them line up with what is generated."""
        mask = None
        if self.mask is not None:
            mask = self.mask.processing.point(lambda v: 255 if v >= 128 else 0)
        return self.inits[0].image, mask

    def frame_control(self, image):
        """"Only masked" generates a crop of the picture: frame a unit's own picture the same way."""
        if image is None or self.mask is None or self.mask.crop is None:
            return image
        size = image_prep.flatten(self.options.init_images[0]).size
        return image.resize(size, Image.Resampling.LANCZOS).crop(self.mask.crop)

    def _indices(self, batch: int, count: int) -> list[int]:
        start = batch * self.request.batch_size
        return [(start + j) % len(self.inits) for j in range(count)]

    def latent_start(self, batch: int, first_noise: torch.Tensor, denoiser: CFGDenoiser, seeds) -> Img2ImgStart:
        """The init latents of this batch (masked content applied), with the denoiser told what
        to keep where there is a mask, as A1111 prepares an img2img pass."""
        request, part = self.request, self.options
        count = first_noise.shape[0]
        indices = self._indices(batch, count)
        device = first_noise.device
        latents = torch.cat([self._init_latents(i) for i in indices]).to(device, torch.float32)
        if part.initial_noise_multiplier != 1.0:
            first_noise *= part.initial_noise_multiplier
        if self.mask is not None:
            repaint = torch.from_numpy(self.mask.latent()).to(device, torch.float32)
            keep = 1.0 - repaint
            if part.inpainting_fill == image_prep.LATENT_NOISE:
                fresh = ImageNoise(tuple(latents.shape[1:]), list(seeds), source=request.randn_source or "GPU",
                                   device=device).next()
                latents = latents * keep + fresh * repaint
            elif part.inpainting_fill == image_prep.LATENT_NOTHING:
                latents = latents * keep
            denoiser.set_mask(latents, keep.expand_as(latents))
        return Img2ImgStart(latents, part.denoising_strength, fixed_steps=part.exact_steps,
                            extra_noise=self.policy.run.img2img_extra_noise)

    def after_sampling(self, latents: torch.Tensor, denoiser: CFGDenoiser) -> torch.Tensor:
        """Outside the mask the init latents come back unchanged (A1111 blends them in)."""
        if denoiser.mask is None:
            return latents
        return latents * denoiser.nmask + denoiser.init_latent * denoiser.mask

    def image_conditioning(self, count: int, batch: int) -> torch.Tensor | None:
        """An inpainting model's extra channels: the mask (1 where it repaints) and the picture
        with the masked part blanked, encoded; in the family's own layout when it has one
        (FLUX.1 Fill), else the SD inpainting UNet's (the mask at latent size first)."""
        if not self.model.is_inpainting:
            return None
        indices = self._indices(batch, count)
        masked = torch.cat([self._masked_latents(i) for i in indices]).float()
        pixels = torch.ones(1, 1, self.request.height, self.request.width) if self.mask is None else \
            torch.from_numpy(self.mask.pixels()).float()[None, None]
        own = family_of(self.model.family).image_conditioning(masked, pixels.expand(count, 1, -1, -1))
        if own is not None:
            return own
        if self.mask is None:
            repaint = torch.ones_like(masked[:, :1])
        else:
            repaint = torch.from_numpy(self.mask.latent()).float()[None, None].expand(count, 1, -1, -1)
        return torch.cat([repaint.to(masked.device), masked], dim=1)

    def _init_latents(self, index: int) -> torch.Tensor:
        if index not in self._encoded:
            latents = encode(self._vae(), image_tensor(self.inits[index].image), faults=self.addons.faults)
            self._encoded[index] = self._to_latent_size(latents)
        return self._encoded[index]

    def _to_latent_size(self, latents: torch.Tensor) -> torch.Tensor:
        """"Just resize (latent upscale)" encodes at the image's own size and scales the latents."""
        scale = self.model.vae_scale_factor
        size = (self.request.height // scale, self.request.width // scale)
        if latents.shape[-2:] == size:
            return latents
        mode, antialias = LATENT_UPSCALE_MODES[self.options.latent_upscale_mode]
        return torch.nn.functional.interpolate(latents.float(), size=size, mode=mode, antialias=antialias)

    def _masked_latents(self, index: int) -> torch.Tensor:
        """An inpainting model's view of the picture: the kept part, grey where it repaints."""
        if index not in self._masked_encoded:
            pixels = image_tensor(self.inits[index].image)
            if self.mask is None:
                pixels = torch.zeros_like(pixels)
            else:
                keep = torch.from_numpy(1.0 - self.mask.pixels())[None, None]
                pixels = pixels * keep
            self._masked_encoded[index] = self._to_latent_size(encode(self._vae(), pixels,
                                                                              faults=self.addons.faults))
        return self._masked_encoded[index]

    def _upscaler(self) -> image_prep.Upscale | None:
        """The upscaler_for_img2img setting as a function, None for plain Lanczos."""
        name = self.policy.run.upscaler_for_img2img
        if name in ("None", "Lanczos", ""):
            return None
        if name == "Nearest":
            return lambda image, width, height: image.resize((width, height), Image.Resampling.NEAREST)
        canonical = self.addons.upscalers.canonical(name)  # a standard model's file name works too
        if canonical is None:
            note = f"Upscaler for img2img '{name}' not found: Lanczos was used"
            if note not in self.memory_notes:
                self.memory_notes.append(note)
            return None
        return lambda image, width, height: self.addons.upscalers.upscale(image, canonical, width, height,
                                                                          self.model.device,
                                                                          faults=self.addons.faults)

    def finish(self, images: list[Image.Image], batch: int, seeds, subseeds,
               save_before: Callable[[str, Image.Image, int, int], None]) -> list[Image.Image]:
        """The decoded images pasted back onto the originals (colour-corrected when asked)."""
        indices = self._indices(batch, len(images))
        finished = []
        for i, image, seed, subseed in zip(indices, images, seeds, subseeds):
            if i in self._colour_targets:
                save_before("color-correction", self.inits[i].restore(image), seed, subseed)
                image = color_correction.apply(self._colour_targets[i], image)
            finished.append(self.inits[i].restore(image))
        return finished
