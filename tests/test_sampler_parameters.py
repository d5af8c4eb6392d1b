"""The sampler parameters client programs send (eta, s_churn, s_tmin, s_tmax, s_noise,
s_min_uncond, ENSD): each acts on the samplers the mature UI gives it to, is written in the
infotext under its usual key, and is reported when this version's sampler cannot use it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler

from engine import samplers
from engine.infotext import parse
from engine.request import GenerationRequest
from engine.seeds import cpu_noise

BASE = GenerationRequest(prompt="a red cube", negative_prompt="blurry", steps=4, width=64, height=64,
                         sampler_name="Euler a", seed=4242, save_images=False, save_grid=False)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def params_of(result) -> dict:
    return parse(result.infotexts[0])[2]


def _plain_diffusers_euler_a(engine, seed: int, generator_seed: int, skip_draws: int = 0):
    """The same job through diffusers' own pipeline and Euler a, with step noise from a generator
    seeded with `generator_seed` (after `skip_draws` draws of one image's latent)."""
    model = engine.models.current
    pipe = model.base
    # Euler a's own schedule is the Uniform one: timesteps evenly spaced from the last.
    scheduler = EulerAncestralDiscreteScheduler.from_config(model.scheduler_config, timestep_spacing="linspace")
    original, pipe.scheduler = pipe.scheduler, scheduler
    generator = torch.Generator().manual_seed(generator_seed)
    for _ in range(skip_draws):
        torch.randn((4, 8, 8), generator=generator)
    try:
        return pipe(prompt=BASE.prompt, negative_prompt=BASE.negative_prompt, num_inference_steps=BASE.steps,
                    guidance_scale=BASE.cfg_scale, latents=cpu_noise(seed, (4, 8, 8))[None],
                    generator=[generator], output_type="pil").images[0]
    finally:
        pipe.scheduler = original


def test_step_noise_carries_on_from_the_seed_as_the_mature_ui_draws_it(engine):
    """Without ENSD the image's own generator draws the step noise after the starting noise."""
    ours = engine.generate(BASE)
    reference = _plain_diffusers_euler_a(engine, 4242, 4242, skip_draws=1)
    assert np.abs(pixels(ours.images[0]) - pixels(reference)).max() <= 1
    assert "ENSD" not in params_of(ours)


def test_ensd_seeds_the_step_noise_with_seed_plus_delta(engine):
    ours = engine.generate(BASE.replace(eta_noise_seed_delta=31337))
    reference = _plain_diffusers_euler_a(engine, 4242, 4242 + 31337)
    assert np.abs(pixels(ours.images[0]) - pixels(reference)).max() <= 1
    assert params_of(ours)["ENSD"] == "31337"
    plain = engine.generate(BASE)
    assert np.abs(pixels(plain.images[0]) - pixels(ours.images[0])).max() > 5


def test_ensd_from_override_settings_and_the_setting(engine):
    with engine.settings.overridden({"eta_noise_seed_delta": 31337}):
        request = engine.complete(BASE)
    assert request.eta_noise_seed_delta == 31337
    assert engine.complete(BASE).eta_noise_seed_delta == 0


def test_euler_a_at_eta_0_is_euler(engine):
    """No fresh noise at eta 0: the ancestral step is then exactly Euler's."""
    ancestral = engine.generate(BASE.replace(eta=0.0))
    euler = engine.generate(BASE.replace(sampler_name="Euler"))
    assert np.abs(pixels(ancestral.images[0]) - pixels(euler.images[0])).max() <= 1
    assert float(params_of(ancestral)["Eta"]) == 0.0
    half = engine.generate(BASE.replace(eta=0.5))
    assert np.abs(pixels(half.images[0]) - pixels(ancestral.images[0])).max() > 5
    assert "Eta" not in params_of(engine.generate(BASE.replace(eta=1.0)))  # the default: not written


def test_eta_ancestral_setting_is_euler_as_default_eta(engine):
    with engine.settings.overridden({"eta_ancestral": 0.0}):
        request = engine.complete(BASE)
        policy = engine._policy(request, True)
    assert policy.run.eta_defaults["eta_ancestral"] == 0.0


def test_ddim_eta(engine):
    ddim = BASE.replace(sampler_name="DDIM")
    plain = engine.generate(ddim)
    noisy = engine.generate(ddim.replace(eta=0.6))
    assert np.abs(pixels(plain.images[0]) - pixels(noisy.images[0])).max() > 5
    assert float(params_of(noisy)["Eta DDIM"]) == 0.6 and "Eta DDIM" not in params_of(plain)


def test_sigma_churn_on_euler(engine):
    euler = BASE.replace(sampler_name="Euler")
    plain = engine.generate(euler)
    churned = engine.generate(euler.replace(s_churn=2.0))
    assert np.abs(pixels(plain.images[0]) - pixels(churned.images[0])).max() > 5
    assert float(params_of(churned)["Sigma churn"]) == 2.0
    # Churn only between s_tmin and s_tmax: a window no step falls in changes nothing.
    outside = engine.generate(euler.replace(s_churn=2.0, s_tmin=500.0, s_tmax=600.0))
    assert np.abs(pixels(plain.images[0]) - pixels(outside.images[0])).max() <= 1


def test_dpm2_a_takes_eta_and_s_noise(engine):
    dpm2a = BASE.replace(sampler_name="DPM2 a")
    plain = engine.generate(dpm2a)
    for change in ({"eta": 0.3}, {"s_noise": 0.5}):
        other = engine.generate(dpm2a.replace(**change))
        assert np.abs(pixels(plain.images[0]) - pixels(other.images[0])).max() > 5, change
    assert float(params_of(engine.generate(dpm2a.replace(s_noise=0.5)))["Sigma noise"]) == 0.5


def test_a_parameter_this_sampler_cannot_use_is_reported(engine):
    result = engine.generate(BASE.replace(sampler_name="DPM++ 2M SDE", eta=0.5))
    assert any("Eta: not used by the DPM++ 2M SDE sampler" in w for w in result.warnings)
    assert "Eta" not in params_of(result)
    # A parameter the sampler does not take at all (in the mature UI either) is just not used.
    quiet = engine.generate(BASE.replace(sampler_name="LMS", s_churn=3.0))
    assert not any("churn" in w.lower() for w in quiet.warnings)


def test_negative_guidance_minimum_sigma_skips_every_other_negative_half(engine):
    seen = []  # the batch each UNet call really runs (its first layer sees it)
    hook = engine.models.current.base.unet.conv_in.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].shape[0]))
    try:
        plain = engine.generate(BASE.replace(sampler_name="Euler"))
        calls = list(seen)
        seen.clear()
        skipping = engine.generate(BASE.replace(sampler_name="Euler", s_min_uncond=100.0))
    finally:
        hook.remove()
    assert calls == [2, 2, 2, 2]
    assert seen == [2, 1, 2, 1]  # odd calls below sigma 100 run on the positive half only
    assert float(params_of(skipping)["NGMS"]) == 100.0
    assert np.abs(pixels(plain.images[0]) - pixels(skipping.images[0])).max() > 0


