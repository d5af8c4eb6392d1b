"""Same seed and settings, same latents as AUTOMATIC1111: every sampler and schedule type of ours
against k-diffusion's sampler functions (the code A1111 runs) in A1111's configuration, on the
same tiny SD 1.x UNet and conditioning.

A1111's side is restated from its documented behaviour in tests/support/a1111_sampling_ref.py
(its guidance denoiser, its per-image noise with ENSD, the LDM stand-ins, LCM and Restart);
k-diffusion's CompVisDenoiser/CompVisVDenoiser run over the float32 `alphas_cumprod` the LDM
code makes, SDE samplers get Brownian trees seeded with the image seeds, and img2img follows
A1111's step arithmetic. Timestep samplers (DDIM, DDIM CFG++, PLMS, UniPC), which k-diffusion
does not have, are compared with tests/support/a1111_timesteps_ref.py (UniPC's solver:
test_sampling_unipc.py). Final latents must agree within float32 noise (relative difference < 1e-5).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.sampling import samplers
from engine.sampling.denoiser import CFGDenoiser, Conditioning
from engine.sampling.noise import ImageNoise
from engine.sampling.runner import BatchSampling, Img2ImgStart, SamplingPlan
from engine.sampling.schedules import LcmSigmas, ModelSigmas, sampler_sigmas
from tests.support import a1111_timesteps_ref, kdiffusion_ref
from tests.support.a1111_sampling_ref import (LATENT, A1111Guidance, A1111Noise, HijackedTorch, LdmStandIn,
                                              SdxlStandIn, lcm_reference_wrapper, ldm_alphas_cumprod,
                                              restart_reference)

TOLERANCE = 1e-5
SEEDS = (1234, 98765)
STEPS = 6
CFG = 6.5

K_SAMPLERS = [s for s in samplers.SAMPLERS if s.kind != samplers.TIMESTEPS]
TIMESTEP_SAMPLERS = [s for s in samplers.SAMPLERS if s.kind == samplers.TIMESTEPS]
# What A1111 1.10 gives each sampler function (its sampler table and sampler_extra_params).
A1111_FUNCTIONS = {
    "DPM++ 2M": ("sample_dpmpp_2m", {}), "DPM++ SDE": ("sample_dpmpp_sde", {}),
    "DPM++ 2M SDE": ("sample_dpmpp_2m_sde", {}), "DPM++ 2M SDE Heun": ("sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    "DPM++ 2S a": ("sample_dpmpp_2s_ancestral", {}), "DPM++ 3M SDE": ("sample_dpmpp_3m_sde", {}),
    "Euler a": ("sample_euler_ancestral", {}), "Euler": ("sample_euler", {}), "LMS": ("sample_lms", {}),
    "Heun": ("sample_heun", {}), "DPM2": ("sample_dpm_2", {}), "DPM2 a": ("sample_dpm_2_ancestral", {}),
    "DPM fast": ("sample_dpm_fast", {}), "DPM adaptive": ("sample_dpm_adaptive", {}),
}
A1111_DEFAULT_SCHEDULE = {"DPM++ 2M": "Karras", "DPM++ SDE": "Karras", "DPM++ 2M SDE": "Exponential",
                          "DPM++ 2M SDE Heun": "Exponential", "DPM++ 2S a": "Karras", "DPM++ 3M SDE": "Exponential",
                          "DPM2": "Karras", "DPM2 a": "Karras", "Restart": "Karras"}
A1111_DISCARDS = {"DPM2", "DPM2 a", "DPM++ 3M SDE"}
BROWNIAN = {"DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"}
TAKES_ETA = {"Euler a", "DPM2 a", "DPM fast", "DPM adaptive", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE",
             "DPM++ 2M SDE Heun", "DPM++ 3M SDE"}
TAKES_CHURN = {"Euler", "Heun", "DPM2"}
TAKES_S_NOISE = TAKES_CHURN | {"DPM fast", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE",
                               "DPM++ 2M SDE Heun", "DPM++ 3M SDE"}


@pytest.fixture(scope="module")
def kdiff():
    return kdiffusion_ref.load()


@pytest.fixture(scope="module")
def unet(tiny_models):
    pipe = tiny_models.reference_pipeline("sd1")
    return pipe.unet.eval()


@pytest.fixture(scope="module")
def texts(unet):
    generator = torch.Generator().manual_seed(5)
    dim = unet.config.cross_attention_dim
    cond = torch.randn((1, 77, dim), generator=generator).expand(len(SEEDS), -1, -1)
    uncond = torch.randn((1, 77, dim), generator=generator).expand(len(SEEDS), -1, -1)
    return cond, uncond


def relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def _ours(unet, texts, sampler, schedule, *, prediction="epsilon", start=None, params=None, ensd=0,
          always_discard=False, seeds=SEEDS, steps=STEPS):
    """Final latents of our runner, noise from the CPU source."""
    cond, uncond = texts
    mode = {"k": "k", "timesteps": "eps", "lcm": "lcm"}[sampler.kind]
    alphas = ModelSigmas.from_config({"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                                      "beta_schedule": "scaled_linear"}).alphas_cumprod
    table = (LcmSigmas if mode == "lcm" else ModelSigmas)(alphas)
    denoiser = CFGDenoiser(unet, table, prediction, CFG, lambda: Conditioning(cond, uncond), mode=mode)
    noise = ImageNoise(LATENT, list(seeds), source="CPU", eta_noise_seed_delta=ensd)
    eta = sampler.eta_default if not params or "eta" not in params else params["eta"]
    request = _Params(**(params or {}))
    plan = SamplingPlan(sampler, schedule, steps, samplers.sampler_parameters(sampler, request, eta),
                        always_discard=always_discard, uni_pc={"variant": "bh1", "skip_type": "time_uniform",
                                                               "order": 3, "lower_order_final": True})
    with torch.inference_mode():
        first = noise.next()
        if start is not None and start.mask is not None:
            denoiser.set_mask(start.latents, start.mask)
        latents = BatchSampling(plan, denoiser, noise, seeds).run(first, start and start.img2img)
        if start is not None and start.mask is not None:
            latents = latents * denoiser.nmask + denoiser.init_latent * denoiser.mask
        return latents


class _Params:
    def __init__(self, eta=None, s_churn=None, s_tmin=None, s_tmax=None, s_noise=None):
        self.eta, self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = eta, s_churn, s_tmin, s_tmax, s_noise


class _Start:
    def __init__(self, latents, strength, fixed=False, mask=None):
        self.latents, self.mask = latents, mask
        self.img2img = Img2ImgStart(latents, strength, fixed)
        self.strength, self.fixed = strength, fixed


def _reference_sigmas(kdiff, denoiser, name, schedule, steps):
    """A1111's get_sigmas: k-diffusion's own schedule functions where A1111 uses them, ours (checked
    against independent values in test_sampling_schedules.py) for the schedule types k-diffusion lacks."""
    sampling, _ = kdiff
    discard = name in A1111_DISCARDS
    label = A1111_DEFAULT_SCHEDULE.get(name) if schedule == "Automatic" else schedule
    n = steps + (1 if discard else 0)
    sigma_min, sigma_max = float(denoiser.sigmas[0]), float(denoiser.sigmas[-1])
    if label in (None, "Uniform"):
        sigmas = denoiser.get_sigmas(n)
    elif label == "Karras":
        sigmas = sampling.get_sigmas_karras(n, sigma_min, sigma_max)
    elif label == "Exponential":
        sigmas = sampling.get_sigmas_exponential(n, sigma_min, sigma_max)
    elif label == "Polyexponential":
        sigmas = sampling.get_sigmas_polyexponential(n, sigma_min, sigma_max)
    else:
        sigmas = sampler_sigmas(label, n, ModelSigmas(ldm_alphas_cumprod()), discard_next_to_last=False)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


def _img2img_steps(steps, strength, fixed):
    if fixed:
        return int(steps / min(strength, 0.999)), steps - 1
    return steps, int(min(strength, 0.999) * steps)


def _theirs(kdiff, unet, texts, name, schedule, *, prediction="epsilon", start=None, params=None, ensd=0,
            seeds=SEEDS, steps=STEPS, shape=LATENT, cfg=CFG):
    """Final latents of k-diffusion's sampler function as A1111 calls it."""
    sampling, external = kdiff
    cond, uncond = texts
    model = LdmStandIn(unet)
    wrapper = (external.CompVisVDenoiser if prediction == "v_prediction" else external.CompVisDenoiser)(model, quantize=False)
    guidance = A1111Guidance(wrapper, cond, uncond, cfg, start and start.mask, start and start.latents)
    noise = A1111Noise(list(seeds), ensd, shape)
    function_name, options = A1111_FUNCTIONS[name]
    function = getattr(sampling, function_name)
    kwargs = dict(options)
    params = params or {}
    if name in TAKES_ETA:
        kwargs["eta"] = params.get("eta", 1.0)
    if name in TAKES_CHURN:
        kwargs.update(s_churn=params.get("s_churn", 0.0), s_tmin=params.get("s_tmin", 0.0),
                      s_tmax=params.get("s_tmax") or float("inf"))
    if name in TAKES_S_NOISE:
        kwargs["s_noise"] = params.get("s_noise", 1.0)
    original_torch = sampling.torch
    sampling.torch = HijackedTorch(noise)
    try:
        with torch.inference_mode():
            first = noise.next()
            if start is None:
                sigmas = _reference_sigmas(kdiff, wrapper, name, schedule, steps)
                x = first * sigmas[0]
                schedule_run, brownian_x = sigmas, x
                fast = (float(wrapper.sigmas[0]), float(wrapper.sigmas[-1]), steps)
            else:
                total, t_enc = _img2img_steps(steps, start.strength, start.fixed)
                sigmas = _reference_sigmas(kdiff, wrapper, name, schedule, total)
                schedule_run = sigmas[total - t_enc - 1:]
                x = start.latents + first * schedule_run[0]
                brownian_x = start.latents
                fast = (schedule_run[-2], schedule_run[0], len(schedule_run) - 1)
            if name in BROWNIAN:
                kwargs["noise_sampler"] = sampling.BrownianTreeNoiseSampler(
                    brownian_x, sigmas[sigmas > 0].min(), sigmas.max(), seed=list(seeds))
            if name == "DPM fast":
                result = function(guidance, x, fast[0], fast[1], fast[2], **kwargs)
            elif name == "DPM adaptive":
                result = function(guidance, x, fast[0], fast[1], **kwargs)
            else:
                result = function(guidance, x, schedule_run, **kwargs)
            if start is not None and start.mask is not None:
                result = result * (1 - start.mask) + start.latents * start.mask
            return result
    finally:
        sampling.torch = original_torch


