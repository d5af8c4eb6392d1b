"""Side (a): plain diffusers, as its documentation shows: a StableDiffusion(XL)Pipeline called
with the prompt, fp16 on a GPU and fp32 on a CPU, default attention, nothing else switched on.

It runs on the very weights the engine loaded from the checkpoint file, shared in memory but in
modules of its own: whatever the engine's fast path does to its modules (fused projections,
channels_last, a compiled forward) never reaches these, and a full-size model fits in memory once.
The benchmark calls it on the same worker thread the engine runs its jobs on (see bench/__main__.py).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from engine import samplers

# The engine draws a sampler's step noise from seed + this (engine/seeds.py step_generators);
# plain diffusers is given a generator seeded the same way, so that both add the same noise.
STEP_NOISE_OFFSET = 0x5EED


@dataclass(frozen=True)
class Job:
    """The one job both sides run."""

    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    steps: int
    cfg_scale: float
    sampler: str = "Euler a"

    def with_steps(self, steps: int) -> "Job":
        return Job(self.prompt, self.negative_prompt, self.seed, self.width, self.height, steps,
                   self.cfg_scale, self.sampler)


def twin(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` whose parameters are new Parameter objects on the same storage."""
    memo = {id(p): torch.nn.Parameter(p.data, requires_grad=False) for p in module.parameters()}
    memo.update({id(b): b for b in module.buffers()})
    return copy.deepcopy(module, memo)


def plain_pipeline(base, family: str, scheduler_config: dict, job: Job):
    """A diffusers pipeline of the engine's weights with the job's sampler."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    sampler, schedule = samplers.resolve(job.sampler)
    # The scheduler the engine builds for this sampler name (same class and settings): a
    # diffusers scheduler, nothing of the engine runs inside it.
    scheduler = samplers.build_scheduler(sampler, schedule, scheduler_config, job.seed)
    parts = dict(unet=twin(base.unet), vae=twin(base.vae), text_encoder=twin(base.text_encoder),
                 tokenizer=base.tokenizer, scheduler=scheduler)
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(text_encoder_2=twin(base.text_encoder_2),
                                         tokenizer_2=base.tokenizer_2, add_watermarker=False, **parts)
    else:
        pipe = StableDiffusionPipeline(safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, job: Job):
    """One image; returns it and the wall time from the call to the PIL image."""
    device, dtype = pipe.unet.device, pipe.unet.dtype
    shape = (1, pipe.unet.config.in_channels, job.height // 8, job.width // 8)
    started = time.perf_counter()
    # Noise drawn from the seed on the CPU, as diffusers does with a CPU generator.
    latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(job.seed)).to(device, dtype)
    step_noise = torch.Generator("cpu").manual_seed(job.seed + STEP_NOISE_OFFSET)
    image = pipe(job.prompt, negative_prompt=job.negative_prompt, num_inference_steps=job.steps,
                 guidance_scale=job.cfg_scale, width=job.width, height=job.height, latents=latents,
                 generator=step_noise).images[0]
    return image, time.perf_counter() - started