def test_sampler_table_follows_the_mature_ui():
    by_name = {s.name: s for s in samplers.SAMPLERS}
    assert by_name["Euler a"].uses == {samplers.ETA} and by_name["Euler a"].uses_ensd
    assert by_name["Euler"].uses == {samplers.CHURN, samplers.NOISE}
    assert by_name["DDIM"].eta_setting == "eta_ddim" and by_name["DDIM"].eta_default == 0.0
    assert not by_name["LMS"].uses and not by_name["DPM++ 2M"].uses


@pytest.mark.parametrize("field, value", [("eta", -1.0), ("s_noise", 9.0), ("s_churn", float("nan")),
                                          ("eta_noise_seed_delta", -5)])
def test_out_of_range_parameters_are_refused(field, value):
    from engine.errors import RequestError
    with pytest.raises(RequestError) as caught:
        BASE.replace(**{field: value}).validate()
    assert caught.value.field == field


def test_discarding_the_next_to_last_sigma(engine):
    """As k-diffusion's discard_next_to_last_sigma: the schedule for one step more, without its
    next-to-last sigma (by default for DPM++ 3M SDE; for every sampler with the setting)."""
    config = engine.models.current.scheduler_config
    euler, _ = samplers.resolve("Euler")
    plain = samplers.build_scheduler(euler, "Automatic", config, 1)
    plain.set_timesteps(5)
    dropped = samplers.build_scheduler(euler, "Automatic", config, 1, samplers.SamplerParams(always_discard=True))
    dropped.set_timesteps(4)
    expected = torch.cat([plain.sigmas[:-2], plain.sigmas[-1:]])
    assert torch.equal(dropped.sigmas, expected) and len(dropped.timesteps) == 4
    third, _ = samplers.resolve("DPM++ 3M SDE")
    by_default = samplers.build_scheduler(third, "Automatic", config, 1)
    by_default.set_timesteps(4)
    assert len(by_default.timesteps) == 4 and len(by_default.sigmas) == 5
    with engine.settings.overridden({"always_discard_next_to_last_sigma": True}):
        result = engine.generate(BASE.replace(sampler_name="Euler"))
        heun = engine.generate(BASE.replace(sampler_name="Heun"))
    assert params_of(result)["Discard penultimate sigma"] == "True"
    assert any("Discard penultimate sigma: not used by the Heun" in w for w in heun.warnings)


