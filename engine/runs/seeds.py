"""Seeds of a job: which seed and variation seed each image uses. The noise drawn from them is
engine/sampling/noise.py (A1111's per-image generators from the GPU, CPU or NV source)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from engine.request import MAX_SEED, GenerationRequest

LATENT_CHANNELS = 4
# A1111's default source: torch's CUDA generator (reproduced by the NV generator elsewhere).
DEFAULT_RANDN_SOURCE = "GPU"


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


def latent_shape(width: int, height: int, scale: int = 8, channels: int = LATENT_CHANNELS) -> tuple[int, int, int]:
    """One image's latents: 4 channels for the SD families, 16 for FLUX.1 and SD 3.x."""
    return channels, height // scale, width // scale
