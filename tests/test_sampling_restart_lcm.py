"""A1111's own Restart and LCM samplers, which k-diffusion lacks, against restatements of A1111's
algorithms written here from its description, on the toy denoiser, schedules and shared
randomness of tests/test_sampling_k_samplers.py (final latents within 1e-5, the same callbacks)."""

from __future__ import annotations

import pytest

from engine.sampling import k_samplers as ours
from tests import test_sampling_k_samplers
from tests.test_sampling_k_samplers import (
    SCHEDULES,
    HijackedTorch,
    Recorder,
    StepNoise,
    ToyDenoiser,
    as_a1111_runs,
    assert_matches,
    assert_same_callbacks,
    karras,
    start_latents,
)

sampling = test_sampling_k_samplers.sampling   # the k-diffusion reference, a module fixture



def a1111_restart(sampling, model, x, sigmas, randn_like, callback, s_noise=1.0, restart_list=None):
    """A1111's restart_sampler restated: Heun steps (Euler into 0) over a step list; with no
    restart_list and 20+ steps, 9 steps (36+: a quarter of the steps, twice) go to restarts at
    sigma 0.1 climbing to sigma 2, and the rest become a Karras schedule between sigmas[-2] and
    sigmas[0]; each restart is a Karras sub-schedule (its final 0 dropped) from the sigma nearest
    the restart's own up to the one nearest its top; noise lifts x whenever the list climbs."""
    step_id = 0

    def heun(x, old_sigma, new_sigma):
        nonlocal step_id
        ones = x.new_ones([x.shape[0]])
        denoised = model(x, old_sigma * ones)
        d = sampling.to_d(x, old_sigma, denoised)
        callback({"x": x, "i": step_id, "sigma": new_sigma, "sigma_hat": old_sigma, "denoised": denoised})
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = sampling.to_d(x_2, new_sigma, model(x_2, new_sigma * ones))
            x = x + (d + d_2) / 2 * dt
        step_id += 1
        return x

    steps = len(sigmas) - 1
    if restart_list is None:
        restart_list = {}
        if steps >= 20:
            restart_steps = steps // 4 if steps >= 36 else 9
            restart_times = 2 if steps >= 36 else 1
            sigmas = sampling.get_sigmas_karras(steps - restart_steps * restart_times, sigmas[-2].item(),
                                                sigmas[0].item())
            restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
    by_index = {int((sigmas - key).abs().argmin()): value for key, value in restart_list.items()}
    pairs = []
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in by_index:
            count, times, top = by_index[i + 1]
            top_index = int((sigmas - top).abs().argmin())
            if top_index < i + 1:
                sub = sampling.get_sigmas_karras(count, sigmas[i + 1].item(), sigmas[top_index].item())[:-1]
                pairs += [(sub[k], sub[k + 1]) for k in range(len(sub) - 1)] * times
    previous = None
    for old_sigma, new_sigma in pairs:
        if previous is not None and previous < old_sigma:
            x = x + randn_like(x) * s_noise * (old_sigma ** 2 - previous ** 2) ** 0.5
        x = heun(x, old_sigma, new_sigma)
        previous = new_sigma
    return x, len(pairs)


RESTART_CASES = {
    "restart 10 steps (no restarts)": (10, {}),
    "restart 24 steps": (24, {}),
    "restart 40 steps": (40, {}),
    "restart own list": (12, {"restart_list": {0.5: [4, 2, 5.0], 3.0: [3, 1, 9.0]}}),
    "restart s_noise 0.9": (24, {"s_noise": 0.9}),
}


@pytest.mark.parametrize("img2img_pass", [False, True])
@pytest.mark.parametrize("case", list(RESTART_CASES))
def test_restart_matches_a1111(sampling, case, img2img_pass):
    steps, kwargs = RESTART_CASES[case]
    sigmas = karras(sampling, steps)
    if img2img_pass:
        sigmas = sigmas[steps // 3:]
    model = ToyDenoiser()
    x = start_latents(sigmas)
    my_noise, their_noise = StepNoise(), StepNoise()
    my_calls, their_calls = Recorder(), Recorder()
    mine = ours.sample_restart(model, x.clone(), sigmas, noise_sampler=my_noise.sampler(), callback=my_calls,
                               **kwargs)
    with as_a1111_runs(sampling, their_noise):
        theirs, segments = a1111_restart(sampling, model, x.clone(), sigmas, sampling.torch.randn_like,
                                         their_calls, **kwargs)
    assert_matches(case, mine, theirs)
    assert my_noise.used == their_noise.used
    assert len(my_calls.calls) == segments
    assert_same_callbacks(my_calls, their_calls)
    if len(sigmas) - 1 >= 20 or (case == "restart own list" and not img2img_pass):
        assert my_noise.used > 0  # restarts did happen


def test_restart_without_restarts_is_heun(sampling):
    """Under 20 steps Restart is plain Heun: k-diffusion's sample_heun gives the same latents."""
    sigmas = karras(sampling, 12)
    model = ToyDenoiser()
    x = start_latents(sigmas)
    mine = ours.sample_restart(model, x.clone(), sigmas, noise_sampler=StepNoise().sampler())
    with as_a1111_runs(sampling, StepNoise()):
        theirs = sampling.sample_heun(model, x.clone(), sigmas, disable=True)
    assert_matches("restart 12 steps vs k-diffusion heun", mine, theirs)


def test_restart_segments_of_the_automatic_plan(sampling):
    sigmas = karras(sampling, 24)
    segments = ours.restart_segments(sigmas)
    assert len(segments) == (24 - 9) + 9  # 15 main steps, one restart of 10 levels (9 steps)
    climbs = [i for i in range(1, len(segments)) if segments[i][0] > segments[i - 1][1]]
    assert len(climbs) == 1 and float(segments[climbs[0]][0]) == pytest.approx(2, rel=0.3)


def a1111_lcm(model, x, sigmas, randn_like, callback):
    """A1111's sample_lcm restated: take the prediction, re-noise it to the next sigma."""
    ones = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * ones)
        callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * randn_like(x)
    return x


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_lcm_matches_a1111(sampling, schedule):
    sigmas = SCHEDULES[schedule](sampling)
    model = ToyDenoiser()
    x = start_latents(sigmas)
    my_noise, their_noise = StepNoise(), StepNoise()
    my_calls, their_calls = Recorder(), Recorder()
    mine = ours.sample_lcm(model, x.clone(), sigmas, noise_sampler=my_noise.sampler(), callback=my_calls)
    theirs = a1111_lcm(model, x.clone(), sigmas, HijackedTorch(their_noise).randn_like, their_calls)
    assert_matches("lcm", mine, theirs)
    assert my_noise.used == their_noise.used == len(sigmas) - 2
    assert_same_callbacks(my_calls, their_calls)
