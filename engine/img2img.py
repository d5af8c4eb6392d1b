"""img2img and inpainting jobs: the txt2img batch loop, starting from encoded init images.

The starting noise is ours (seeded on the CPU, as for txt2img), so the pipeline's own noise is
replaced through this job's scheduler, which is built fresh for every job. Masked content and
the "only masked" crop are prepared in pixel space by `image_prep`; results are pasted back onto
the original so that everything outside the mask keeps its pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from . import color_correction, image_prep
from .generation import Txt2ImgRun
from .image_prep import InitImage, PreparedMask
from .request import LATENT_UPSCALE_MODES
from .vae import encode


def image_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as a (1, 3, H, W) tensor in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def _replace_noise(scheduler, noise: torch.Tensor) -> None:
    """Make the pipeline noise the init latents with our seeded noise instead of its own."""
    add_noise = scheduler.add_noise

    def add_our_noise(samples, _their_noise, timesteps):
        return add_noise(samples, noise.to(samples.device, samples.dtype), timesteps)

    scheduler.add_noise = add_our_noise


class Img2ImgRun(Txt2ImgRun):
    """One img2img or inpainting job."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        request = self.request
        self.mask: PreparedMask | None = None
        first = image_prep.flatten(request.init_images[0])
        if request.mask is not None:
            self.mask = image_prep.prepare_mask(
                request.mask, first.size, request.width, request.height,
                invert=request.inpainting_mask_invert, blur=request.mask_blur,
                only_masked=request.inpaint_full_res, padding=request.inpaint_full_res_padding,
                resize_mode=request.resize_mode)
        self.inits: list[InitImage] = [
            image_prep.prepare_init(image if image.size == first.size else
                                    image.resize(first.size, Image.Resampling.LANCZOS),
                                    request.width, request.height, request.resize_mode,
                                    self.mask, request.inpainting_fill, self._upscaler())
            for image in request.init_images]
        self._colour_targets = {index: color_correction.correction_target(init.image)
                                for index, init in enumerate(self.inits)} \
            if self.policy.run.img2img_color_correction else {}
        self._encoded: dict[int, torch.Tensor] = {}
        self._masked_encoded: dict[int, torch.Tensor] = {}

    @property
    def task(self) -> str:
        return "inpaint" if self.request.mask is not None or self.model.is_inpainting else "img2img"

    @property
    def sampling_steps(self) -> int:
        """img2img runs the last `denoising strength` part of the schedule: steps x strength of
        it, or with exact_steps all `steps` of a longer schedule."""
        return self.request.img2img_steps

    def _schedule_steps(self) -> int:
        return self.request.schedule_steps

    def _strength(self) -> float:
        """What the pipeline is told, so that it runs `sampling_steps` of `_schedule_steps`."""
        if not self.request.exact_steps:
            return self.request.denoising_strength
        return min(1.0, (self.sampling_steps + 0.5) / self._schedule_steps())

    def _task_params(self) -> dict[str, Any]:
        request = self.request
        params: dict[str, Any] = {"Denoising strength": request.denoising_strength}
        if request.resize_mode != image_prep.JUST_RESIZE:
            params["Resize mode"] = image_prep.RESIZE_MODES[request.resize_mode]
        if request.initial_noise_multiplier != 1.0:
            params["Noise multiplier"] = request.initial_noise_multiplier
        if request.mask is not None:
            params["Mask blur"] = request.mask_blur
            params["Masked content"] = image_prep.MASKED_CONTENT[request.inpainting_fill]
            params["Inpaint area"] = image_prep.INPAINT_AREAS[int(request.inpaint_full_res)]
            if request.inpaint_full_res:
                params["Masked area padding"] = request.inpaint_full_res_padding
            if request.inpainting_mask_invert:
                params["Mask mode"] = image_prep.MASK_MODES[1]
        return params

    def _control_fallback(self):
        """The init image and mask as this job sees them (cropped for "only masked", the mask
        inverted when asked), so units that use them line up with what is generated."""
        mask = None
        if self.mask is not None:
            mask = self.mask.processing.point(lambda v: 255 if v >= 128 else 0)
        return self.inits[0].image, mask

    def _frame_control(self, image):
        """"Only masked" generates a crop of the picture: frame a unit's own picture the same way."""
        if image is None or self.mask is None or self.mask.crop is None:
            return image
        size = image_prep.flatten(self.request.init_images[0]).size
        return image.resize(size, Image.Resampling.LANCZOS).crop(self.mask.crop)

    def _indices(self, batch: int, count: int) -> list[int]:
        start = batch * self.request.batch_size
        return [(start + j) % len(self.inits) for j in range(count)]

    def _task_inputs(self, noise: torch.Tensor, batch: int) -> dict[str, Any]:
        request = self.request
        count = noise.shape[0]
        indices = self._indices(batch, count)
        noise = noise * request.initial_noise_multiplier
        latents = torch.cat([self._init_latents(i) for i in indices]).to(noise.device, noise.dtype)
        latent_mask = None
        if self.mask is not None:
            latent_mask = torch.from_numpy(self.mask.latent()).to(noise.device, noise.dtype)
            if request.inpainting_fill == image_prep.LATENT_NOISE:
                latents = latents * (1 - latent_mask) + noise * latent_mask
            elif request.inpainting_fill == image_prep.LATENT_NOTHING:
                latents = latents * (1 - latent_mask)
        _replace_noise(self.pipe.scheduler, noise)
        inputs: dict[str, Any] = {"image": latents, "strength": self._strength()}
        if self.task == "inpaint":
            inputs.update(width=request.width, height=request.height,
                          mask_image=self._pipeline_mask(latent_mask))
            if self.model.is_inpainting:
                inputs["masked_image_latents"] = torch.cat(
                    [self._masked_latents(i) for i in indices]).to(noise.device, noise.dtype)
            else:
                # Unused by an ordinary UNet, but without it the pipeline would mask `image`,
                # which here is latents, with a full-size mask.
                inputs["masked_image_latents"] = latents
            if self._strength() >= 1.0:
                # At full strength the pipeline starts from `latents` alone, unscaled noise.
                inputs["latents"] = noise
        return inputs

    def _pipeline_mask(self, latent_mask: torch.Tensor | None) -> Image.Image:
        """The mask at image size, made of whole latent pixels, so the pipeline's downscaled copy
        is exactly the latent mask used above."""
        request = self.request
        if latent_mask is None:  # an inpainting model doing plain img2img: all of it may change
            return Image.new("L", (request.width, request.height), 255)
        small = Image.fromarray((latent_mask.cpu().float().numpy() * 255).astype(np.uint8), "L")
        return small.resize((request.width, request.height), Image.Resampling.NEAREST)

    def _init_latents(self, index: int) -> torch.Tensor:
        if index not in self._encoded:
            latents = encode(self.pipe.vae, image_tensor(self.inits[index].image))
            self._encoded[index] = self._to_latent_size(latents)
        return self._encoded[index]

    def _to_latent_size(self, latents: torch.Tensor) -> torch.Tensor:
        """"Just resize (latent upscale)" encodes at the image's own size and scales the latents."""
        scale = self.model.vae_scale_factor
        size = (self.request.height // scale, self.request.width // scale)
        if latents.shape[-2:] == size:
            return latents
        mode, antialias = LATENT_UPSCALE_MODES[self.request.latent_upscale_mode]
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
            self._masked_encoded[index] = self._to_latent_size(encode(self.pipe.vae, pixels))
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
                                                                          self.model.device)

    def _finish(self, images: list[Image.Image], batch: int) -> list[Image.Image]:
        indices = self._indices(batch, len(images))
        seeds, subseeds = self.seeds.batch(batch, self.request.batch_size)
        finished = []
        for i, image, seed, subseed in zip(indices, images, seeds, subseeds):
            if i in self._colour_targets:
                self.save_before("color-correction", self.inits[i].restore(image), seed, subseed)
                image = color_correction.apply(self._colour_targets[i], image)
            finished.append(self.inits[i].restore(image))
        return finished
