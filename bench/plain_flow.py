"""Side (a) for FLUX.1 and SD 3.5: plain diffusers FluxPipeline / StableDiffusion3Pipeline as
their documentation shows them, on the very weights the engine loaded (twins: new modules on the
same storage, see plain.twin), with a FlowMatchEulerDiscreteScheduler of the model's config.

The same job as the engine's: the starting noise the engine draws for the seed (packed into 2x2
patches for FLUX), T5's 256 tokens, FLUX.1-dev's distilled guidance as `guidance_scale` with no
real CFG, SD 3.5's CFG. The schedule is the same: for FLUX diffusers' own (the engine's Simple
schedule with the resolution-dependent shift is the same sigmas); for SD 3.5 the engine's Simple
sigmas before the shift, which diffusers' scheduler then shifts by 3 as the engine does.
"""

from __future__ import annotations

import time

import torch

from engine.sampling.noise import ImageNoise
from engine.sampling.schedules import schedule_sigmas

from .plain import Job, twin

T5_TOKENS = 256  # the engine's T5 chunk (255 tokens and the end token), diffusers' max_sequence_length


def flow_pipeline(base, family: str):
    """A plain diffusers pipeline of the engine's loaded flow pipeline `base`."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline

    parts = {name: twin(module) if isinstance(module, torch.nn.Module) else module
             for name, module in base.components.items()}
    parts["scheduler"] = FlowMatchEulerDiscreteScheduler.from_config(dict(base.scheduler.config))
    pipe = (FluxPipeline if family == "flux" else StableDiffusion3Pipeline)(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unshifted_sigmas(model, steps: int) -> list[float]:
    """The engine's Simple schedule of `steps` flow times before the shift (without the final 0),
    the form diffusers' scheduler takes them in."""
    return schedule_sigmas("Simple", steps, model.sigma_table(shift=1.0))[:-1].tolist()


def run(pipe, job: Job, family: str, sigmas: list[float] | None = None):
    """One image; returns it and the wall time from the call to the PIL image."""
    transformer = pipe.transformer
    device, dtype = transformer.device, transformer.dtype
    height, width = job.height // 8, job.width // 8
    started = time.perf_counter()
    noise = ImageNoise((16, height, width), [job.seed], source="GPU", device=device).next().to(dtype)
    common = {"num_inference_steps": job.steps, "height": job.height, "width": job.width,
              "max_sequence_length": T5_TOKENS}
    if family == "flux":
        # CFG 1: FLUX.1 takes the positive prompt alone; dev's guidance is an input of the model.
        image = pipe(job.prompt, latents=pipe._pack_latents(noise, 1, 16, height, width),
                     guidance_scale=job.distilled_cfg_scale, **common).images[0]
    else:
        image = pipe(job.prompt, negative_prompt=job.negative_prompt, latents=noise, sigmas=sigmas,
                     guidance_scale=job.cfg_scale, **common).images[0]
    return image, time.perf_counter() - started
