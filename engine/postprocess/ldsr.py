"""LDSR: the latent-diffusion 4x super-resolution upscaler the ecosystem ships as a built-in
extension, read from its own files (models/LDSR/model.ckpt or model.safetensors, with the
project.yaml that describes it) and run on diffusers' UNet2DModel and VQModel.

The file holds a CompVis latent-diffusion model: `model.diffusion_model.*` (an openaimodel UNet
whose input is the noisy latent and the low-resolution picture side by side) and
`first_stage_model.*` (a VQ autoencoder). Its keys are renamed here into diffusers' layout.

What the ecosystem does, and so what this does:
- the picture is first resized by scale / 4 (Lanczos), so one 4x pass lands on the asked scale;
- it is padded on the right and bottom with its edge pixels to a multiple of 64, at least 128;
- DDIM with eta 1 for `ldsr_steps` steps (default 100) on the ecosystem's "uniform" timesteps
  (every 1000 // steps-th one, plus one), starting from pure noise;
- the UNet runs on 128-latent-pixel patches 64 apart, and the VQ decoder on the same patches,
  each blended in with a weight that falls towards its edges (clipped to 0.01..0.5);
- the result is clamped, cut back to 4x the unpadded picture, and truncated to 8 bits.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from engine.errors import RequestError
from engine.option import Option
from engine.postprocess.ldsr_files import (  # noqa: F401 (model_file and missing_message are read through ldsr too)
    LdsrConfig,
    build_models,
    config_file,
    missing_message,
    model_file,
    read_weights,
)

log = logging.getLogger(__name__)

NAME = "LDSR"
PATCH = 128          # latent pixels a side of one UNet / decoder patch
PATCH_STRIDE = 64
WEIGHT_CLIP = (0.01, 0.5)
ETA = 1.0
PAD_TO = 64
MIN_PADDED = 2 * PAD_TO
UP = 4               # the model's own factor
DEFAULT_STEPS = 100

# The ecosystem's LDSR settings, under its names and in its Upscaling section.
LDSR_OPTIONS: tuple[Option, ...] = (
    Option("ldsr_steps", DEFAULT_STEPS, "LDSR processing steps. Lower = faster", "Upscaling",
           minimum=1, maximum=200),
    Option("ldsr_cached", False, "Cache LDSR model in memory", "Upscaling"),
)


def ddim_timesteps(steps: int, total: int = 1000) -> list[int]:
    """The ecosystem's 'uniform' DDIM timesteps, ascending (1, 1 + c, ...; c = total // steps)."""
    stride = max(1, total // max(1, steps))
    return [t + 1 for t in range(0, total, stride)]


def patch_weights(height: int, width: int) -> torch.Tensor:
    """Each pixel's blending weight in a patch: its relative distance to the nearest edge
    (0 at the edge, 0.5 in the middle), clipped to WEIGHT_CLIP."""
    ys = torch.arange(height, dtype=torch.float32)[:, None] / max(1, height - 1)
    xs = torch.arange(width, dtype=torch.float32)[None, :] / max(1, width - 1)
    nearest = torch.minimum(torch.minimum(ys, xs), torch.minimum(1 - ys, 1 - xs))
    return nearest.clamp(*WEIGHT_CLIP)


def _positions(size: int, patch: int, stride: int) -> list[int]:
    return list(range(0, size - patch + 1, stride))


def _patched(run: Callable[[tuple[slice, slice]], torch.Tensor], height: int, width: int,
             patch: tuple[int, int], stride: tuple[int, int], factor: int) -> torch.Tensor:
    """`run` on every patch of a (height, width) grid, its outputs (`factor` times larger)
    blended by patch_weights; one patch is returned as it is."""
    tops, lefts = _positions(height, patch[0], stride[0]), _positions(width, patch[1], stride[1])
    if len(tops) == 1 and len(lefts) == 1 and patch == (height, width):
        return run((slice(0, height), slice(0, width)))
    weight = None
    total = norm = None
    for top in tops:
        for left in lefts:
            piece = run((slice(top, top + patch[0]), slice(left, left + patch[1])))
            if total is None:
                total = torch.zeros(piece.shape[:2] + (height * factor, width * factor),
                                    device=piece.device, dtype=piece.dtype)
                norm = torch.zeros((height * factor, width * factor), device=piece.device, dtype=piece.dtype)
                weight = patch_weights(patch[0] * factor, patch[1] * factor).to(piece.device, piece.dtype)
            rows = slice(top * factor, (top + patch[0]) * factor)
            cols = slice(left * factor, (left + patch[1]) * factor)
            total[:, :, rows, cols] += piece * weight
            norm[rows, cols] += weight
    return total / norm


@dataclass
class Ldsr:
    unet: torch.nn.Module
    vq: torch.nn.Module
    config: LdsrConfig
    alphas_cumprod: torch.Tensor = field(init=False)

    def __post_init__(self):
        c = self.config
        betas = torch.linspace(c.linear_start ** 0.5, c.linear_end ** 0.5, c.timesteps, dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

    @classmethod
    def from_folder(cls, folder: Path) -> "Ldsr":
        path = model_file(folder)
        if path is None:
            raise RequestError(missing_message(folder), "upscaler")
        yaml_path = config_file(folder)
        config = LdsrConfig.from_yaml(yaml_path) if yaml_path else LdsrConfig()
        return cls(*build_models(read_weights(path), config), config)

    def to(self, device) -> "Ldsr":
        self.unet.to(device=device, dtype=torch.float32)
        self.vq.to(device=device, dtype=torch.float32)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def _eps(self, latent: torch.Tensor, low: torch.Tensor, t: int) -> torch.Tensor:
        height, width = latent.shape[-2:]
        timestep = torch.tensor([t], device=latent.device)

        def run(where):
            rows, cols = where
            both = torch.cat([latent[:, :, rows, cols], low[:, :, rows, cols]], dim=1)
            return self.unet(both, timestep).sample

        return _patched(run, height, width, (PATCH, PATCH), (PATCH_STRIDE, PATCH_STRIDE), 1)

    def _decode(self, latent: torch.Tensor) -> torch.Tensor:
        latent = latent / self.config.scale_factor
        height, width = latent.shape[-2:]
        patch = (min(PATCH, height), min(PATCH, width))
        stride = (min(PATCH_STRIDE, height), min(PATCH_STRIDE, width))
        factor = 2 ** (len(self.config.ch_mult) - 1)

        def run(where):
            return self.vq.decode(latent[:, :, where[0], where[1]]).sample

        return _patched(run, height, width, patch, stride, factor)

    @torch.inference_mode()
    def sample(self, low: torch.Tensor, steps: int, generator: torch.Generator,
               should_stop: Callable[[], bool] = lambda: False,
               on_step: Callable[[], None] = lambda: None) -> torch.Tensor | None:
        """DDIM (eta 1) from noise, conditioned on `low` (1x3xHxW in -1..1); the decoded
        picture in -1..1, or None when `should_stop` said so."""
        device = low.device
        factor = 2 ** (len(self.config.ch_mult) - 1)
        shape = (1, self.config.embed_dim, low.shape[2] * UP // factor, low.shape[3] * UP // factor)
        latent = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
        ts = ddim_timesteps(steps, self.config.timesteps)
        alphas = self.alphas_cumprod[ts]
        previous = torch.cat([self.alphas_cumprod[:1], alphas[:-1]])
        for index in reversed(range(len(ts))):
            if should_stop():
                return None
            a_t, a_prev = float(alphas[index]), float(previous[index])
            sigma = ETA * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
            eps = self._eps(latent, low, ts[index])
            x0 = (latent - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
            latent = math.sqrt(a_prev) * x0 + math.sqrt(max(0.0, 1 - a_prev - sigma ** 2)) * eps + sigma * noise
            on_step()
        return self._decode(latent)

    def upscale(self, image: Image.Image, scale: float, steps: int, seed: int | None = None,
                should_stop: Callable[[], bool] = lambda: False,
                on_step: Callable[[], None] = lambda: None) -> Image.Image | None:
        """The ecosystem's LDSR pass for `scale` (about image size x scale, cut back from the
        padded 4x result); None when stopped."""
        image = image.convert("RGB")
        rate = scale / UP
        if rate != 1:
            size = (max(1, math.ceil(image.width * rate)), max(1, math.ceil(image.height * rate)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        pixels = np.asarray(image)
        pad_w = max(MIN_PADDED, math.ceil(image.width / PAD_TO) * PAD_TO) - image.width
        pad_h = max(MIN_PADDED, math.ceil(image.height / PAD_TO) * PAD_TO) - image.height
        padded = np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        low = torch.from_numpy(padded.astype(np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
        generator = torch.Generator("cpu")
        generator.manual_seed(seed if seed is not None else torch.seed())
        out = self.sample(low.to(self.device), steps, generator, should_stop, on_step)
        if out is None:
            return None
        array = ((out[0].clamp(-1, 1) + 1) / 2 * 255).permute(1, 2, 0).cpu().numpy().astype(np.uint8)
        return Image.fromarray(array, "RGB").crop((0, 0, image.width * UP, image.height * UP))