# DPM fast and adaptive take only the model's sigma range in txt2img (A1111 gives them no schedule):
# two schedule types show that; the others add nothing but time.
CASES = [(s.name, schedule) for s in K_SAMPLERS if s.name in A1111_FUNCTIONS for schedule in samplers.SCHEDULE_TYPES
         if s.name not in ("DPM fast", "DPM adaptive") or schedule in ("Automatic", "Karras")]


@pytest.mark.parametrize("name, schedule", CASES)
def test_k_sampler_and_schedule_txt2img_epsilon(kdiff, unet, texts, name, schedule):
    sampler, _ = samplers.resolve(name)
    ours = _ours(unet, texts, sampler, schedule)
    theirs = _theirs(kdiff, unet, texts, name, schedule)
    assert relative_difference(ours, theirs) < TOLERANCE


def _lcm_theirs(kdiff, unet, texts, schedule, seeds=SEEDS, steps=STEPS):
    sampling, external = kdiff
    cond, uncond = texts
    wrapper = lcm_reference_wrapper(external, LdmStandIn(unet))
    guidance = A1111Guidance(wrapper, cond, uncond, CFG)
    noise = A1111Noise(list(seeds))
    with torch.inference_mode():
        first = noise.next()
        if schedule == "Automatic":
            sigmas = wrapper.get_sigmas(steps)
        else:
            table = LcmSigmas(ldm_alphas_cumprod())
            sigmas = sampler_sigmas(schedule, steps, table, discard_next_to_last=False)
        x = first * sigmas[0]
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):  # A1111's sample_lcm: jump to the prediction, re-noise
            x = guidance(x, sigmas[i] * s_in)
            if sigmas[i + 1] > 0:
                x = x + sigmas[i + 1] * noise.next()
        return x


