"""DDIM, DDIM CFG++ and PLMS as A1111 v1.10.1 runs them (engine.sampling.timestep_samplers; UniPC:
tests/test_sampling_unipc.py).

Every sampler is checked against references written here independently, in float64 and in a
different arrangement of the formulas (loops over pairs of timesteps, Python floats, series for
UniPC's phi functions, numpy solves), and, where diffusers computes the same thing, against
diffusers' schedulers. The samplers are also run in float64 against the float64 references, which
pins the algorithm far below float32 noise; the float32 runs must stay within 1e-5 (relative to the
largest value) of them, the precision the project asks of A1111 parity.

The model is a deterministic toy epsilon predictor (smooth and nonlinear in x and t, with cond and
uncond branches combined by classifier-free guidance), over SD 1.x's alphas_cumprod.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, PNDMScheduler

from engine.sampling import timestep_samplers as ts

SHAPE = (2, 4, 8, 8)
FLOAT32_TOLERANCE = 1e-5
FLOAT64_TOLERANCE = 1e-10


def sd1_alphas_cumprod() -> torch.Tensor:
    """SD 1.x's table as the LDM config builds it: scaled_linear betas 0.00085..0.012 in float64,
    cumulative product, stored as float32."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


class ToyEps:
    """A guided epsilon model: each branch is the exact epsilon of Gaussian data N(0, 0.8^2) under
    a smooth stand-in schedule, plus a nonlinear term; cond differs from uncond by another one."""

    def __init__(self, dtype: torch.dtype = torch.float32, cfg_scale: float = 5.0, same_branches: bool = False):
        self.alphas_cumprod = sd1_alphas_cumprod().to(dtype)
        self.cfg_scale = cfg_scale
        self.same_branches = same_branches
        self.cond_scale_multiplier = 1.0
        self.need_last_noise_uncond = False
        self.last_noise_uncond = None
        self.calls: list[tuple[torch.Tensor, float]] = []

    def _uncond(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = (t.to(x.dtype) / 1000.0)[:, None, None, None]
        alpha = torch.exp(-5.4 * s ** 1.7)
        gaussian = torch.sqrt(1 - alpha) * x / (alpha * 0.64 + 1 - alpha)
        return gaussian + 0.1 * torch.sin(1.5 * x.roll(1, dims=1) + 3.0 * s)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (x.shape[0],) and t.is_floating_point()
        self.calls.append((t.clone(), self.cond_scale_multiplier))
        uncond = self._uncond(x, t)
        cond = uncond
        if not self.same_branches:
            cond = uncond + 0.08 * torch.tanh(x + 0.5) * (t.to(x.dtype) / 1000.0)[:, None, None, None]
        if self.need_last_noise_uncond:
            self.last_noise_uncond = uncond.clone()
        return uncond + (cond - uncond) * (self.cfg_scale * self.cond_scale_multiplier)


def start_noise(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(1234)).to(dtype)


def step_noises(count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(99)
    return [torch.randn(SHAPE, generator=generator) for _ in range(count)]


class Draws:
    """A noise sampler handing out a pre-drawn sequence (and counting what was taken)."""

    def __init__(self, noises: list[torch.Tensor], dtype: torch.dtype = torch.float32):
        self.noises = [n.to(dtype) for n in noises]
        self.taken = 0

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        noise = self.noises[self.taken]
        self.taken += 1
        return noise


def relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).abs().max() / expected.double().abs().max())


def full_batch(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.full((like.shape[0],), value, dtype=like.dtype)


# ---------------------------------------------------------------------------------------------
# Timesteps and img2img start
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps, expected", [
    (10, [1 + 100 * k for k in range(10)]),
    (20, [1 + 50 * k for k in range(20)]),
    # 1000 // 7 = 142 fits eight times below 1000: eight timesteps for seven steps.
    (7, [1, 143, 285, 427, 569, 711, 853, 995]),
    # 0, 333, 666, 999 shifted by one and clipped at 999.
    (3, [1, 334, 667, 999]),
])
def test_timesteps_for(steps, expected):
    timesteps = ts.timesteps_for(steps)
    assert timesteps.dtype == torch.int64
    assert timesteps.tolist() == expected


