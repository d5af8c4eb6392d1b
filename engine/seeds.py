"""Seeds and starting noise.

Noise is drawn on the CPU by default, one generator per image, so a seed means the same picture on
any device and image i of a batch does not depend on the batch size. The `randn_source` setting
"GPU" draws it on the device the model runs on instead (as the ecosystem's "RNG: GPU" does): a
GPU's generator gives other numbers than the CPU's, so the same seed makes another picture there.
Where the model runs on the CPU, "GPU" draws on the CPU and gives exactly the CPU's noise.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .request import MAX_SEED, RANDN_SOURCES, GenerationRequest

LATENT_CHANNELS = 4


@dataclass(frozen=True)
class JobSeeds:
    seeds: tuple[int, ...]
    subseeds: tuple[int, ...]

    def batch(self, index: int, batch_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        start = index * batch_size
        return self.seeds[start:start + batch_size], self.subseeds[start:start + batch_size]


def fixed_seed(seed: int, rng: random.Random | None = None) -> int:
    """-1 (or any negative) means random."""
    if seed is None or seed < 0:
        return (rng or random.SystemRandom()).randint(0, MAX_SEED)
    return int(seed)


def job_seeds(request: GenerationRequest) -> JobSeeds:
    """Image i uses seed + i; with a variation strength the variation seed increments instead."""
    seed = fixed_seed(request.seed)
    subseed = fixed_seed(request.subseed)
    count = request.images_per_job
    vary = request.subseed_strength > 0
    seeds = tuple(_wrap(seed + (0 if vary else i)) for i in range(count))
    subseeds = tuple(_wrap(subseed + (i if vary else 0)) for i in range(count))
    return JobSeeds(seeds, subseeds)


def _wrap(seed: int) -> int:
    return seed % (MAX_SEED + 1)


def noise_device(randn_source: str, model_device: torch.device | str) -> torch.device:
    """Where a job draws its noise: the CPU, or for "GPU" the device the model runs on."""
    if randn_source not in ("",) + RANDN_SOURCES:
        raise ValueError(f"unknown randn_source {randn_source!r}")
    return torch.device(model_device) if randn_source == "GPU" else torch.device("cpu")


def cpu_noise(seed: int, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """Unit noise for one seed, drawn on `device` and handed back on the CPU (where the rest of
    the noise arithmetic happens, in float64 where needed, which not every device has)."""
    generator = torch.Generator(device).manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32, device=device).cpu()


def slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from a (t=0) to b (t=1), treating each tensor as one vector."""
    if t <= 0:
        return a.clone()
    if t >= 1:
        return b.clone()
    a_flat, b_flat = a.flatten().double(), b.flatten().double()
    cos = torch.dot(a_flat / a_flat.norm(), b_flat / b_flat.norm()).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    if omega.abs() < 1e-4:  # nearly parallel: a straight line is the same thing, and stable
        return ((1 - t) * a.double() + t * b.double()).to(a.dtype)
    sin = torch.sin(omega)
    mixed = (torch.sin((1 - t) * omega) / sin) * a.double() + (torch.sin(t * omega) / sin) * b.double()
    return mixed.to(a.dtype)


def latent_shape(width: int, height: int, scale: int = 8) -> tuple[int, int, int]:
    return LATENT_CHANNELS, height // scale, width // scale


def _resized_noise(seed: int, shape: tuple[int, int, int], source_shape: tuple[int, int, int],
                   device: torch.device) -> torch.Tensor:
    """Noise for `shape` whose centre is the centre of the noise drawn at `source_shape`.

    Keeps a picture's composition when its size changes ("Resize seed from").
    """
    noise = cpu_noise(seed, shape, device)
    source = cpu_noise(seed, source_shape, device)
    _, h, w = shape
    _, sh, sw = source_shape
    ch, cw = min(h, sh), min(w, sw)
    ty, tx = (h - ch) // 2, (w - cw) // 2
    sy, sx = (sh - ch) // 2, (sw - cw) // 2
    noise[:, ty:ty + ch, tx:tx + cw] = source[:, sy:sy + ch, sx:sx + cw]
    return noise


def initial_latents(request: GenerationRequest, seeds: tuple[int, ...], subseeds: tuple[int, ...],
                    scale: int = 8, device: torch.device | str = "cpu") -> torch.Tensor:
    """A (batch, 4, H/8, W/8) CPU tensor of unit noise for the given images, drawn on `device`
    (see `noise_device`)."""
    shape = latent_shape(request.width, request.height, scale)
    source_shape = None
    if request.seed_resize:
        source_shape = latent_shape(*request.seed_resize, scale)
    noises = []
    for seed, subseed in zip(seeds, subseeds):
        noise = _draw(seed, shape, source_shape, device)
        if request.subseed_strength > 0:
            noise = slerp(request.subseed_strength, noise, _draw(subseed, shape, source_shape, device))
        noises.append(noise)
    return torch.stack(noises)


def _draw(seed: int, shape, source_shape, device) -> torch.Tensor:
    if source_shape:
        return _resized_noise(seed, shape, source_shape, device)
    return cpu_noise(seed, shape, device)


def step_generators(seeds: tuple[int, ...], device: torch.device | str = "cpu",
                    shape: tuple[int, ...] | None = None, ensd: int = 0) -> list[torch.Generator]:
    """Generators for the noise samplers add at each step, one per image, on the device the job
    draws its noise on, as the web UI these seeds come from makes them: the image's own seed
    generator carrying on after the starting noise (`shape`, one image's latent), or with an eta
    noise seed delta (ENSD) a fresh generator seeded with seed + ENSD."""
    generators = []
    for seed in seeds:
        if ensd:
            generators.append(torch.Generator(device).manual_seed(int(seed) + int(ensd)))
            continue
        generator = torch.Generator(device).manual_seed(seed)
        if shape is not None:  # the draw the starting noise made from this seed
            torch.randn(shape, generator=generator, dtype=torch.float32, device=device)
        generators.append(generator)
    return generators