@pytest.mark.parametrize("schedule", samplers.SCHEDULE_TYPES)
def test_lcm_with_each_schedule(kdiff, unet, texts, schedule):
    sampler, _ = samplers.resolve("LCM")
    ours = _ours(unet, texts, sampler, schedule)
    assert relative_difference(ours, _lcm_theirs(kdiff, unet, texts, schedule)) < TOLERANCE


@pytest.mark.parametrize("name", sorted(A1111_FUNCTIONS))
def test_v_prediction_with_each_sampler(kdiff, unet, texts, name):
    sampler, _ = samplers.resolve(name)
    ours = _ours(unet, texts, sampler, "Automatic", prediction="v_prediction")
    theirs = _theirs(kdiff, unet, texts, name, "Automatic", prediction="v_prediction")
    assert relative_difference(ours, theirs) < TOLERANCE


def _init_latents():
    return torch.randn((len(SEEDS), *LATENT), generator=torch.Generator().manual_seed(77)) * 0.8


@pytest.mark.parametrize("fixed", [False, True], ids=["steps x strength", "img2img_fix_steps"])
@pytest.mark.parametrize("name", sorted(A1111_FUNCTIONS))
def test_img2img_with_each_sampler(kdiff, unet, texts, name, fixed):
    sampler, _ = samplers.resolve(name)
    start = _Start(_init_latents(), 0.55, fixed)
    ours = _ours(unet, texts, sampler, "Automatic", start=start)
    theirs = _theirs(kdiff, unet, texts, name, "Automatic", start=start)
    assert relative_difference(ours, theirs) < TOLERANCE


