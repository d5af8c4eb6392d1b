"""The noise of a generation job, as A1111 draws it (its ImageRNG).

Each image has its own generator seeded with its seed: the first draw is its starting noise, and
every further draw (the step noise of ancestral samplers, DDIM's eta noise) continues from it,
so an image does not depend on the batch it was made in. With an eta noise seed delta (ENSD) the
step noise comes from generators seeded with seed + ENSD instead. A variation seed blends its own
noise in by A1111's slerp; "resize seed from" draws the noise at the old size and pastes it into
the middle of the new size's noise.

Sources (A1111's `randn_source` setting): "GPU", A1111's default, is torch's CUDA generator, and
on any other device its CPU reproduction (engine/sampling/philox.py), so that a seed makes the
same picture on every machine; "CPU" is torch's CPU generator; "NV" is the reproduction always.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .philox import PhiloxGenerator

RANDN_SOURCES = ("GPU", "CPU", "NV")
LATENT_FACTOR = 8  # "resize seed from" sizes are in pixels


def draw_method(source: str, device) -> str:
    """How `source` is drawn for a model on `device`: "cuda", "cpu" or "nv"."""
    if source == "GPU":
        return "cuda" if torch.device(device).type == "cuda" else "nv"
    if source == "CPU":
        return "cpu"
    if source == "NV":
        return "nv"
    raise ValueError(f"unknown random number source {source!r}; choose one of {', '.join(RANDN_SOURCES)}")


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical blend of two noises of one image (C, H, W): normalised along dim 1, with
    its linear fallback (as written there) when the two are nearly parallel."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / sin_omega).unsqueeze(1) * low + \
        (torch.sin(val * omega) / sin_omega).unsqueeze(1) * high


class ImageNoise:
    """Per-image noise of one batch; `next()` gives the starting noise first, then step noise."""

    def __init__(self, shape: tuple[int, int, int], seeds: Sequence[int], subseeds: Sequence[int] | None = None,
                 subseed_strength: float = 0.0, seed_resize_from: tuple[int, int] | None = None,
                 source: str = "GPU", device="cpu", eta_noise_seed_delta: int = 0):
        self.shape = tuple(shape)
        self.seeds = [int(seed) for seed in seeds]
        self.subseeds = list(subseeds) if subseeds is not None else None
        self.subseed_strength = subseed_strength
        self.seed_resize_from = seed_resize_from
        self.device = torch.device(device)
        self.method = draw_method(source, self.device)
        self.eta_noise_seed_delta = int(eta_noise_seed_delta or 0)
        self.generators = [self._generator(seed) for seed in self.seeds]
        self._first = True

    def _generator(self, seed: int):
        if self.method == "nv":
            return PhiloxGenerator(seed)
        return torch.Generator("cuda" if self.method == "cuda" else "cpu").manual_seed(int(seed))

    def _draw(self, shape, generator) -> torch.Tensor:
        """One draw of `shape` from `generator`, on the CPU for cpu/nv (moved later), else on CUDA."""
        if isinstance(generator, PhiloxGenerator):
            return torch.from_numpy(generator.randn(shape))
        return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)

    def _fresh(self, seed: int, shape) -> torch.Tensor:
        """The first draw of a new generator for `seed` (A1111 reseeds its global generator)."""
        return self._draw(shape, self._generator(seed))

    def _to_device(self, noise: torch.Tensor) -> torch.Tensor:
        if noise.device == self.device:
            return noise
        if self.device.type == "cuda" and noise.device.type == "cpu":
            return noise.pin_memory().to(self.device, non_blocking=True)  # no wait for the GPU
        return noise.to(self.device)

    def next(self) -> torch.Tensor:
        if self._first:
            self._first = False
            return self._to_device(self.first())
        return self._to_device(torch.stack([self._draw(self.shape, generator) for generator in self.generators]))

    def noise_sampler(self) -> Callable[[object, object], torch.Tensor]:
        """For the sampler functions: every call is the next step noise."""
        return lambda sigma, sigma_next: self.next()

    def first(self) -> torch.Tensor:
        resized = self.seed_resize_from is not None and self.seed_resize_from[0] > 0 and self.seed_resize_from[1] > 0
        noise_shape = (self.shape[0], self.seed_resize_from[0] // LATENT_FACTOR,
                       self.seed_resize_from[1] // LATENT_FACTOR) if resized else self.shape
        images = []
        for index, (seed, generator) in enumerate(zip(self.seeds, self.generators)):
            subnoise = None
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = 0 if index >= len(self.subseeds) else self.subseeds[index]
                subnoise = self._fresh(subseed, noise_shape)
            if noise_shape != self.shape:
                noise = self._fresh(seed, noise_shape)
            else:
                noise = self._draw(self.shape, generator)
            if subnoise is not None:
                noise = slerp(self.subseed_strength, noise, subnoise)
            if noise_shape != self.shape:
                noise = _paste_centred(noise, self._draw(self.shape, generator))
            images.append(noise)
        if self.eta_noise_seed_delta:
            self.generators = [self._generator(seed + self.eta_noise_seed_delta) for seed in self.seeds]
        return torch.stack(images)


def _paste_centred(small: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """`small` (the noise at the old size) over the middle of `full`, with A1111's integer
    centring: offsets floor((new - old) / 2); a larger old size is cropped by the same amount."""
    _, height, width = full.shape
    _, old_height, old_width = small.shape
    dx, dy = (width - old_width) // 2, (height - old_height) // 2
    paste_width = old_width if dx >= 0 else old_width + 2 * dx
    paste_height = old_height if dy >= 0 else old_height + 2 * dy
    to_x, to_y = max(dx, 0), max(dy, 0)
    from_x, from_y = max(-dx, 0), max(-dy, 0)
    full[:, to_y:to_y + paste_height, to_x:to_x + paste_width] = \
        small[:, from_y:from_y + paste_height, from_x:from_x + paste_width]
    return full
