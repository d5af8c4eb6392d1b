"""Ancestral sampling for the rectified-flow families (FLUX.1, SD 3.x).

An SD model's latents are x_0 + sigma n, so an ancestral step moves down to a smaller sigma and
adds fresh noise. A flow model's latents are (1 - sigma) x_0 + sigma n: after the step down to
sigma_down the picture part is (1 - sigma_down) x_0, so the latents are first rescaled by
(1 - sigma_next) / (1 - sigma_down) and fresh noise then makes up the rest of sigma_next's
variance. sigma_down = sigma_next (1 + eta (sigma_next / sigma - 1)): eta 1 takes the step down
to sigma_next^2 / sigma, eta 0 is plain Euler (the convention ComfyUI's rectified-flow ancestral
samplers use, which Forge users see).
"""

from __future__ import annotations

import torch

from engine.sampling.k_common import Callback, Model, NoiseSampler, per_image


def flow_ancestral_split(sigma, sigma_next, eta: float = 1.0):
    """(sigma_down, rescale, renoise) of an ancestral flow step from sigma to sigma_next."""
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    rescale = (1 - sigma_next) / (1 - sigma_down)
    renoise = (sigma_next ** 2 - (sigma_down * rescale) ** 2).clamp(min=0) ** 0.5
    return sigma_down, rescale, renoise


@torch.no_grad()
def sample_euler_ancestral_flow(model: Model, x, sigmas, *, noise_sampler: NoiseSampler,
                                callback: Callback | None = None, eta=1.0, s_noise=1.0):
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, per_image(x, sigma))
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        if sigma_next == 0 or not eta:
            x = denoised + (x - denoised) * (sigma_next / sigma)   # Euler to sigma_next
            continue
        sigma_down, rescale, renoise = flow_ancestral_split(sigma, sigma_next, eta)
        x = denoised + (x - denoised) * (sigma_down / sigma)
        x = x * rescale + noise_sampler(sigma, sigma_next) * s_noise * renoise
    return x