def test_inpainting_blend_with_a_mask(kdiff, unet, texts):
    keep = torch.zeros((len(SEEDS), *LATENT))
    keep[..., :4] = 1.0  # the left half is kept
    for name in ("Euler a", "DPM++ 2M"):
        sampler, _ = samplers.resolve(name)
        start = _Start(_init_latents(), 0.75, mask=keep)
        ours = _ours(unet, texts, sampler, "Automatic", start=start)
        theirs = _theirs(kdiff, unet, texts, name, "Automatic", start=start)
        assert relative_difference(ours, theirs) < TOLERANCE
        assert torch.equal(ours[..., :4], start.latents[..., :4])


PARAMETER_CASES = [
    ("Euler a", {"eta": 0.5}), ("DPM2 a", {"eta": 0.4, "s_noise": 0.9}), ("DPM++ 2S a", {"eta": 0.6}),
    ("DPM++ SDE", {"eta": 0.7, "s_noise": 1.05}), ("DPM++ 2M SDE", {"eta": 0.5}), ("DPM++ 3M SDE", {"s_noise": 0.95}),
    ("Euler", {"s_churn": 2.0, "s_tmin": 0.5, "s_tmax": 10.0, "s_noise": 1.01}), ("Heun", {"s_churn": 1.0}),
    ("DPM2", {"s_churn": 1.5, "s_noise": 0.97}), ("DPM fast", {"eta": 0.5, "s_noise": 0.9}),
    ("DPM adaptive", {"eta": 0.0}),
]


@pytest.mark.parametrize("name, params", PARAMETER_CASES, ids=[f"{n}-{p}" for n, p in PARAMETER_CASES])
def test_sampler_parameters_act_as_in_a1111(kdiff, unet, texts, name, params):
    sampler, _ = samplers.resolve(name)
    ours = _ours(unet, texts, sampler, "Automatic", params=params)
    theirs = _theirs(kdiff, unet, texts, name, "Automatic", params=params)
    assert relative_difference(ours, theirs) < TOLERANCE
    plain = _theirs(kdiff, unet, texts, name, "Automatic")
    assert relative_difference(ours, plain) > 1e-3, "the parameter must change the result"


