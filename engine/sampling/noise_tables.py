"""The noise tables of models trained on another schedule than Stable Diffusion's own.

- Zero terminal SNR (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
  Flawed"): the model's sqrt(alphas_cumprod) shifted and scaled so that the last timestep is pure
  noise. A1111's "Noise schedule for sampling: Zero Terminal SNR" does this to the float32 table
  and then puts a tiny positive value in place of the last zero, so k-diffusion's largest sigma
  stays finite (about 4500) and its log stays defined.
- EDM (Karras et al. 2022), the formulation Playground v2.5 was trained in: no discrete table,
  continuous sigmas between sigma_min and sigma_max, and the UNet's timestep input is
  c_noise = 0.25 * log(sigma) rather than a training timestep.
"""

from __future__ import annotations

import math

import torch

from engine.sampling.schedules import ModelSigmas

# What A1111 (and Forge, ComfyUI) put in place of the rescaled table's last alphas_cumprod (0).
ZTSNR_LAST_ALPHA_CUMPROD = 4.8973451890853435e-08
# How many entries the EDM table has: what the schedule types that walk a table (Uniform, Normal,
# SGM Uniform, Simple, DDIM, Beta) step through; the sigmas in between are continuous anyway.
EDM_TABLE_SIZE = 1000


def zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """alphas_cumprod rescaled to zero terminal SNR (in the table's own float32, as A1111 does),
    the last entry then set to ZTSNR_LAST_ALPHA_CUMPROD."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    rescaled = root ** 2
    rescaled[-1] = ZTSNR_LAST_ALPHA_CUMPROD
    return rescaled


class EdmSigmas(ModelSigmas):
    """Continuous EDM noise levels as a table for the schedule types: EDM_TABLE_SIZE sigmas
    evenly spaced in log sigma from sigma_min to sigma_max. Timesteps for the schedules are
    positions in that table; what the UNet gets is c_noise = 0.25 * log(sigma)."""

    def __init__(self, sigma_min: float, sigma_max: float, device: torch.device | str = "cpu"):
        self.sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), EDM_TABLE_SIZE,
                                     device=device).exp()
        self.log_sigmas = self.sigmas.log()
        # What an alphas_cumprod of these noise levels would be: only read by code that reports
        # noise levels (the NGMS skip); the timestep samplers are refused on EDM models.
        self.alphas_cumprod = 1.0 / (self.sigmas ** 2 + 1.0)
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])

    def unet_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return 0.25 * sigma.log()
