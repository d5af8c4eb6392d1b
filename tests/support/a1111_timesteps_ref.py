"""References for A1111's timestep samplers (DDIM, DDIM CFG++, PLMS), which k-diffusion does not
have: diffusers' DDIM step over A1111's timesteps, and short restatements of A1111's documented
loops otherwise (UniPC's solver is checked in test_sampling_timesteps.py).

A1111's loops visit the timesteps 1, 1 + k, ..., 1 + (n-1) k (k = 1000 // n) from the top and
stop one step short: the last update lands on timestep 1's noise level.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

SD1_BETAS = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


class EpsGuidance:
    """A1111's guidance for the timestep samplers, restated: [cond, uncond] rows, epsilon from the
    model (v converted at the integer timestep), `uncond + (cond - uncond) * scale`."""

    def __init__(self, model, cond, uncond, scale, prediction="epsilon"):
        self.model, self.cond, self.uncond, self.scale = model, cond, uncond, scale
        self.prediction = prediction
        self.last_uncond = None

    def __call__(self, x, t, scale_multiplier=1.0):
        x_in, t_in = torch.cat([x, x]), torch.cat([t, t])
        out = self.model.apply_model(x_in, t_in, {"c_crossattn": [torch.cat([self.cond, self.uncond])]})
        if self.prediction == "v_prediction":
            alphas = self.model.alphas_cumprod[t_in.to(torch.int)][:, None, None, None]
            out = alphas.sqrt() * out + (1 - alphas).sqrt() * x_in
        batch = x.shape[0]
        cond_out, uncond_out = out[:batch], out[batch:]
        self.last_uncond = uncond_out
        guided = torch.clone(uncond_out)
        for i in range(batch):
            guided[i] += (cond_out[i] - uncond_out[i]) * (1.0 * (self.scale * scale_multiplier))
        return guided


def a1111_timesteps(steps: int) -> list[int]:
    k = 1000 // steps
    return [min(999, 1 + j * k) for j in range(len(range(0, 1000, k)))]


def _ddim_scheduler(alphas_cumprod, steps):
    scheduler = DDIMScheduler(**SD1_BETAS, set_alpha_to_one=False, steps_offset=1, clip_sample=False,
                              timestep_spacing="leading")
    scheduler.alphas_cumprod = alphas_cumprod.clone()
    scheduler.set_timesteps(steps)
    return scheduler


def ddim(guidance: EpsGuidance, x, timesteps: list[int], steps: int, noise, eta=0.0, cfgpp=False):
    """DDIM over A1111's timesteps through diffusers' DDIM step (for the indices A1111 runs).
    CFG++ (A1111's 'DDIM CFG++'): guidance at scale / 12.5 and the direction from the
    unconditional epsilon, restated from its formula."""
    scheduler = _ddim_scheduler(guidance.model.alphas_cumprod, steps)
    ones = x.new_ones(x.shape[0])
    for index in range(len(timesteps) - 1, 0, -1):
        t = timesteps[index]
        eps = guidance(x, float(t) * ones, 1 / 12.5 if cfgpp else 1.0)
        fresh = noise.next()
        if not cfgpp:
            x = scheduler.step(eps, t, x, eta=eta, variance_noise=fresh).prev_sample
            continue
        a_t = guidance.model.alphas_cumprod[t]
        a_prev = guidance.model.alphas_cumprod[timesteps[index - 1]]
        predicted = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_prev.sqrt() * predicted + (1 - a_prev).sqrt() * guidance.last_uncond
    return x


def plms(guidance: EpsGuidance, x, timesteps: list[int]):
    """A1111's PLMS restated: a pseudo improved-Euler first step, then Adams-Bashforth 2/3/4 on
    epsilon, each update the deterministic DDIM step."""
    alphas = guidance.model.alphas_cumprod
    ones = x.new_ones(x.shape[0])

    def update(sample, eps, index):  # index >= 1: A1111's loop never updates from timestep 1
        a_t, a_prev = alphas[timesteps[index]], alphas[timesteps[index - 1]]
        predicted = (sample - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        return a_prev.sqrt() * predicted + (1 - a_prev).sqrt() * eps

    history = []
    for index in range(len(timesteps) - 1, 0, -1):
        eps = guidance(x, float(timesteps[index]) * ones)
        if not history:
            guess = update(x, eps, index)
            eps_next = guidance(guess, float(timesteps[index - 1]) * ones)
            combined = (eps + eps_next) / 2
        elif len(history) == 1:
            combined = (3 * eps - history[-1]) / 2
        elif len(history) == 2:
            combined = (23 * eps - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            combined = (55 * eps - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        x = update(x, combined, index)
        history = (history + [eps])[-3:]
    return x
