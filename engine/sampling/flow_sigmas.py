"""Noise levels of the rectified-flow families (FLUX.1, SD 3.x), in the form the k-diffusion
samplers take.

A flow model's noisy latents are x_t = (1 - t) x_0 + t n for a time t in [0, 1], and the
transformer predicts the velocity v = n - x_0. Taking sigma = t, the denoised latents are
x - sigma v, and Euler's step over sigma is exactly the flow's Euler step: every sampler that only
asks a denoiser for x_0 runs unchanged, as Forge and ComfyUI run them. What differs from the SD
families: a picture starts from `noised()` (a mix, not a sum), the table is 1000 shifted times,
and the ancestral samplers must re-noise by mixing too (engine/sampling/flow_steps.py).

The shift bends the times toward the noisy end: sigma = s t / (1 + (s - 1) t). SD 3.x uses a
fixed s = 3; FLUX.1 one that grows with the image's size, s = exp(mu) with mu linear in the
number of 2x2 latent patches, from 0.5 at 256 patches to 1.15 at 4096 (a 1024x1024 image), as
Black Forest Labs' reference and diffusers compute it. Timesteps are 1000 t, unshifted back, as
ComfyUI's and diffusers' flow schedulers count them (so "Normal" ends at 1000 sigma_min).
"""

from __future__ import annotations


import torch

TRAINING_STEPS = 1000


def shifted(t: torch.Tensor | float, shift: float):
    """The time `t` bent by `shift` (1: unchanged)."""
    return shift * t / (1 + (shift - 1) * t)


class FlowSigmas:
    """The 1000 shifted times of a flow model as a noise table: what ModelSigmas is to the SD
    families (sigma_min/max, sigmas, sigma_to_t, t_to_sigma, uniform, unet_timestep), so the
    schedule types of engine/sampling/schedules.py work on it unchanged."""

    flow = True

    def __init__(self, shift: float, device: torch.device | str = "cpu"):
        if not shift > 0:
            raise ValueError(f"a flow shift must be positive, not {shift}")
        self.shift = float(shift)
        times = torch.arange(1, TRAINING_STEPS + 1, dtype=torch.float64) / TRAINING_STEPS
        self.sigmas = shifted(times, self.shift).to(device=device, dtype=torch.float32)
        self.log_sigmas = self.sigmas.log()
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])   # 1: the start is pure noise

    @property
    def device(self) -> torch.device:
        return self.sigmas.device

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * TRAINING_STEPS

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return shifted(t.to(self.device).float() / TRAINING_STEPS, self.shift)

    def unet_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The flow time the transformer is conditioned on (each family's adapter scales it)."""
        return sigma

    def uniform(self, n: int) -> torch.Tensor:
        """n times evenly spaced from the first to the last table entry, shifted, then 0."""
        t = torch.linspace(TRAINING_STEPS, 1, n, device=self.device)
        return torch.cat([self.t_to_sigma(t), self.sigmas.new_zeros([1])])

    @staticmethod
    def noised(latents: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
        """The latents at noise level sigma: the flow's mix of the picture and the noise."""
        return latents * (1 - sigma) + noise * sigma