@pytest.mark.parametrize("name", ["Euler a", "DPM++ 2S a", "DPM fast"])
def test_eta_noise_seed_delta_reseeds_the_step_noise(kdiff, unet, texts, name):
    sampler, _ = samplers.resolve(name)
    ours = _ours(unet, texts, sampler, "Automatic", ensd=31337)
    assert relative_difference(ours, _theirs(kdiff, unet, texts, name, "Automatic", ensd=31337)) < TOLERANCE
    assert relative_difference(ours, _theirs(kdiff, unet, texts, name, "Automatic")) > 1e-3


def test_always_discard_next_to_last_sigma(kdiff, unet, texts):
    sampler, _ = samplers.resolve("Euler")
    ours = _ours(unet, texts, sampler, "Karras", always_discard=True)
    # A1111 with the setting on: the Karras schedule for one step more without its next-to-last sigma.
    sampling, external = kdiff
    cond, uncond = texts
    wrapper = external.CompVisDenoiser(LdmStandIn(unet), quantize=False)
    sigmas = sampling.get_sigmas_karras(STEPS + 1, float(wrapper.sigmas[0]), float(wrapper.sigmas[-1]))
    sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    noise = A1111Noise(list(SEEDS))
    with torch.inference_mode():
        theirs = sampling.sample_euler(A1111Guidance(wrapper, cond, uncond, CFG), noise.next() * sigmas[0], sigmas)
    assert relative_difference(ours, theirs) < TOLERANCE


# Timestep samplers.
def _timestep_reference(unet, texts, name, *, prediction="epsilon", start=None, eta=0.0, steps=STEPS):
    cond, uncond = texts
    model = LdmStandIn(unet)
    guidance = a1111_timesteps_ref.EpsGuidance(model, cond, uncond, CFG, prediction)
    noise = A1111Noise(list(SEEDS))
    with torch.inference_mode():
        first = noise.next()
        if start is None:
            timesteps = a1111_timesteps_ref.a1111_timesteps(steps)
            x, run = first, timesteps
            total = steps
        else:
            total, t_enc = _img2img_steps(steps, start.strength, start.fixed)
            timesteps = a1111_timesteps_ref.a1111_timesteps(total)
            alpha = model.alphas_cumprod[timesteps[t_enc]]
            x = start.latents * torch.sqrt(alpha) + first * torch.sqrt(1 - alpha)
            run = timesteps[:t_enc]
        if name == "PLMS":
            return a1111_timesteps_ref.plms(guidance, x, run)
        return a1111_timesteps_ref.ddim(guidance, x, run, total, noise, eta=eta, cfgpp=name == "DDIM CFG++")


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", ["DDIM", "DDIM CFG++", "PLMS"])
def test_timestep_samplers_txt2img(unet, texts, name, prediction):
    sampler, _ = samplers.resolve(name)
    ours = _ours(unet, texts, sampler, "Automatic", prediction=prediction)
    theirs = _timestep_reference(unet, texts, name, prediction=prediction)
    assert relative_difference(ours, theirs) < TOLERANCE
    # A1111 has no schedule types for these: the choice changes nothing.
    assert torch.equal(ours, _ours(unet, texts, sampler, "Karras", prediction=prediction))


def test_ddim_eta_draws_from_the_images_generators(unet, texts):
    sampler, _ = samplers.resolve("DDIM")
    ours = _ours(unet, texts, sampler, "Automatic", params={"eta": 0.5})
    assert relative_difference(ours, _timestep_reference(unet, texts, "DDIM", eta=0.5)) < TOLERANCE
    assert relative_difference(ours, _timestep_reference(unet, texts, "DDIM")) > 1e-3