def test_timesteps_for_discarding_plans_one_step_more():
    assert ts.timesteps_for(10, discard_next_to_last=True).tolist() == [1 + 90 * k for k in range(12)]
    assert ts.timesteps_for(20, True).tolist() == ts.timesteps_for(21).tolist()


def test_img2img_start_noises_to_t_enc_and_runs_the_timesteps_below():
    alphas = sd1_alphas_cumprod()
    x_init = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    noise = start_noise()
    timesteps = ts.timesteps_for(20)
    x, running = ts.img2img_start(x_init, noise, timesteps, 10, alphas)
    a = float(alphas[501])
    expected = x_init.double() * math.sqrt(a) + noise.double() * math.sqrt(1 - a)
    assert relative_difference(x, expected) < 1e-6
    assert running.tolist() == [1 + 50 * k for k in range(10)]

    extra, _ = ts.img2img_start(x_init, noise, timesteps, 10, alphas, extra_noise=0.25)
    assert relative_difference(extra, expected + noise.double() * 0.25 * math.sqrt(a)) < 1e-6


# ---------------------------------------------------------------------------------------------
# DDIM and DDIM CFG++
# ---------------------------------------------------------------------------------------------

def reference_ddim(model: ToyEps, x: torch.Tensor, timesteps, eta: float, noises, cfgpp: bool = False) -> torch.Tensor:
    """Song et al.'s generalized step from each timestep to the next lower one, over A1111's
    timesteps from the top; CFG++ re-noises along the unconditional epsilon. Float64 throughout."""
    table = [float(a) for a in model.alphas_cumprod.double()]
    visited = [int(t) for t in timesteps]
    pairs = list(zip(visited[:0:-1], visited[-2::-1]))  # (t, t below) from the top down
    if cfgpp:
        model.cond_scale_multiplier, model.need_last_noise_uncond = 1 / 12.5, True
    x = x.double()
    for (t, below), noise in zip(pairs, noises):
        a, a_below = table[t], table[below]
        eps = model(x, full_batch(float(t), x))
        direction = model.last_noise_uncond if cfgpp else eps
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        sigma = eta * math.sqrt((1 - a_below) / (1 - a) * (1 - a / a_below))
        x = math.sqrt(a_below) * x0 + math.sqrt(1 - a_below - sigma ** 2) * direction + sigma * noise.double()
    return x


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("steps", [20, 7])
def test_ddim_equals_the_reference(eta, steps):
    timesteps = ts.timesteps_for(steps)
    noises = step_noises(len(timesteps))
    expected = reference_ddim(ToyEps(torch.float64), start_noise(), timesteps, eta, noises)

    result = ts.ddim(ToyEps(), start_noise(), timesteps, noise_sampler=Draws(noises), eta=eta)
    assert result.dtype == torch.float32
    assert relative_difference(result, expected) < FLOAT32_TOLERANCE

    exact = ts.ddim(ToyEps(torch.float64), start_noise(torch.float64), timesteps,
                    noise_sampler=Draws(noises, torch.float64), eta=eta)
    assert relative_difference(exact, expected) < FLOAT64_TOLERANCE


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_equals_diffusers_over_the_steps_a1111_runs(eta):
    """diffusers' DDIM with "leading" spacing and offset 1 visits A1111's timesteps 951, 901, ...,
    1; A1111 stops before the step from 1, so its result is diffusers' after 19 of 20 steps."""
    alphas = sd1_alphas_cumprod()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              timestep_spacing="leading")
    scheduler.alphas_cumprod = alphas.clone()
    scheduler.set_timesteps(20)
    timesteps = ts.timesteps_for(20)
    assert scheduler.timesteps.tolist() == timesteps.flip(0).tolist()
    noises = step_noises(20)

    model, x = ToyEps(), start_noise()
    for k, t in enumerate(scheduler.timesteps[:19]):
        eps = model(x, full_batch(float(t), x))
        x = scheduler.step(eps, t, x, eta=eta, variance_noise=noises[k]).prev_sample

    result = ts.ddim(ToyEps(), start_noise(), timesteps, noise_sampler=Draws(noises), eta=eta)
    assert relative_difference(result, x) < FLOAT32_TOLERANCE


