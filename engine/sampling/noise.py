"""The noise of a generation job, drawn as A1111 1.10 draws it (its `modules/rng.py`).

Every image of a batch owns a generator seeded with its seed. Its first draw is the image's
starting noise; each later draw (the step noise of ancestral samplers, DDIM's eta noise)
continues the same stream, so an image never depends on the batch it was made in. With an eta
noise seed delta (ENSD) the step noise comes instead from generators seeded with seed + ENSD,
started after the starting noise is made.

Variation seeds and "resize seed from" draw from generators made fresh for the occasion (A1111
reseeds its global generator for them), not from the images' own generators:

- variation: the subseed's noise is blended into the seed's by A1111's `slerp`;
- resize seed from: the seed's (and subseed's) noise is drawn at the old latent size, blended
  there, and pasted over the middle of the image generator's full-size first draw, with A1111's
  integer centring (floor of half the size difference, which for an odd shrink leaves the last
  row or column of the full-size draw showing).

Sources (A1111's `randn_source` setting):
- "GPU", A1111's default: torch's CUDA generator when the model is on CUDA. On any other device
  we draw its CPU reproduction (engine/sampling/philox.py), so that a seed gives the picture an
  NVIDIA card gives; A1111 itself falls back to torch's CPU generator on mps.
- "CPU": torch's CPU generator.
- "NV": the CPU reproduction of the CUDA generator, always.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from engine.sampling.philox import PhiloxGenerator

RANDN_SOURCES = ("GPU", "CPU", "NV")
DEFAULT_SOURCE = "GPU"
PIXELS_PER_LATENT = 8  # "resize seed from" sizes are given in pixels
# A1111 blends linearly when the two noises are this close to parallel (mean cosine).
NEARLY_PARALLEL = 0.9995

NoiseGenerator = torch.Generator | PhiloxGenerator


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
    """A1111's spherical blend of two noises of one image, (C, H, W), `val` being the share of
    `high`. It normalises along dim 1 (the rows), so the angle is taken per (channel, column)
    over the rows. When the mean cosine exceeds 0.9995 it returns `low * val + high * (1 - val)`:
    the weights there are the other way round from the spherical branch, and we keep that,
    since A1111 does. Both branches are computed and one is picked on the device, so that
    no host sync happens; the picked values are the same as computing it alone."""
    low_unit = low / torch.norm(low, dim=1, keepdim=True)
    high_unit = high / torch.norm(high, dim=1, keepdim=True)
    cosine = (low_unit * high_unit).sum(1)
    linear = low * val + high * (1 - val)
    angle = torch.acos(cosine)
    sine = torch.sin(angle)
    low_weight = (torch.sin((1.0 - val) * angle) / sine).unsqueeze(1)
    high_weight = (torch.sin(val * angle) / sine).unsqueeze(1)
    spherical = low_weight * low + high_weight * high
    return torch.where(cosine.mean() > NEARLY_PARALLEL, linear, spherical)


def centred_span(new_size: int, old_size: int) -> tuple[int, int, int]:
    """Along one axis, where A1111 pastes noise of `old_size` into noise of `new_size`:
    (start in the new noise, start in the old noise, length). The shift is the floor of half
    the difference; a larger old noise is cropped by that shift on both sides, so with an odd
    difference the crop is one short of the new size."""
    shift = (new_size - old_size) // 2
    if shift >= 0:
        return shift, 0, old_size
    return 0, -shift, old_size + 2 * shift


def paste_centred(old: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """`old` (C, h, w) over the middle of `full` (C, H, W), in place; returns `full`."""
    to_y, from_y, height = centred_span(full.shape[1], old.shape[1])
    to_x, from_x, width = centred_span(full.shape[2], old.shape[2])
    full[:, to_y:to_y + height, to_x:to_x + width] = old[:, from_y:from_y + height, from_x:from_x + width]
    return full


class ImageNoise:
    """The noise of one batch (A1111's ImageRNG). The first `next()` (or `first()`) gives the
    starting noise, every later `next()` the next step noise; all (B, C, H, W) float32 on
    `device`."""

    def __init__(self, shape: tuple[int, int, int], seeds: Sequence[int], subseeds: Sequence[int] | None = None,
                 subseed_strength: float = 0.0, seed_resize_from: tuple[int, int] | None = None,
                 source: str = DEFAULT_SOURCE, device="cpu", eta_noise_seed_delta: int = 0):
        self.shape = tuple(int(size) for size in shape)
        self.seeds = [int(seed) for seed in seeds]
        self.subseeds = [int(seed) for seed in subseeds] if subseeds is not None else None
        self.subseed_strength = float(subseed_strength)
        self.seed_resize_from = seed_resize_from  # (height, width) in pixels
        self.device = torch.device(device)
        self.method = draw_method(source, self.device)
        self.eta_noise_seed_delta = int(eta_noise_seed_delta or 0)
        self.generators = [self._new_generator(seed) for seed in self.seeds]
        self._started = False

    # Public interface.

    def next(self) -> torch.Tensor:
        """The starting noise on the first call, then the next step noise of every image."""
        if not self._started:
            return self.first()
        draws = [self._draw(generator, self.shape) for generator in self.generators]
        return self._to_device(torch.stack(draws))

    def first(self) -> torch.Tensor:
        """The starting noise of every image. Later `next()` calls give step noise."""
        self._started = True
        images = [self._starting_noise(index, seed, generator)
                  for index, (seed, generator) in enumerate(zip(self.seeds, self.generators))]
        if self.eta_noise_seed_delta:
            self.generators = [self._new_generator(seed + self.eta_noise_seed_delta) for seed in self.seeds]
        return torch.stack(images)

    def noise_sampler(self) -> Callable[[object, object], torch.Tensor]:
        """For the sampler functions: each call, whatever the sigmas, is the next step noise."""
        return lambda sigma, sigma_next: self.next()

    # The starting noise of one image.

    def _starting_noise(self, index: int, seed: int, generator: NoiseGenerator) -> torch.Tensor:
        """A1111's order of draws: the subseed's fresh draw first, then the seed's noise (from
        the image's generator unless the size differs), then the full-size draw to paste into.
        Each draw goes to the model's device before it is blended or pasted, as in A1111, so the
        blend's arithmetic runs where A1111 runs it."""
        source_shape = self._source_shape()
        resized = source_shape != self.shape
        subnoise = None
        if self._blends_variation():
            subnoise = self._to_device(self._fresh_draw(self._subseed(index), source_shape))
        if resized:
            noise = self._to_device(self._fresh_draw(seed, source_shape))
        else:
            noise = self._to_device(self._draw(generator, self.shape))
        if subnoise is not None:
            noise = slerp(self.subseed_strength, noise, subnoise)
        if resized:
            noise = paste_centred(noise, self._to_device(self._draw(generator, self.shape)))
        return noise

    def _source_shape(self) -> tuple[int, int, int]:
        """The latent shape the seed's noise is drawn at: the old size's with "resize seed from"."""
        if self.seed_resize_from is None:
            return self.shape
        height, width = (int(size) for size in self.seed_resize_from)
        if height <= 0 or width <= 0:
            return self.shape
        return self.shape[0], height // PIXELS_PER_LATENT, width // PIXELS_PER_LATENT

    def _blends_variation(self) -> bool:
        return self.subseeds is not None and self.subseed_strength != 0

    def _subseed(self, index: int) -> int:
        """A1111 uses subseed 0 for images past the end of the subseed list."""
        return self.subseeds[index] if index < len(self.subseeds) else 0

    # Generators and draws.

    def _new_generator(self, seed: int) -> NoiseGenerator:
        if self.method == "nv":
            return PhiloxGenerator(seed)
        device = self.device if self.method == "cuda" else torch.device("cpu")
        return torch.Generator(device).manual_seed(int(seed))

    def _draw(self, generator: NoiseGenerator, shape: tuple[int, ...]) -> torch.Tensor:
        """The generator's next draw: on the CPU for the cpu and nv methods, on the model's
        device for cuda."""
        if isinstance(generator, PhiloxGenerator):
            return torch.from_numpy(generator.randn(shape))
        return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)

    def _fresh_draw(self, seed: int, shape: tuple[int, ...]) -> torch.Tensor:
        """The first draw of a generator made for `seed` alone."""
        return self._draw(self._new_generator(seed), shape)

    def _to_device(self, noise: torch.Tensor) -> torch.Tensor:
        if noise.device == self.device:
            return noise
        if self.device.type == "cuda" and noise.device.type == "cpu":
            # From pinned memory the copy is queued on the stream: the host does not wait.
            return noise.pin_memory().to(self.device, non_blocking=True)
        return noise.to(self.device)
