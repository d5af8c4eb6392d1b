"""The studio's sampling of the rectified-flow families against plain diffusers: the flow times
(shift, FLUX's resolution-dependent shift, Simple and Normal schedules) equal diffusers' flow
scheduler's, and the CFG denoiser around the family adapters, stepped by the k-diffusion Euler,
lands on the latents FluxPipeline / StableDiffusion3Pipeline make from the same noise and
embeddings. The flow's ancestral step keeps the latents a flow's mix at every noise level."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.families import family_of
from engine.families.flux import FluxDenoisingModel
from engine.families.sd3 import SD3DenoisingModel
from engine.sampling.denoiser import CFGDenoiser, Conditioning
from engine.families.flux import flux_shift
from engine.sampling.flow_sigmas import FlowSigmas
from engine.sampling.flow_steps import flow_ancestral_split, sample_euler_ancestral_flow
from engine.sampling.k_samplers import sample_euler
from engine.sampling.schedules import schedule_sigmas
from tests.support.flow_pipelines import tiny_flow_pipeline


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def flux():
    return tiny_flow_pipeline("flux-dev", seed=3)


@pytest.fixture(scope="module")
def sd3():
    return tiny_flow_pipeline("sd3.5-medium", seed=4)


def _diffusers_sigmas(scheduler, steps: int, **kwargs) -> np.ndarray:
    scheduler.set_timesteps(steps, **kwargs)
    return scheduler.sigmas.numpy()


@pytest.mark.parametrize("size, steps", [((64, 64), 4), ((1024, 1024), 20), ((768, 1344), 25), ((512, 512), 8)])
def test_flux_simple_schedule_is_diffusers_shifted_linspace(flux, size, steps):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    width, height = size
    patches = (width // 16) * (height // 16)
    config = flux.scheduler.config
    mu = calculate_shift(patches, config.base_image_seq_len, config.max_image_seq_len, config.base_shift,
                         config.max_shift)
    assert flux_shift(width, height) == pytest.approx(math.exp(mu), rel=1e-12)
    reference = _diffusers_sigmas(flux.scheduler, steps, sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    ours = schedule_sigmas("Simple", steps, FlowSigmas(flux_shift(width, height))).numpy()
    np.testing.assert_allclose(ours, reference, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("steps", [5, 28])
def test_sd3_normal_schedule_is_diffusers_default(sd3, steps):
    reference = _diffusers_sigmas(sd3.scheduler, steps)
    ours = schedule_sigmas("Normal", steps, FlowSigmas(3.0)).numpy()
    np.testing.assert_allclose(ours, reference, rtol=2e-6, atol=1e-7)


def test_flow_table_ends_and_every_schedule_type_stays_in_the_flow(sd3):
    table = FlowSigmas(3.0)
    assert table.sigma_max == pytest.approx(1.0) and table.sigma_min == pytest.approx(3 * 0.001 / (1 + 2 * 0.001))
    for label in ("Uniform", "Karras", "Exponential", "SGM Uniform", "KL Optimal", "Simple", "Normal", "DDIM", "Beta"):
        sigmas = schedule_sigmas(label, 10, table)
        assert float(sigmas[0]) <= 1.0 + 1e-6 and bool((sigmas[:-1] > 0).all()), label
        assert bool((sigmas[1:] <= sigmas[:-1]).all()), label


def _noise(seed: int) -> torch.Tensor:
    return torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(seed))


def test_flux_dev_euler_matches_flux_pipeline(flux):
    steps, guidance = 4, 3.5
    embeds, pooled, _ = flux.encode_prompt("a red fox in the snow", prompt_2=None, max_sequence_length=256)
    noise = _noise(11)
    packed = flux._pack_latents(noise, 1, 16, 8, 8)
    reference = flux(prompt_embeds=embeds, pooled_prompt_embeds=pooled, latents=packed, num_inference_steps=steps,
                     guidance_scale=guidance, height=64, width=64, output_type="latent").images
    reference = flux._unpack_latents(reference, 64, 64, 8)

    table = FlowSigmas(flux_shift(64, 64))
    sigmas = schedule_sigmas("Simple", steps, table)
    texts = Conditioning(embeds, embeds, pooled, pooled)
    calls = []
    module = FluxDenoisingModel(flux.transformer, guidance)
    counting = lambda *args, **kwargs: calls.append(args[0].shape[0]) or module(*args, **kwargs)  # noqa: E731
    counting.dtype, counting.config = module.dtype, module.config
    denoiser = CFGDenoiser(counting, table, "flow", 1.0, lambda: texts, uncond_at_scale_one=False)
    ours = sample_euler(denoiser, noise * sigmas[0], sigmas, noise_sampler=lambda *_: torch.zeros_like(noise))
    assert calls == [1] * steps   # real CFG 1: the positive prompt alone, once per step
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def test_flux_distilled_guidance_reaches_the_transformer(flux):
    embeds, pooled, _ = flux.encode_prompt("a lighthouse", prompt_2=None, max_sequence_length=256)
    x, sigma = _noise(2), torch.tensor([0.7])
    outputs = [FluxDenoisingModel(flux.transformer, g)(x, sigma, embeds, added_cond_kwargs={"text_embeds": pooled})[0]
               for g in (1.0, 3.5, 3.5)]
    assert torch.equal(outputs[1], outputs[2]) and not torch.allclose(outputs[0], outputs[1])


def test_sd3_cfg_euler_matches_sd3_pipeline(sd3):
    steps, scale = 5, 4.5
    pe, npe, ppe, nppe = sd3.encode_prompt("a castle on a hill", "a castle on a hill", "a castle on a hill",
                                           negative_prompt="blurry", negative_prompt_2="blurry",
                                           negative_prompt_3="blurry", do_classifier_free_guidance=True,
                                           max_sequence_length=256)
    noise = _noise(5)
    reference = sd3(prompt_embeds=pe, negative_prompt_embeds=npe, pooled_prompt_embeds=ppe,
                    negative_pooled_prompt_embeds=nppe, latents=noise.clone(), num_inference_steps=steps,
                    guidance_scale=scale, height=64, width=64, output_type="latent").images

    table = FlowSigmas(3.0)
    sigmas = schedule_sigmas("Normal", steps, table)
    texts = Conditioning(pe, npe, ppe, nppe)
    denoiser = CFGDenoiser(SD3DenoisingModel(sd3.transformer), table, "flow", scale, lambda: texts,
                           uncond_at_scale_one=False)
    ours = sample_euler(denoiser, noise * sigmas[0], sigmas, noise_sampler=lambda *_: torch.zeros_like(noise))
    # Guidance mixes the denoised latents here, the velocities there: float32 rounding apart.
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=5e-5)


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_flow_ancestral_split_keeps_the_flow_mix(eta):
    for sigma, sigma_next in ((1.0, 0.8), (0.6, 0.3), (0.2, 0.05)):
        sigma_down, rescale, renoise = flow_ancestral_split(torch.tensor(sigma), torch.tensor(sigma_next), eta)
        assert float(sigma_down) < sigma_next
        # The picture's share after the step is the next level's, and so is the noise's variance.
        assert float((1 - sigma_down) * rescale) == pytest.approx(1 - sigma_next, rel=1e-6)
        assert float((sigma_down * rescale) ** 2 + renoise ** 2) == pytest.approx(sigma_next ** 2, rel=1e-5)


def test_flow_euler_a_with_a_perfect_denoiser_walks_the_flow_marginals():
    """A denoiser that always answers the true picture: after each ancestral step the latents are
    (1 - sigma) x0 + sigma n with n of unit variance, and the last step lands on x0."""
    x0 = torch.randn((1, 16, 64, 64), generator=torch.Generator().manual_seed(1))
    sigmas = schedule_sigmas("Simple", 8, FlowSigmas(3.0))
    generator = torch.Generator().manual_seed(2)
    seen = []

    def model(x, sigma):
        seen.append((float(sigma[0]), x.clone()))
        return x0

    def noise_sampler(sigma, sigma_next):
        return torch.randn(x0.shape, generator=generator)

    start = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    out = sample_euler_ancestral_flow(model, start, sigmas, noise_sampler=noise_sampler)
    torch.testing.assert_close(out, x0)
    for sigma, x in seen[1:]:
        noise = (x - (1 - sigma) * x0) / sigma
        assert float(noise.std()) == pytest.approx(1.0, abs=0.03)
        assert abs(float(noise.mean())) < 0.03


def test_families_name_their_flow_needs():
    flux_family, sd3_family = family_of("flux"), family_of("sd3")
    assert flux_family.flow and sd3_family.flow and not family_of("sdxl").flow
    assert flux_family.latent_channels == sd3_family.latent_channels == 16
    with pytest.raises(ValueError, match="unknown model family"):
        family_of("sd4")