@pytest.mark.parametrize("img2img", [False, True])
def test_unipc_runs_as_a1111_calls_it(unet, texts, img2img):
    """A1111 gives UniPC as many steps as it has timesteps (10 for 9 asked: 1000 // 9 = 111 fits
    ten times), runs it from t = 1 (img2img: from its last timestep's time) to 1/1000, and feeds
    the model (t - 1/1000) x 1000. (The solver itself is checked against diffusers' UniPC and an
    independent float64 restatement in test_sampling_unipc.py.)"""
    from engine.sampling import timestep_samplers

    sampler, _ = samplers.resolve("UniPC")
    start = _Start(_init_latents(), 0.6) if img2img else None
    ours = _ours(unet, texts, sampler, "Automatic", steps=9, start=start)
    cond, uncond = texts
    model = LdmStandIn(unet)
    guidance = a1111_timesteps_ref.EpsGuidance(model, cond, uncond, CFG)
    noise = A1111Noise(list(SEEDS))
    with torch.inference_mode():
        first = noise.next()
        timesteps = a1111_timesteps_ref.a1111_timesteps(9)
        x = first
        if img2img:
            t_enc = int(0.6 * 9)
            alpha = model.alphas_cumprod[timesteps[t_enc]]
            x = start.latents * torch.sqrt(alpha) + first * torch.sqrt(1 - alpha)
            timesteps = timesteps[:t_enc]
        guidance.alphas_cumprod = model.alphas_cumprod
        theirs = timestep_samplers.unipc(guidance, x, torch.tensor(timesteps), is_img2img=img2img)
    assert relative_difference(ours, theirs) < TOLERANCE


@pytest.mark.parametrize("fixed", [False, True], ids=["steps x strength", "img2img_fix_steps"])
@pytest.mark.parametrize("name", ["DDIM", "PLMS"])
def test_timestep_samplers_img2img(unet, texts, name, fixed):
    sampler, _ = samplers.resolve(name)
    start = _Start(_init_latents(), 0.55, fixed)
    ours = _ours(unet, texts, sampler, "Automatic", start=start)
    assert relative_difference(ours, _timestep_reference(unet, texts, name, start=start)) < TOLERANCE


# SDXL: its own conditioning (pooled text, size and crop ids), the same noise levels; Align
# Your Steps takes the SDXL table.
@pytest.mark.parametrize("name, schedule", [("Euler", "Align Your Steps"), ("DPM++ 2M", "Automatic"),
                                            ("Euler a", "Karras")])
def test_sdxl_with_its_own_table(kdiff, tiny_models, name, schedule):
    sampling, external = kdiff
    unet = tiny_models.reference_pipeline("sdxl").unet.eval()
    generator = torch.Generator().manual_seed(9)
    count = len(SEEDS)
    cond = torch.randn((1, 77, unet.config.cross_attention_dim), generator=generator).expand(count, -1, -1)
    uncond = torch.randn((1, 77, unet.config.cross_attention_dim), generator=generator).expand(count, -1, -1)
    pooled_dim = unet.add_embedding.linear_1.in_features - 6 * unet.config.addition_time_embed_dim
    cond_pooled = torch.randn((1, pooled_dim), generator=generator).expand(count, -1)
    uncond_pooled = torch.randn((1, pooled_dim), generator=generator).expand(count, -1)
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])
    sampler, _ = samplers.resolve(name)
    table = ModelSigmas(ldm_alphas_cumprod())
    denoiser = CFGDenoiser(unet, table, "epsilon", CFG, lambda: Conditioning(cond, uncond, cond_pooled, uncond_pooled),
                           time_ids=time_ids)
    noise = ImageNoise(LATENT, list(SEEDS), source="CPU")
    plan = SamplingPlan(sampler, schedule, STEPS, samplers.sampler_parameters(sampler, _Params(), 1.0), is_sdxl=True)
    with torch.inference_mode():
        ours = BatchSampling(plan, denoiser, noise, SEEDS).run(noise.next())
        wrapper = external.CompVisDenoiser(SdxlStandIn(unet, torch.cat([cond_pooled, uncond_pooled]), time_ids),
                                           quantize=False)
        reference_noise = A1111Noise(list(SEEDS))
        label = A1111_DEFAULT_SCHEDULE.get(name) if schedule == "Automatic" else schedule
        if label == "Align Your Steps":
            ays_sdxl = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]
            xs = np.linspace(0, 1, len(ays_sdxl))
            log_sigmas = np.interp(np.linspace(0, 1, STEPS), xs, np.log(ays_sdxl[::-1]))
            sigmas = torch.FloatTensor(np.append(np.exp(log_sigmas)[::-1].copy(), [0.0]))
        else:
            sigmas = sampling.get_sigmas_karras(STEPS, float(wrapper.sigmas[0]), float(wrapper.sigmas[-1]))
        original_torch = sampling.torch
        sampling.torch = HijackedTorch(reference_noise)
        try:
            x = reference_noise.next() * sigmas[0]
            theirs = getattr(sampling, A1111_FUNCTIONS[name][0])(
                A1111Guidance(wrapper, cond, uncond, CFG), x, sigmas)
        finally:
            sampling.torch = original_torch
    assert relative_difference(ours, theirs) < TOLERANCE


