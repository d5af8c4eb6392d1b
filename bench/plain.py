"""Side (a): plain diffusers, as its documentation shows: a StableDiffusion(XL)Pipeline called
with the prompt, fp16 on a GPU and fp32 on a CPU, default attention, nothing else switched on.

It runs on the very weights the engine loaded from the checkpoint file, shared in memory but in
modules of its own: whatever the engine's fast path does to its modules (fused projections,
channels_last, a compiled forward) never reaches these, and a full-size model fits in memory once.
The benchmark calls it on the same worker thread the engine runs its jobs on (see bench/__main__.py).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import torch

from engine.sampling import samplers
from engine.sampling.noise import ImageNoise

# Plain diffusers' step noise comes from a generator of its own (the engine's from each image's
# seed generator, as A1111 draws it): the pictures of the ancestral samplers differ by that noise,
# so the benchmark's default sampler is Euler, which adds none.
STEP_NOISE_OFFSET = 0x5EED

# The diffusers scheduler a diffusers user picks for each sampler name (its documentation's table),
# with the schedule the name implies.
_DIFFUSERS_SCHEDULERS = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "linspace"}),
    "Euler": ("EulerDiscreteScheduler", {"timestep_spacing": "linspace"}),
    "LMS": ("LMSDiscreteScheduler", {"timestep_spacing": "linspace"}),
    "Heun": ("HeunDiscreteScheduler", {"timestep_spacing": "linspace"}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DDIM": ("DDIMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
}


def diffusers_scheduler(sampler_name: str, scheduler_config: dict):
    """The plain diffusers scheduler for a sampler name (Euler a for names it has no entry for)."""
    import diffusers

    sampler, _ = samplers.resolve(sampler_name)
    class_name, overrides = _DIFFUSERS_SCHEDULERS.get(sampler.name, _DIFFUSERS_SCHEDULERS["Euler a"])
    config = {key: value for key, value in scheduler_config.items() if not key.startswith("_")}
    return getattr(diffusers, class_name).from_config({**config, **overrides})


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
    sampler: str = "Euler"
    distilled_cfg_scale: float = 3.5   # FLUX.1-dev's guidance input (the other families have none)

    def with_steps(self, steps: int) -> "Job":
        return dataclasses.replace(self, steps=steps)


def twin(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` whose parameters are new Parameter objects on the same storage."""
    memo = {id(p): torch.nn.Parameter(p.data, requires_grad=False) for p in module.parameters()}
    memo.update({id(b): b for b in module.buffers()})
    return copy.deepcopy(module, memo)


def plain_pipeline(base, family: str, scheduler_config: dict, job: Job):
    """A diffusers pipeline of the engine's weights with the job's sampler."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = diffusers_scheduler(job.sampler, scheduler_config)
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
    # The starting noise the engine draws for this seed (A1111's default source), so that both
    # sides start from the same latents.
    latents = ImageNoise(shape[1:], [job.seed], source="GPU", device=device).next().to(dtype)
    step_noise = torch.Generator("cpu").manual_seed(job.seed + STEP_NOISE_OFFSET)
    image = pipe(job.prompt, negative_prompt=job.negative_prompt, num_inference_steps=job.steps,
                 guidance_scale=job.cfg_scale, width=job.width, height=job.height, latents=latents,
                 generator=step_noise).images[0]
    return image, time.perf_counter() - started