@pytest.mark.parametrize("name", ["DPM2", "DPM2 a"])
@pytest.mark.parametrize("schedule", ["Karras", "Uniform"])
def test_dpm2_schedules_rebuilt_as_diffusers_builds_them(engine, name, schedule):
    """The rebuilt DPM2 schedule equals diffusers' own for the same sigmas (eta 1, nothing
    dropped), and with the next-to-last sigma dropped equals diffusers' for one step more minus
    that sigma: the rebuild is checked against the reference implementation."""
    import diffusers

    from engine.sampler_schedulers import KDPM2AncestralWithEta, KDPM2WithDiscard

    config = engine.models.current.scheduler_config
    ours_cls = KDPM2AncestralWithEta if name == "DPM2 a" else KDPM2WithDiscard
    theirs_cls = diffusers.KDPM2AncestralDiscreteScheduler if name == "DPM2 a" else diffusers.KDPM2DiscreteScheduler
    flags = {"use_karras_sigmas": schedule == "Karras"}
    reference = theirs_cls.from_config(config, **flags)
    reference.set_timesteps(6)
    ours = ours_cls.from_config(config, **flags)
    ours.discard = False
    ours._rebuild(torch.cat([reference.sigmas[:1], reference.sigmas[1:-1:2]]),
                  torch.cat([reference.timesteps[:1], reference.timesteps[2::2]]))
    for attr in ("sigmas", "sigmas_interpol", "timesteps") + (("sigmas_up", "sigmas_down") if name == "DPM2 a" else ()):
        assert torch.allclose(getattr(ours, attr), getattr(reference, attr).to(getattr(ours, attr).device),
                              equal_nan=True), attr
    dropping = ours_cls.from_config(config, **flags)
    dropping.set_timesteps(5)
    base = torch.cat([reference.sigmas[:1], reference.sigmas[1:-1:2]])
    assert torch.allclose(torch.cat([dropping.sigmas[:1], dropping.sigmas[1:-1:2]]),
                          torch.cat([base[:-2], base[-1:]]))
    assert len(dropping.timesteps) == len(reference.timesteps) - 2  # one step (two calls) fewer


def test_dpm2_a_s_noise_scales_only_the_fresh_noise(engine):
    from engine.sampler_schedulers import KDPM2AncestralWithEta

    config = engine.models.current.scheduler_config
    plain, quiet = KDPM2AncestralWithEta.from_config(config), KDPM2AncestralWithEta.from_config(config)
    quiet.s_noise = 0.5
    plain.set_timesteps(4)
    quiet.set_timesteps(4)
    assert torch.allclose(quiet.sigmas_up, plain.sigmas_up * 0.5, equal_nan=True)
    assert torch.equal(quiet.sigmas, plain.sigmas)
