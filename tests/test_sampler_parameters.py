"""The sampler parameters client programs send (eta, s_churn, s_tmin, s_tmax, s_noise,
s_min_uncond, ENSD): each acts on the samplers the mature UI gives it to, is written in the
infotext under its usual key, and is reported when this version's sampler cannot use it."""

from __future__ import annotations

import numpy as np
import pytest

from engine.sampling import samplers
from engine.output.infotext import parse
from engine.request import GenerationRequest

BASE = GenerationRequest(prompt="a red cube", negative_prompt="blurry", steps=4, width=64, height=64,
                         sampler_name="Euler a", seed=4242, save_images=False, save_grid=False)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def params_of(result) -> dict:
    return parse(result.infotexts[0])[2]


def test_ensd_changes_the_step_noise_and_is_written(engine):
    """ENSD re-seeds the step noise (seed + delta; the numbers are checked against A1111's in
    test_a1111_sampling_reference.py): another picture, and the infotext says so."""
    ours = engine.generate(BASE.replace(eta_noise_seed_delta=31337))
    assert params_of(ours)["ENSD"] == "31337"
    plain = engine.generate(BASE)
    assert "ENSD" not in params_of(plain)
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
    result = engine.generate(BASE.replace(sampler_name="DPM++ 2M", eta=0.5))
    assert any("Eta: not used by the DPM++ 2M sampler" in w for w in result.warnings)
    assert "Eta" not in params_of(result)
    sde = engine.generate(BASE.replace(sampler_name="DPM++ 2M SDE", eta=0.5))
    assert float(params_of(sde)["Eta"]) == 0.5 and not sde.warnings
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
    assert len(by_name) == 20
    assert by_name["Euler a"].uses == {samplers.ETA} and by_name["Euler a"].uses_ensd
    assert by_name["Euler"].uses == {samplers.CHURN, samplers.NOISE}
    assert by_name["DDIM"].eta_setting == "eta_ddim" and by_name["DDIM"].eta_default == 0.0
    assert not by_name["LMS"].uses and not by_name["DPM++ 2M"].uses
    assert {name for name, s in by_name.items() if s.discards} == {"DPM2", "DPM2 a", "DPM++ 3M SDE"}
    assert {name for name, s in by_name.items() if s.brownian} == {
        "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"}
    assert by_name["DPM++ 2M SDE"].default_schedule == "Exponential"
    assert len(samplers.SCHEDULE_TYPES) == 12


@pytest.mark.parametrize("field, value", [("eta", -1.0), ("s_noise", 9.0), ("s_churn", float("nan")),
                                          ("eta_noise_seed_delta", -5)])
def test_out_of_range_parameters_are_refused(field, value):
    from engine.errors import RequestError
    with pytest.raises(RequestError) as caught:
        BASE.replace(**{field: value}).validate()
    assert caught.value.field == field


def test_discarding_the_next_to_last_sigma_is_written(engine):
    """The schedule itself is checked in test_sampling_schedules.py and against k-diffusion in
    test_a1111_sampling_reference.py; here: the setting reaches the job and the infotext."""
    plain = engine.generate(BASE.replace(sampler_name="Euler"))
    with engine.settings.overridden({"always_discard_next_to_last_sigma": True}):
        result = engine.generate(BASE.replace(sampler_name="Euler"))
        heun = engine.generate(BASE.replace(sampler_name="Heun"))
    assert params_of(result)["Discard penultimate sigma"] == "True"
    assert params_of(heun)["Discard penultimate sigma"] == "True"
    assert np.abs(pixels(plain.images[0]) - pixels(result.images[0])).max() > 0
    # DPM2 discards by default: nothing written.
    assert "Discard penultimate sigma" not in params_of(engine.generate(BASE.replace(sampler_name="DPM2")))


def test_schedule_settings_act_and_are_written_as_a1111_writes_them(engine):
    karras = BASE.replace(sampler_name="Euler", scheduler="Karras")
    plain = engine.generate(karras)
    with engine.settings.overridden({"sigma_max": 10.0, "rho": 5.0, "sgm_noise_multiplier": True}):
        changed = engine.generate(karras)
    params = params_of(changed)
    assert params["Schedule max sigma"] == "10" and params["Schedule rho"] == "5"
    assert params["SGM noise multiplier"] == "True"
    assert np.abs(pixels(plain.images[0]) - pixels(changed.images[0])).max() > 5
    for key in ("Schedule max sigma", "Schedule rho", "SGM noise multiplier"):
        assert key not in params_of(plain)
    beta = params_of(engine.generate(BASE.replace(sampler_name="Euler", scheduler="Beta")))
    assert beta["Beta schedule alpha"] == "0.6" and beta["Schedule type"] == "Beta"