@pytest.mark.parametrize("steps, schedule", [(6, "Automatic"), (24, "Automatic"), (24, "Exponential")])
def test_restart_sampler(kdiff, unet, texts, steps, schedule):
    sampling, external = kdiff
    sampler, _ = samplers.resolve("Restart")
    ours = _ours(unet, texts, sampler, schedule, steps=steps)
    cond, uncond = texts
    wrapper = external.CompVisDenoiser(LdmStandIn(unet), quantize=False)
    sigma_min, sigma_max = float(wrapper.sigmas[0]), float(wrapper.sigmas[-1])
    if schedule == "Automatic":  # Restart's own: Karras
        sigmas = sampling.get_sigmas_karras(steps, sigma_min, sigma_max)
    else:
        sigmas = sampling.get_sigmas_exponential(steps, sigma_min, sigma_max)
    noise = A1111Noise(list(SEEDS))
    with torch.inference_mode():
        x = noise.next() * sigmas[0]
        theirs = restart_reference(kdiff, A1111Guidance(wrapper, cond, uncond, CFG), x, sigmas, noise)
    assert relative_difference(ours, theirs) < TOLERANCE


def test_engine_txt2img_and_hires_fix_sample_as_a1111(engine, kdiff, monkeypatch):
    """A whole job through the engine (prompts encoded, batch of two, hires fix): each pass's final
    latents equal A1111's for the conditioning, seeds and init latents that pass used."""
    from engine.request import GenerationRequest

    passes = []
    original = BatchSampling.run

    def recording(self, first_noise, start=None):
        out = original(self, first_noise, start)
        passes.append((self, start, out))
        return out

    monkeypatch.setattr(BatchSampling, "run", recording)
    request = GenerationRequest(prompt="a red cube", negative_prompt="blurry", steps=5, width=64, height=64,
                                sampler_name="DPM++ 2M", seed=11, batch_size=2, randn_source="CPU", cfg_scale=6.0,
                                save_images=False, save_grid=False,
                                extensions={"hires_fix": {"enabled": True, "denoising_strength": 0.6}})
    engine.generate(request)
    unet = engine.models.current.base.unet
    assert len(passes) == 3  # the batch of two, then each image's hires pass
    first, *hires = passes
    texts = first[0].denoiser.conditioning()
    theirs = _theirs(kdiff, unet, (texts.cond, texts.uncond), "DPM++ 2M", "Automatic", seeds=(11, 12), steps=5, cfg=6.0)
    assert relative_difference(first[2], theirs) < TOLERANCE
    for seed, (sampling, start, out) in zip((11, 12), hires):
        texts = sampling.denoiser.conditioning()
        assert start.fixed_steps and start.latents.shape[-2:] == (16, 16)
        theirs = _theirs(kdiff, unet, (texts.cond, texts.uncond), "DPM++ 2M", "Automatic", seeds=(seed,), steps=5,
                         shape=(4, 16, 16), cfg=6.0, start=_Start(start.latents, 0.6, fixed=True))
        assert relative_difference(out, theirs) < TOLERANCE
