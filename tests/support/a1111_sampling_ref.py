"""AUTOMATIC1111's side of tests/test_a1111_sampling_reference.py, restated from its documented
behaviour: the LDM model stand-ins k-diffusion's CompVis wrappers expect (SD 1.x, SDXL), its
classifier-free guidance denoiser, its per-image noise generators and the `torch` it hands
k-diffusion, its LCM denoiser, and its Restart sampler."""

from __future__ import annotations

import numpy as np
import torch

LATENT = (4, 8, 8)  # a 64x64 picture


def ldm_alphas_cumprod() -> torch.Tensor:
    """SD 1.x's alphas_cumprod as the LDM code builds it: float64, then stored as float32."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    return torch.tensor(np.cumprod(1.0 - betas, axis=0), dtype=torch.float32)


class LdmStandIn(torch.nn.Module):
    """What k-diffusion's CompVis wrappers expect of A1111's model: apply_model and the table."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.alphas_cumprod = ldm_alphas_cumprod()

    def apply_model(self, x, t, cond):
        return self.unet(x, t, encoder_hidden_states=cond["c_crossattn"][0], return_dict=False)[0]


class A1111Guidance(torch.nn.Module):
    """A1111's CFG denoiser restated: positive rows first, the negative last; guidance on the
    wrapped model's outputs; the mask blended in after guidance."""

    def __init__(self, inner, cond, uncond, scale, mask=None, init_latent=None):
        super().__init__()
        self.inner, self.cond, self.uncond, self.scale = inner, cond, uncond, scale
        self.mask, self.init_latent = mask, init_latent

    def forward(self, x, sigma, **_):
        x_in = torch.cat([x, x])
        sigma_in = torch.cat([sigma, sigma])
        out = self.inner(x_in, sigma_in, cond={"c_crossattn": [torch.cat([self.cond, self.uncond])]})
        batch = x.shape[0]
        cond_out, uncond_out = out[:batch], out[batch:]
        denoised = torch.clone(uncond_out)
        for i in range(batch):
            denoised[i] += (cond_out[i] - uncond_out[i]) * (1.0 * self.scale)
        if self.mask is not None:
            denoised = denoised * (1 - self.mask) + self.init_latent * self.mask
        return denoised


class A1111Noise:
    """A1111's ImageRNG for the CPU source: a generator per image; the first draw is the starting
    noise, later draws are step noise; ENSD re-seeds the generators after the first draw."""

    def __init__(self, seeds, ensd=0, shape=LATENT):
        self.seeds, self.ensd, self.shape = seeds, ensd, shape
        self.generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        self.first = True

    def next(self):
        noise = torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])
        if self.first and self.ensd:
            self.generators = [torch.Generator("cpu").manual_seed(s + self.ensd) for s in self.seeds]
        self.first = False
        return noise


class HijackedTorch:
    """A1111 replaces k-diffusion's `torch` so that every randn_like comes from the images' generators."""

    def __init__(self, noise):
        self.noise = noise

    def __getattr__(self, name):
        if name == "randn_like":
            return lambda x: self.noise.next()
        return getattr(torch, name)


class SdxlStandIn(LdmStandIn):
    def __init__(self, unet, pooled, time_ids):
        super().__init__(unet)
        self.pooled, self.time_ids = pooled, time_ids

    def apply_model(self, x, t, cond):
        added = {"text_embeds": self.pooled, "time_ids": self.time_ids.expand(x.shape[0], -1)}
        return self.unet(x, t, encoder_hidden_states=cond["c_crossattn"][0], added_cond_kwargs=added,
                         return_dict=False)[0]


def lcm_reference_wrapper(external, model):
    """A1111's LCM denoiser restated on k-diffusion's eps wrapper: a 50-entry noise table (every
    20th timestep from 999 down), quantised timesteps t = 20 i + 19, and the consistency model's
    boundary scalings on the denoised output."""
    skip = 20

    class LcmWrapper(external.DiscreteEpsDDPMDenoiser):
        def __init__(self):
            valid = torch.zeros(50, dtype=torch.float32)
            for x in range(50):
                valid[49 - x] = model.alphas_cumprod[999 - x * skip]
            super().__init__(model, valid, quantize=None)

        def get_sigmas(self, n=None):
            start, end = self.sigma_to_t(self.sigma_max), self.sigma_to_t(self.sigma_min)
            return torch.cat([self.t_to_sigma(torch.linspace(start, end, n)), torch.zeros(1)])

        def sigma_to_t(self, sigma, quantize=None):
            dists = sigma.log() - self.log_sigmas[:, None]
            return dists.abs().argmin(dim=0).view(sigma.shape) * skip + (skip - 1)

        def t_to_sigma(self, timestep):
            t = torch.clamp(((timestep - (skip - 1)) / skip).float(), min=0, max=(len(self.sigmas) - 1))
            return super().t_to_sigma(t)

        def get_eps(self, *args, **kwargs):
            return self.inner_model.apply_model(*args, **kwargs)

        def forward(self, input, sigma, **kwargs):
            c_out, c_in = [x[:, None, None, None] for x in self.get_scalings(sigma)]
            eps = self.get_eps(input * c_in, self.sigma_to_t(sigma), **kwargs)
            output = input + eps * c_out
            scaled = self.sigma_to_t(sigma)[:, None, None, None] * 10.0
            c_skip = 0.5 ** 2 / (scaled ** 2 + 0.5 ** 2)
            c_out2 = scaled / (scaled ** 2 + 0.5 ** 2) ** 0.5
            return c_out2 * output + c_skip * input

    return LcmWrapper()


def restart_reference(kdiff, guidance, x, sigmas, noise):
    """A1111's Restart sampler restated from its description: Heun steps; from 20 steps on it
    keeps 9 steps (36+: steps // 4, twice) for a loop that re-noises from sigma ~0.1 up to
    sigma 2 and comes down again on a Karras schedule of its own."""
    sampling, _ = kdiff
    steps = len(sigmas) - 1
    loops = {}
    if steps >= 20:
        loop_steps, times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = sampling.get_sigmas_karras(steps - loop_steps * times, sigmas[-2].item(), sigmas[0].item())
        loops = {int(torch.argmin(abs(sigmas - 0.1), dim=0)): (loop_steps + 1, times, 2)}
    pairs = []
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in loops:
            count, times, top = loops[i + 1]
            top_index = int(torch.argmin(abs(sigmas - top), dim=0))
            if top_index < i + 1:
                loop = sampling.get_sigmas_karras(count, sigmas[i + 1].item(), sigmas[top_index].item())[:-1]
                for _ in range(times):
                    pairs.extend(zip(loop[:-1], loop[1:]))
    s_in = x.new_ones([x.shape[0]])
    previous = None
    for sigma, sigma_next in pairs:
        if previous is not None and previous < sigma:
            x = x + noise.next() * (sigma ** 2 - previous ** 2) ** 0.5
        denoised = guidance(x, sigma * s_in)
        d = (x - denoised) / sigma
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma)
        else:
            x_2 = x + d * (sigma_next - sigma)
            d_2 = (x_2 - guidance(x_2, sigma_next * s_in)) / sigma_next
            x = x + (d + d_2) / 2 * (sigma_next - sigma)
        previous = sigma_next
    return x
