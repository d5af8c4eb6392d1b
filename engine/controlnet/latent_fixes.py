"""What some units do to the UNet's prediction after it runs, as the ControlNet extension does it:

* tile_colorfix: the predicted picture (x0) keeps its detail but takes the control picture's
  colours, `x0 - blur(x0, k) + blur(x0_control, k)`, k the Variation slider in latent pixels
  (doubled in a pass at twice the size, like hires fix). tile_colorfix+sharp also blurs the
  negative half's prediction by the Sharpness slider (x 0.01), which guidance then pushes away from.
* inpaint_only: outside the mask the predicted picture is the control picture's,
  `x0 * mask + x0_control * (1 - mask)`, the mask brought to latent size by a 10x10 max pool with
  stride 8 (it grows by a latent pixel, so the seam is repainted).

The corrected prediction is blended in by the unit's weight (clamped to 0..1). x0 and the noise
are related through the model's alphas_cumprod at the UNet's timestep, the UNet's input being the
DDPM-scaled latents whichever sampler runs (engine/sampling/denoiser.py); epsilon and
v-prediction models both work. x0_control is the control picture framed to the job's size and
encoded by the model's VAE before sampling starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

COLORFIX, COLORFIX_SHARP, INPAINT_ONLY = "tile_colorfix", "tile_colorfix+sharp", "inpaint_only"
FIXING_MODULES = (COLORFIX, COLORFIX_SHARP, INPAINT_ONLY, "inpaint_only+lama")


def blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """A (2k+1)-wide box blur with the edges repeated."""
    padded = F.pad(x, (k, k, k, k), mode="replicate")
    return F.avg_pool2d(padded, (2 * k + 1, 2 * k + 1), stride=(1, 1))


def latent_mask(repaint: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) pixels, 1 where the unit repaints, to latent size, grown by a pixel."""
    return F.max_pool2d(repaint, (10, 10), stride=(8, 8), padding=1)


@dataclass
class LatentFix:
    module: str
    weight: float
    latents: torch.Tensor                 # x0 of the control picture at the job's size (1, 4, h, w)
    variation: int = 8                    # tile_colorfix's k
    sharpness: float = 1.0                # tile_colorfix+sharp's slider
    mask: torch.Tensor | None = None      # inpaint_only: (1, 1, h, w), 1 where it repaints

    def apply(self, sample: torch.Tensor, timestep: torch.Tensor, output: torch.Tensor,
              alphas_cumprod: torch.Tensor, prediction_type: str, cond_mark: torch.Tensor) -> torch.Tensor:
        x_t = sample[:, :self.latents.shape[1]].float()
        alpha = _alpha_at(alphas_cumprod, timestep, x_t)
        predicted = output.float()
        x0 = to_x0(x_t, predicted, alpha, prediction_type)
        control = _sized(self.latents, x_t)
        if self.module.startswith(INPAINT_ONLY):
            mask = _sized(self.mask, x_t)
            fixed = x0 * mask + control * (1 - mask)
        else:
            k = self.variation * max(1, round(x_t.shape[-1] / self.latents.shape[-1]))
            fixed = x0 - blur(x0, k) + blur(control, k)
            if self.module == COLORFIX_SHARP:
                detail = self.sharpness * 0.01
                blurred = detail * blur(fixed, k) + (1 - detail) * fixed
                fixed = cond_mark * fixed + (1 - cond_mark) * blurred
        corrected = from_x0(x_t, fixed, alpha, prediction_type)
        weight = min(1.0, max(0.0, float(self.weight)))
        return (corrected * weight + predicted * (1 - weight)).to(output.dtype)


def _alpha_at(alphas_cumprod: torch.Tensor, timestep: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    steps = torch.as_tensor(timestep, device=like.device).float().round().long()
    steps = steps.clamp(0, len(alphas_cumprod) - 1).expand(like.shape[0]) if steps.ndim == 0 else \
        steps.clamp(0, len(alphas_cumprod) - 1)
    # Clamped off 0 and 1: a zero-terminal-SNR table ends at 0, where x0 and the noise part.
    return alphas_cumprod.to(like.device, torch.float32)[steps].clamp(1e-6, 1 - 1e-6)[:, None, None, None]


def _sized(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`tensor` at `like`'s spatial size (a hires pass samples larger latents), on its device."""
    if tensor.shape[-2:] != like.shape[-2:]:
        tensor = F.interpolate(tensor.float(), size=like.shape[-2:], mode="bilinear", align_corners=False)
    return tensor.to(like.device, torch.float32)


def to_x0(x_t: torch.Tensor, output: torch.Tensor, alpha: torch.Tensor, prediction_type: str) -> torch.Tensor:
    if prediction_type == "v_prediction":
        return alpha.sqrt() * x_t - (1 - alpha).sqrt() * output
    return (x_t - (1 - alpha).sqrt() * output) / alpha.sqrt()


def from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha: torch.Tensor, prediction_type: str) -> torch.Tensor:
    noise = (x_t - alpha.sqrt() * x0) / (1 - alpha).sqrt()
    if prediction_type == "v_prediction":
        return alpha.sqrt() * noise - (1 - alpha).sqrt() * x0
    return noise
