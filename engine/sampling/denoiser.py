"""The diffusers UNet as the sampler functions see it: one call takes the latents of a batch and
a noise level and gives back what A1111's classifier-free-guidance denoiser gives.

- k-diffusion samplers ("k"): the UNet gets the latents scaled by 1/sqrt(sigma^2+1) and the
  continuous timestep of sigma (log-sigma interpolated over the model's table); its epsilon or v
  output becomes the denoised latents of each half, and guidance mixes those.
- timestep samplers ("eps": DDIM, PLMS, UniPC): the UNet gets the timestep as given and guidance
  mixes epsilon (v-prediction converted to epsilon at the integer timestep, as A1111 does).
- LCM ("lcm"): A1111's LCM denoiser: quantised timesteps of a 50-entry table and the consistency
  model's boundary scalings.
- A rectified-flow model (prediction type "flow": FLUX.1, SD 3.x, through the adapters of
  engine/families): the transformer gets the latents as they are and the flow time (sigma itself)
  and predicts the velocity v; the denoised latents are x - sigma v.
- An EDM model (prediction type "edm", Playground v2.5) with the k-diffusion samplers: Karras et
  al.'s preconditioning with sigma_data 0.5 (c_in, c_skip, c_out) and the UNet's timestep
  c_noise = 0.25 * log(sigma) from its table (engine/sampling/noise_tables.py).

"CFG Rescale" (phi > 0, Lin et al. 2023, section 3.4) scales the guided result so that its standard
deviation is that of the positive prediction, then mixes phi of it with 1 - phi of the plain
guided result, per image; as the A1111 extension that writes this infotext key does, it acts on
what guidance mixes: the denoised latents for the k-diffusion samplers, the noise prediction for
the timestep samplers.

The batch is [negative..., positive...] as diffusers lays it out (ControlNet's per-half control
relies on that order); guidance is A1111's `uncond + (cond - uncond) * scale`. With a mask
(inpainting with an ordinary model) the result is blended with the original latents after
guidance (k and LCM) or the input is blended before the call (timestep samplers), as A1111 does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.sampling.schedules import ModelSigmas

# EDM's sigma_data: the standard deviation of the training latents Karras et al. precondition for
# (Playground v2.5 was trained with 0.5, as the LCM boundary also assumes).
EDM_SIGMA_DATA = 0.5


class Interrupted(Exception):
    """Raised from a denoiser call when the job is interrupted or skipped: the runner keeps the
    last denoised latents."""


@dataclass
class Conditioning:
    """The text conditioning of one UNet call for a batch of B images."""

    cond: torch.Tensor            # (B, tokens, dim)
    uncond: torch.Tensor          # (B, tokens, dim)
    cond_pooled: torch.Tensor | None = None    # SDXL (B, 1280)
    uncond_pooled: torch.Tensor | None = None


class CFGDenoiser:
    """Classifier-free guidance around a diffusers UNet, for one batch of one job."""

    def __init__(self, unet, table: ModelSigmas, prediction_type: str, cfg_scale: float,
                 conditioning: Callable[[], Conditioning], *, mode: str = "k",
                 image_cond: torch.Tensor | None = None, time_ids: torch.Tensor | None = None,
                 s_min_uncond: float = 0.0, guidance_embedding: torch.Tensor | None = None,
                 before_call: Callable[[], None] | None = None, cfg_rescale: float = 0.0,
                 uncond_time_ids: torch.Tensor | None = None,
                 before_unet: Callable[["CFGDenoiser", torch.Tensor], None] | None = None,
                 uncond_at_scale_one: bool = True):
        if mode not in ("k", "eps", "lcm"):
            raise ValueError(f"unknown denoiser mode {mode!r}")
        if prediction_type in ("edm", "flow") and mode != "k":
            raise ValueError(f"a {prediction_type} model samples with the k-diffusion samplers only")
        self.unet = unet
        self.table = table
        self.prediction_type = prediction_type
        self.cfg_scale = cfg_scale
        self.cfg_rescale = cfg_rescale
        self.conditioning = conditioning
        self.mode = mode
        self.image_cond = image_cond
        self.time_ids = time_ids
        # SDXL micro-conditioning of the negative half when it differs (the refiner's aesthetic
        # score); None: the same as the positive half's.
        self.uncond_time_ids = uncond_time_ids
        self.s_min_uncond = s_min_uncond
        # False: at scale 1 the negative half is left out (Forge's and ComfyUI's way for the flow
        # families); A1111 runs it at every scale for the SD families.
        self.uncond_at_scale_one = uncond_at_scale_one
        # A guidance-distilled UNet (LCM's time_cond_proj_dim) takes the scale as an embedding and
        # has no negative half.
        self.guidance_embedding = guidance_embedding
        self.before_call = before_call
        # Called with the noise level before each UNet call; may hand the rest of the sampling
        # to another model with use_model() (the refiner, engine/runs/refiner.py).
        self.before_unet = before_unet
        self.mask: torch.Tensor | None = None
        self.nmask: torch.Tensor | None = None
        self.init_latent: torch.Tensor | None = None
        self.mask_before_denoising = mode == "eps"
        # What the timestep samplers read or set (DDIM CFG++).
        self.cond_scale_multiplier = 1.0
        self.need_last_noise_uncond = False
        self.last_noise_uncond: torch.Tensor | None = None
        self.calls = 0
        self.skipped_uncond = 0

    def use_model(self, unet, table: ModelSigmas, prediction_type: str,
                  conditioning: Callable[[], Conditioning], *, time_ids: torch.Tensor | None,
                  uncond_time_ids: torch.Tensor | None = None, image_cond: torch.Tensor | None = None,
                  guidance_embedding: torch.Tensor | None = None) -> None:
        """From the next UNet call on, another model (of the same latent space) denoises: the
        sampler, its schedule and its state go on as they are."""
        self.unet, self.table, self.prediction_type = unet, table, prediction_type
        self.conditioning = conditioning
        self.time_ids, self.uncond_time_ids = time_ids, uncond_time_ids
        self.image_cond, self.guidance_embedding = image_cond, guidance_embedding

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.table.alphas_cumprod

    def set_mask(self, init_latent: torch.Tensor, mask: torch.Tensor) -> None:
        """`mask`: 1 where the original latents are kept (A1111's `mask`), 0 where they change."""
        self.init_latent = init_latent
        self.mask = mask
        self.nmask = 1.0 - mask

    def _blend(self, latent: torch.Tensor) -> torch.Tensor:
        return latent * self.nmask + self.init_latent * self.mask

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.before_call is not None:
            self.before_call()  # progress, interrupt (raises Interrupted)
        if self.before_unet is not None:
            self.before_unet(self, sigma)
        if self.mask_before_denoising and self.mask is not None:
            x = self._blend(x)
        count = x.shape[0]
        texts = self.conditioning()
        # A1111 runs the negative half at every scale (1 included); a guidance-embedding UNet has none.
        guided = self.guidance_embedding is None and (self.uncond_at_scale_one or self.cfg_scale != 1)
        # A1111 leaves the negative half out of every other call below s_min_uncond ("NGMS").
        skip = bool(self.calls % 2 and self.s_min_uncond > 0 and float(sigma[0]) < self.s_min_uncond)
        time_ids = None if self.time_ids is None else self.time_ids.expand(count, -1)
        if guided and not skip:
            x_in, sigma_in = torch.cat([x, x]), torch.cat([sigma, sigma])
            embeds = torch.cat([texts.uncond, texts.cond])
            pooled = None if texts.cond_pooled is None else torch.cat([texts.uncond_pooled, texts.cond_pooled])
            if time_ids is not None:
                negative = self.time_ids if self.uncond_time_ids is None else self.uncond_time_ids
                time_ids = torch.cat([negative.expand(count, -1), time_ids])
        else:
            x_in, sigma_in, embeds, pooled = x, sigma, texts.cond, texts.cond_pooled
        out = self._inner(x_in, sigma_in, embeds, pooled, time_ids)
        if not guided:
            denoised = out
        elif skip:
            self.skipped_uncond += 1
            denoised = out.clone()  # guidance of a prediction with itself: the prediction
            if self.need_last_noise_uncond:
                self.last_noise_uncond = out.clone()
        else:
            uncond_out, cond_out = out[:count], out[count:]
            if self.need_last_noise_uncond:
                self.last_noise_uncond = uncond_out.clone()
            denoised = uncond_out.clone()
            denoised += (cond_out - uncond_out) * (1.0 * (self.cfg_scale * self.cond_scale_multiplier))
            if self.cfg_rescale > 0:
                denoised = rescaled_guidance(denoised, cond_out, self.cfg_rescale)
        if not self.mask_before_denoising and self.mask is not None:
            denoised = self._blend(denoised)
        self.calls += 1
        return denoised

    def _inner(self, x: torch.Tensor, sigma: torch.Tensor, embeds: torch.Tensor,
               pooled: torch.Tensor | None, time_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Per image of the doubled batch: denoised latents ("k", "lcm") or epsilon ("eps")."""
        if self.mode == "eps":
            output = self._unet(x, sigma, embeds, pooled, time_ids)
            if self.prediction_type == "v_prediction":
                alphas = self.table.alphas_cumprod.to(x.device)[sigma.to(torch.int)][:, None, None, None]
                return alphas.sqrt() * output + (1 - alphas).sqrt() * x
            return output
        sigma_b = sigma[:, None, None, None]
        if self.prediction_type == "flow":
            velocity = self._unet(x, self.table.unet_timestep(sigma), embeds, pooled, time_ids)
            return x - velocity * sigma_b
        if self.prediction_type == "edm":
            return self._edm(x, sigma, sigma_b, embeds, pooled, time_ids)
        c_in = 1 / (sigma_b ** 2 + 1.0 ** 2) ** 0.5
        output = self._unet(x * c_in, self.table.unet_timestep(sigma), embeds, pooled, time_ids)
        if self.prediction_type == "v_prediction":
            c_skip = 1.0 ** 2 / (sigma_b ** 2 + 1.0 ** 2)
            c_out = -sigma_b * 1.0 / (sigma_b ** 2 + 1.0 ** 2) ** 0.5
            denoised = output * c_out + x * c_skip
        else:
            denoised = x + output * -sigma_b
        if self.mode == "lcm":
            denoised = self._consistency_boundary(sigma, denoised, x)
        return denoised

    def _edm(self, x: torch.Tensor, sigma: torch.Tensor, sigma_b: torch.Tensor, embeds: torch.Tensor,
             pooled: torch.Tensor | None, time_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Karras et al.'s preconditioned denoiser: the UNet's output is the scaled noise."""
        spread = sigma_b ** 2 + EDM_SIGMA_DATA ** 2
        c_in = 1 / spread ** 0.5
        c_skip = EDM_SIGMA_DATA ** 2 / spread
        c_out = sigma_b * EDM_SIGMA_DATA / spread ** 0.5
        output = self._unet(x * c_in, self.table.unet_timestep(sigma), embeds, pooled, time_ids)
        return x * c_skip + output * c_out

    def _consistency_boundary(self, sigma: torch.Tensor, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The LCM scheduler's c_skip/c_out at the (quantised) timestep, with sigma_data 0.5 and the
        timestep scaled by 10, as A1111's LCM denoiser applies them."""
        sigma_data = 0.5
        scaled = self.table.sigma_to_t(sigma)[:, None, None, None] * 10.0
        c_skip = sigma_data ** 2 / (scaled ** 2 + sigma_data ** 2)
        c_out = scaled / (scaled ** 2 + sigma_data ** 2) ** 0.5
        return c_out * output + c_skip * x

    def _unet(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor,
              pooled: torch.Tensor | None, time_ids: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self.unet.dtype
        if self.image_cond is not None:
            image_cond = self.image_cond.to(x.device, x.dtype)
            repeats = x.shape[0] // image_cond.shape[0]
            x = torch.cat([x, image_cond.repeat(repeats, 1, 1, 1)], dim=1)
        kwargs = {}
        if pooled is not None:
            added = {"text_embeds": pooled.to(dtype)}
            if time_ids is None and self.time_ids is not None:
                time_ids = self.time_ids.expand(x.shape[0], -1)
            if time_ids is not None:  # SDXL's micro-conditioning (a flow transformer has none)
                added["time_ids"] = time_ids.to(x.device, dtype)
            kwargs["added_cond_kwargs"] = added
        if self.guidance_embedding is not None:
            kwargs["timestep_cond"] = self.guidance_embedding.to(x.device, dtype).expand(x.shape[0], -1)
        output = self.unet(x.to(dtype), t.to(x.device), encoder_hidden_states=embeds.to(dtype),
                           return_dict=False, **kwargs)[0]
        return output.to(torch.float32)


def rescaled_guidance(guided: torch.Tensor, positive: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al.'s rescaled classifier-free guidance: phi of the guided result scaled to the
    positive prediction's standard deviation (per image), 1 - phi of it as it is."""
    dims = tuple(range(1, guided.ndim))
    rescaled = guided * (positive.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1.0 - phi) * guided


def guidance_embedding(cfg_scale: float, dim: int) -> torch.Tensor:
    """The guidance scale as a guidance-distilled UNet (LCM) takes it: sinusoidal features of
    (scale - 1) x 1000, sines then cosines, as that UNet family was trained."""
    w = torch.tensor([(cfg_scale - 1.0) * 1000.0])
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    angles = w[:, None] * frequencies[None, :]
    features = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        features = torch.nn.functional.pad(features, (0, 1))
    return features