def test_ddim_stops_at_timestep_1_one_call_per_step_and_draws_noise_every_step():
    """With an oracle epsilon, deterministic DDIM lands exactly on the forward process at its last
    timestep: timestep 1, not the clean latents."""
    alphas = sd1_alphas_cumprod().double()
    clean = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    noise = start_noise(torch.float64)

    class Oracle(ToyEps):
        def __call__(self, x, t):
            self.calls.append((t.clone(), 1.0))
            return noise

    oracle = Oracle(torch.float64)
    timesteps = ts.timesteps_for(10)
    top = float(alphas[int(timesteps[-1])])
    draws = Draws(step_noises(10), torch.float64)
    result = ts.ddim(oracle, clean * math.sqrt(top) + noise * math.sqrt(1 - top), timesteps, noise_sampler=draws)
    a1 = float(alphas[1])
    assert relative_difference(result, clean * math.sqrt(a1) + noise * math.sqrt(1 - a1)) < 1e-12
    assert [float(t[0]) for t, _ in oracle.calls] == [901.0, 801.0, 701.0, 601.0, 501.0, 401.0, 301.0, 201.0, 101.0]
    assert draws.taken == 9  # eta 0 included, as A1111 draws every step


def test_ddim_eta_noise_level_keeps_a1111_rounding():
    """The eta noise level is float64 arithmetic on float32 alphas, with 1/(1 - alpha) rounded in
    float32 first (the reflected division of a float32 tensor)."""
    alphas = sd1_alphas_cumprod()
    timesteps = ts.timesteps_for(20)
    constants = ts._step_constants(alphas, timesteps, 0.7)
    for k in range(1, len(timesteps)):
        a32 = np.float32(alphas[int(timesteps[k])])
        below = np.float64(np.float32(alphas[int(timesteps[k - 1])]))
        inverse = np.float64(np.float32(1) / (np.float32(1) - a32))
        expected = 0.7 * math.sqrt(inverse * (1 - below) * (1 - np.float64(a32) / below))
        assert constants[k].eta_sigma == expected
        assert constants[k].alpha_prev == float(below)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_cfgpp_equals_the_reference(eta):
    timesteps = ts.timesteps_for(20)
    noises = step_noises(20)
    expected = reference_ddim(ToyEps(torch.float64), start_noise(), timesteps, eta, noises, cfgpp=True)

    model = ToyEps()
    result = ts.ddim_cfgpp(model, start_noise(), timesteps, noise_sampler=Draws(noises), eta=eta)
    assert relative_difference(result, expected) < FLOAT32_TOLERANCE
    assert all(multiplier == 1 / 12.5 for _, multiplier in model.calls)
    assert (model.cond_scale_multiplier, model.need_last_noise_uncond) == (1.0, False)

    exact = ts.ddim_cfgpp(ToyEps(torch.float64), start_noise(torch.float64), timesteps,
                          noise_sampler=Draws(noises, torch.float64), eta=eta)
    assert relative_difference(exact, expected) < FLOAT64_TOLERANCE


def test_ddim_cfgpp_is_ddim_when_guidance_changes_nothing():
    timesteps = ts.timesteps_for(10)
    noises = step_noises(10)
    plain = ts.ddim(ToyEps(same_branches=True), start_noise(), timesteps, noise_sampler=Draws(noises), eta=0.3)
    cfgpp = ts.ddim_cfgpp(ToyEps(same_branches=True), start_noise(), timesteps, noise_sampler=Draws(noises), eta=0.3)
    assert torch.equal(plain, cfgpp)


