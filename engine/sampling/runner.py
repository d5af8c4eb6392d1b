"""One batch's sampling as A1111 runs it: the schedule for the steps, the starting latents (pure
noise for txt2img, the init latents noised to the schedule's start for img2img and hires fix),
the sampler function with the parameters A1111 gives it, and the step noise (the images' own
generators, or Brownian trees seeded with the image seeds for the SDE samplers)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.errors import RequestError
from engine.sampling import k_samplers, timestep_samplers
from engine.sampling.flow_steps import sample_euler_ancestral_flow
from engine.sampling.brownian import BrownianNoise
from engine.sampling.denoiser import CFGDenoiser, Interrupted
from engine.sampling.noise import ImageNoise
from engine.sampling.schedules import sampler_sigmas


@dataclass(frozen=True)
class Img2ImgStart:
    """What an img2img pass starts from: init latents and how much of the schedule runs."""

    latents: torch.Tensor
    denoising_strength: float
    # A1111's img2img_fix_steps (always on for hires fix): run exactly `steps` steps of a longer
    # schedule, rather than the last `strength` part of a `steps` schedule.
    fixed_steps: bool = False
    extra_noise: float = 0.0


@dataclass(frozen=True)
class SamplingPlan:
    """How one job samples (the same for every batch)."""

    sampler: Any                 # engine.sampling.samplers.Sampler
    schedule: str                # the schedule type asked for ("Automatic" or a label)
    steps: int
    parameters: Mapping[str, Any] = field(default_factory=dict)  # eta, s_churn, ... as A1111 passes
    always_discard: bool = False
    schedule_options: Mapping[str, Any] = field(default_factory=dict)  # sigma_min, sigma_max, rho, beta
    uni_pc: Mapping[str, Any] = field(default_factory=dict)
    sgm_noise_multiplier: bool = False
    is_sdxl: bool = False

    @property
    def discards(self) -> bool:
        return self.sampler.discards or self.always_discard


def img2img_steps(steps: int, denoising_strength: float, fixed_steps: bool) -> tuple[int, int]:
    """(schedule steps, t_enc) as A1111's setup_img2img_steps: the schedule is made for the first
    number, and t_enc + 1 of its steps run."""
    strength = min(denoising_strength, 0.999)
    if fixed_steps:
        return (int(steps / strength) if denoising_strength > 0 else 0), steps - 1
    return steps, int(strength * steps)


def steps_that_run(steps: int, denoising_strength: float | None, fixed_steps: bool = False) -> int:
    """How many sampler steps a pass runs (for progress): all for txt2img, t_enc + 1 for img2img."""
    if denoising_strength is None:
        return steps
    return img2img_steps(steps, denoising_strength, fixed_steps)[1] + 1


class BatchSampling:
    """Runs one batch; `callback(step_index, denoised)` after every sampler step."""

    def __init__(self, plan: SamplingPlan, denoiser: CFGDenoiser, noise: ImageNoise, seeds,
                 callback: Callable[[int, torch.Tensor], None] | None = None):
        self.plan = plan
        self.denoiser = denoiser
        self.noise = noise
        self.seeds = list(seeds)
        self.callback = callback
        self.last_denoised: torch.Tensor | None = None

    def run(self, first_noise: torch.Tensor, start: Img2ImgStart | None = None) -> torch.Tensor:
        """`first_noise`: the images' first noise draw (unit variance; img2img may have scaled it
        by the initial noise multiplier)."""
        if self.plan.sampler.kind == "timesteps":
            return self._timesteps(first_noise, start)
        return self._sigmas(first_noise, start)

    # k-diffusion samplers and LCM
    def sigmas(self, steps: int) -> torch.Tensor:
        plan, table = self.plan, self.denoiser.table
        label = plan.schedule if plan.schedule != "Automatic" else plan.sampler.default_schedule
        options = plan.schedule_options
        return sampler_sigmas(
            label or "Uniform", steps, table, discard_next_to_last=plan.discards, is_sdxl=plan.is_sdxl,
            sigma_min=options.get("sigma_min") or None, sigma_max=options.get("sigma_max") or None,
            rho=options.get("rho") or None, beta_alpha=options.get("beta_dist_alpha", 0.6),
            beta_beta=options.get("beta_dist_beta", 0.6))

    def _sigmas(self, first_noise: torch.Tensor, start: Img2ImgStart | None) -> torch.Tensor:
        plan, table = self.plan, self.denoiser.table
        function = k_samplers.SAMPLER_FUNCTIONS[plan.sampler.function]
        if getattr(table, "flow", False) and plan.sampler.function == "sample_euler_ancestral":
            function = sample_euler_ancestral_flow   # re-noises by mixing, as a flow's latents are
        kwargs: dict[str, Any] = dict(plan.parameters)
        if start is None:
            sigmas = self.sigmas(plan.steps)
            x = first_noise * (torch.sqrt(1.0 + sigmas[0] ** 2.0) if plan.sgm_noise_multiplier else sigmas[0])
            schedule, x_for_brownian = sigmas, x
            fast_range = (table.sigma_min, table.sigma_max, plan.steps)
        else:
            steps, t_enc = img2img_steps(plan.steps, start.denoising_strength, start.fixed_steps)
            sigmas = self.sigmas(steps)
            schedule = sigmas[steps - t_enc - 1:]
            x = table.noised(start.latents, first_noise, schedule[0])
            if start.extra_noise > 0:
                x = x + first_noise * start.extra_noise
            x_for_brownian = start.latents
            # DPM fast/adaptive cannot end at sigma 0: they stop at the last positive one.
            fast_range = (schedule[-2], schedule[0], len(schedule) - 1)
            if plan.sampler.function in ("sample_dpm_fast", "sample_dpm_adaptive") and len(schedule) < 3:
                raise RequestError(f"{plan.sampler.name} needs at least two img2img steps (it solves between two "
                                   "noise levels): raise the denoising strength or the sampling steps",
                                   "denoising_strength")
        if plan.sampler.function in ("sample_dpm_fast", "sample_dpm_adaptive"):
            kwargs.update(sigma_min=fast_range[0], sigma_max=fast_range[1])
            if plan.sampler.function == "sample_dpm_fast":
                kwargs["n"] = fast_range[2]
        else:
            kwargs["sigmas"] = schedule
        if plan.sampler.solver_type:
            kwargs["solver_type"] = plan.sampler.solver_type
        if plan.sampler.brownian:
            positive = sigmas[sigmas > 0]
            kwargs["noise_sampler"] = BrownianNoise(x_for_brownian, positive.min(), sigmas.max(), self.seeds)
        else:
            kwargs["noise_sampler"] = self.noise.noise_sampler()
        self.last_denoised = x
        return self._launch(lambda: function(self.denoiser, x, callback=self._step_done, **kwargs))

    # DDIM, DDIM CFG++, PLMS, UniPC
    def _timesteps(self, first_noise: torch.Tensor, start: Img2ImgStart | None) -> torch.Tensor:
        plan = self.plan
        function = timestep_samplers.TIMESTEP_SAMPLERS[plan.sampler.name]
        kwargs: dict[str, Any] = {}
        if plan.sampler.function == "unipc":
            kwargs.update(plan.uni_pc)
        else:
            kwargs["noise_sampler"] = self.noise.noise_sampler()
            kwargs.update(plan.parameters)
        if start is None:
            timesteps = timestep_samplers.timesteps_for(plan.steps, plan.discards)
            x = first_noise
        else:
            steps, t_enc = img2img_steps(plan.steps, start.denoising_strength, start.fixed_steps)
            # Fixed steps at a low strength ask for a schedule longer than the model's 1000 timesteps
            # (A1111's timestep samplers fail there); the schedule stops at one step per timestep.
            steps = min(steps, timestep_samplers.TRAINING_TIMESTEPS)
            timesteps = timestep_samplers.timesteps_for(steps, plan.discards)
            x, timesteps = timestep_samplers.img2img_start(start.latents, first_noise, timesteps, t_enc,
                                                           self.denoiser.alphas_cumprod.to(first_noise.device),
                                                           extra_noise=start.extra_noise)
            if plan.sampler.function == "unipc":
                kwargs["is_img2img"] = True
        self.last_denoised = x
        return self._launch(lambda: function(self.denoiser, x, timesteps, callback=self._step_done, **kwargs))

    def _step_done(self, info: dict) -> None:
        denoised = info["denoised"]
        if denoised is None:  # UniPC's last step has no prediction of its own
            denoised = info["x"]
        self.last_denoised = denoised
        if self.callback is not None:
            self.callback(int(info["i"]), denoised)

    def _launch(self, sample: Callable[[], torch.Tensor]) -> torch.Tensor:
        try:
            return sample()
        except Interrupted:
            return self.last_denoised
