"""diffusers schedulers with the sampler parameters of the ecosystem they lack: eta for the
ancestral samplers, s_noise for DPM2 a, and dropping the next-to-last sigma of a schedule (which
the ecosystem does by default for DPM2, DPM2 a and DPM++ 3M SDE, and for every sampler with the
always_discard_next_to_last_sigma setting)."""

from __future__ import annotations

import functools

import diffusers
import numpy as np
import torch
from diffusers.schedulers.scheduling_euler_ancestral_discrete import (
    EulerAncestralDiscreteSchedulerOutput,
)


def ancestral_step(sigma, sigma_next, eta: float):
    """(sigma_up, sigma_down) of an ancestral step from sigma to sigma_next: the step goes down
    to sigma_down and adds fresh noise of sigma_up (eta 1: all of the way's noise is fresh)."""
    sigma_up = torch.minimum(torch.as_tensor(sigma_next),
                             eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5)
    sigma_down = (sigma_next ** 2 - sigma_up ** 2) ** 0.5
    return sigma_up, sigma_down


def _denoised(prediction_type: str, model_output, sample, sigma):
    if prediction_type == "v_prediction":
        return model_output * (-sigma / (sigma ** 2 + 1) ** 0.5) + sample / (sigma ** 2 + 1)
    return sample - sigma * model_output


class EulerAncestralWithEta(diffusers.EulerAncestralDiscreteScheduler):
    """Euler a with eta (1: diffusers' own step)."""

    eta = 1.0

    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True):
        if self.eta == 1.0:
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        sample = sample.to(torch.float32)
        denoised = _denoised(self.config.prediction_type, model_output, sample, sigma)
        sigma_up, sigma_down = ancestral_step(sigma, sigma_next, self.eta)
        prev = sample + (sample - denoised) / sigma * (sigma_down - sigma)
        # The module's own randn_tensor (the fast path may swap it for one that does not wait).
        randn = diffusers.schedulers.scheduling_euler_ancestral_discrete.randn_tensor
        noise = randn(model_output.shape, dtype=model_output.dtype, device=model_output.device, generator=generator)
        prev = (prev + noise * sigma_up).to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return prev, denoised
        return EulerAncestralDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=denoised)


def _interleaved(values: torch.Tensor) -> torch.Tensor:
    """diffusers' DPM2 layout: [v0, v1, v1, v2, v2, ..., vn, vn, vn]."""
    return torch.cat([values[:1], values[1:].repeat_interleave(2), values[-1:]])


class _Dpm2Schedule:
    """DPM2's schedule rebuilt from one sigma per step, as diffusers builds it, with what the
    ecosystem adds: the next-to-last sigma dropped (`discard`), and for DPM2 a eta and s_noise."""

    discard = False
    eta = 1.0
    s_noise = 1.0
    ancestral = False

    def set_timesteps(self, num_inference_steps, device=None, num_train_timesteps=None):
        super().set_timesteps(num_inference_steps + int(self.discard), device=device,
                              num_train_timesteps=num_train_timesteps)
        if not self.discard and (not self.ancestral or (self.eta == 1.0 and self.s_noise == 1.0)):
            return
        # One value per step: sigmas [s0, ..., 0] and their timesteps [t0, ...].
        sigmas = torch.cat([self.sigmas[:1], self.sigmas[1:-1:2]])
        timesteps = torch.cat([self.timesteps[:1], self.timesteps[2::2]])
        if self.discard:
            sigmas, timesteps = torch.cat([sigmas[:-2], sigmas[-1:]]), timesteps[:-1]
        self._rebuild(sigmas, timesteps)

    def _rebuild(self, sigmas: torch.Tensor, timesteps: torch.Tensor) -> None:
        if self.ancestral:
            sigma_next = torch.cat([sigmas[1:], sigmas.new_zeros(1)])
            up, down = ancestral_step(sigmas, sigma_next, self.eta)
            down[-1] = 0.0
            interpol = sigmas.log().lerp(down.log(), 0.5).exp()
            interpol[-2:] = 0.0
            self.sigmas_up, self.sigmas_down = _interleaved(up * self.s_noise), _interleaved(down)
            midpoints = slice(None, -2)
        else:
            interpol = sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp()
            midpoints = slice(1, -1)
        self.sigmas, self.sigmas_interpol = _interleaved(sigmas).to("cpu"), _interleaved(interpol)
        log_sigmas = self.log_sigmas.cpu().numpy()
        steps = np.array([self._sigma_to_t(value, log_sigmas) for value in interpol.cpu().numpy()])
        interpol_t = torch.from_numpy(steps).to(timesteps.device, timesteps.dtype)
        pairs = torch.stack((interpol_t[midpoints, None], timesteps[1:, None]), dim=-1).flatten()
        self.timesteps = torch.cat([timesteps[:1], pairs])


class KDPM2WithDiscard(_Dpm2Schedule, diffusers.KDPM2DiscreteScheduler):
    discard = True  # as the ecosystem runs DPM2


class KDPM2AncestralWithEta(_Dpm2Schedule, diffusers.KDPM2AncestralDiscreteScheduler):
    ancestral = True
    discard = True  # as the ecosystem runs DPM2 a


OWN_SCHEDULERS = {"EulerAncestralWithEta": EulerAncestralWithEta, "KDPM2WithDiscard": KDPM2WithDiscard,
                  "KDPM2AncestralWithEta": KDPM2AncestralWithEta}
# Schedulers whose schedule is one array of sigmas (and one of timesteps): a sigma can be taken out.
PLAIN_SCHEDULES = ("EulerDiscreteScheduler", "EulerAncestralWithEta", "LMSDiscreteScheduler",
                   "DPMSolverMultistepScheduler")


def discard_penultimate(scheduler) -> None:
    """The schedule made for one step more, then its next-to-last sigma taken out: the same
    number of steps, ending with a longer last one (the ecosystem's discard_next_to_last_sigma)."""
    if isinstance(scheduler, _Dpm2Schedule):
        scheduler.discard = True
        return
    original = scheduler.set_timesteps

    @functools.wraps(original)
    def set_timesteps(num_inference_steps=None, device=None, **kwargs):
        original(num_inference_steps + 1, device=device, **kwargs)
        sigmas = scheduler.sigmas
        scheduler.sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        scheduler.timesteps = scheduler.timesteps[:-1]
        scheduler.num_inference_steps = num_inference_steps

    scheduler.set_timesteps = set_timesteps