# ---------------------------------------------------------------------------------------------
# PLMS
# ---------------------------------------------------------------------------------------------

ADAMS_BASHFORTH = {1: (1.5, -0.5), 2: (23 / 12, -16 / 12, 5 / 12), 3: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def reference_plms(model: ToyEps, x: torch.Tensor, timesteps) -> torch.Tensor:
    """Liu et al.'s PLMS in float64: the transfer x_t -> x_t' written as
    sqrt(a'/a) x + (sqrt(1 - a') - sqrt(a' (1 - a) / a)) eps, a Heun-like first step and
    Adams-Bashforth weights on the current and up to three earlier epsilons."""
    table = [float(a) for a in model.alphas_cumprod.double()]
    visited = [int(t) for t in timesteps]
    pairs = list(zip(visited[:0:-1], visited[-2::-1]))
    x = x.double()
    earlier: list[torch.Tensor] = []

    def transfer(x, eps, t, below):
        a, a_below = table[t], table[below]
        return math.sqrt(a_below / a) * x + (math.sqrt(1 - a_below) - math.sqrt(a_below * (1 - a) / a)) * eps

    for k, (t, below) in enumerate(pairs):
        eps = model(x, full_batch(float(t), x))
        if k == 0:
            slope = (eps + model(transfer(x, eps, t, below), full_batch(float(below), x))) / 2
        else:
            weights = ADAMS_BASHFORTH[min(k, 3)]
            recent = [eps] + earlier[::-1]
            slope = sum(w * e for w, e in zip(weights, recent))
        x = transfer(x, slope, t, below)
        earlier = (earlier + [eps])[-3:]
    return x


@pytest.mark.parametrize("steps", [20, 7])
def test_plms_equals_the_reference(steps):
    timesteps = ts.timesteps_for(steps)
    expected = reference_plms(ToyEps(torch.float64), start_noise(), timesteps)
    model = ToyEps()
    result = ts.plms(model, start_noise(), timesteps, noise_sampler=Draws([]))
    assert relative_difference(result, expected) < FLOAT32_TOLERANCE
    assert len(model.calls) == len(timesteps)  # len - 1 steps plus the improved-Euler call

    exact = ts.plms(ToyEps(torch.float64), start_noise(torch.float64), timesteps, noise_sampler=Draws([]))
    assert relative_difference(exact, expected) < FLOAT64_TOLERANCE


def test_plms_equals_diffusers_pndm_over_the_steps_a1111_runs():
    """diffusers' PNDM without Runge-Kutta steps is PLMS with the same improved-Euler start (its
    timestep list repeats 901 for the second call); A1111 stops before diffusers' step from 1."""
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
                              timestep_spacing="leading")
    scheduler.alphas_cumprod = sd1_alphas_cumprod()
    scheduler.set_timesteps(20)
    model, x = ToyEps(), start_noise()
    for t in scheduler.timesteps[:20]:
        x = scheduler.step(model(x, full_batch(float(t), x)), t, x).prev_sample

    ours = ToyEps()
    result = ts.plms(ours, start_noise(), ts.timesteps_for(20), noise_sampler=Draws([]))
    assert relative_difference(result, x) < FLOAT32_TOLERANCE
    assert [float(t[0]) for t, _ in ours.calls] == [float(t) for t in scheduler.timesteps[:20]]


def test_callbacks_of_ddim_and_plms_report_x0_each_step():
    for sampler in (ts.ddim, ts.plms):
        seen = []
        ts_list = ts.timesteps_for(10)
        sampler(ToyEps(), start_noise(), ts_list, noise_sampler=Draws(step_noises(10)), callback=seen.append)
        assert [info["i"] for info in seen] == list(range(9))
        assert all(info["denoised"].shape == SHAPE for info in seen)


def test_registry_names_the_four_samplers():
    assert ts.TIMESTEP_SAMPLERS == {"DDIM": ts.ddim, "DDIM CFG++": ts.ddim_cfgpp, "PLMS": ts.plms, "UniPC": ts.unipc}
