"""DDIM, DDIM CFG++, PLMS and UniPC as A1111 v1.10.1 runs them (engine.sampling.timestep_samplers).

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
from diffusers import DDIMScheduler, PNDMScheduler, UniPCMultistepScheduler

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


# ---------------------------------------------------------------------------------------------
# UniPC
# ---------------------------------------------------------------------------------------------

class ReferenceSchedule:
    """A1111's continuous-time view of the discrete schedule, in float64: timestep n at
    t = (n+1)/1000 with log alpha interpolated linearly (numpy's interp)."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.grid = np.linspace(0.0, 1.0, 1001)[1:]
        self.log_alphas = 0.5 * np.log(alphas_cumprod.double().numpy())

    def log_alpha(self, t: float) -> float:
        return float(np.interp(t, self.grid, self.log_alphas))

    def alpha(self, t: float) -> float:
        return math.exp(self.log_alpha(t))

    def sigma(self, t: float) -> float:
        return math.sqrt(1 - self.alpha(t) ** 2)

    def log_snr(self, t: float) -> float:
        return math.log(self.alpha(t) / self.sigma(t))

    def time_of_log_snr(self, level: float) -> float:
        log_alpha = -0.5 * math.log1p(math.exp(-2 * level))
        return float(np.interp(log_alpha, self.log_alphas[::-1], self.grid[::-1]))


def reference_times(schedule: ReferenceSchedule, skip_type: str, start: float, steps: int) -> np.ndarray:
    end = 1 / 1000
    if skip_type == "time_uniform":
        return np.linspace(start, end, steps + 1)
    if skip_type == "time_quadratic":
        return np.linspace(math.sqrt(start), math.sqrt(end), steps + 1) ** 2
    levels = np.linspace(schedule.log_snr(start), schedule.log_snr(end), steps + 1)
    return np.array([schedule.time_of_log_snr(level) for level in levels])


def phi_sums(hh: float, count: int) -> list[float]:
    """sum_(n>=1) hh^n / (n+j)! for j = 0..count-1 (the phi functions times powers of hh), by series."""
    return [sum(hh ** n / math.factorial(n + j) for n in range(1, 40)) for j in range(count)]


def reference_unipc(model: ToyEps, x: torch.Tensor, times: np.ndarray, order: int, variant: str,
                    lower_order_final: bool = True) -> torch.Tensor:
    """Zhao et al.'s multistep UniPC on data predictions (x0), float64, one model call per step:
    the exponential-integrator step from the latest x0, corrected by weighted divided
    differences of earlier x0s (predictor UniP) and, except at the last step, of the x0 at the
    predicted point (corrector UniC)."""
    schedule = ReferenceSchedule(model.alphas_cumprod)
    steps = len(times) - 1

    def x0_at(x, t):
        eps = model(x, full_batch((t - 1 / 1000) * 1000, x))
        return (x - schedule.sigma(t) * eps) / schedule.alpha(t)

    x = x.double()
    points = [(times[0], x0_at(x, times[0]))]
    for i in range(1, steps + 1):
        p = i if i < order else (min(order, steps + 1 - i) if lower_order_final else order)
        t = times[i]
        s, x0_s = points[-1]
        h = schedule.log_snr(t) - schedule.log_snr(s)
        hh = -h
        ratios = [(schedule.log_snr(points[-1 - k][0]) - schedule.log_snr(s)) / h for k in range(1, p)]
        divided = [(points[-1 - k][1] - x0_s) / r for k, r in zip(range(1, p), ratios)]
        alpha_t = schedule.alpha(t)
        base = schedule.sigma(t) / schedule.sigma(s) * x + alpha_t * (1 - math.exp(-h)) * x0_s
        phis = phi_sums(hh, p + 2)
        rs = ratios + [1.0]
        last = i == steps
        if variant in ("bh1", "bh2"):
            b_h = hh if variant == "bh1" else math.expm1(hh)
            # Order conditions sum_k rho_k r_k^j = (j+1)! phi_(j+1)... / B(h), j = 0..p-1.
            system = np.array([[r ** j for r in rs] for j in range(p)])
            rhs = np.array([math.factorial(j + 1) * phis[j + 1] / b_h for j in range(p)])
            if p == 1:
                predicted = base
            else:
                rhos = [0.5] if p == 2 else np.linalg.solve(system[:-1, :-1], rhs[:-1])
                predicted = base - alpha_t * b_h * sum(r * d for r, d in zip(rhos, divided))
            if last:
                x = predicted
                break
            x0_t = x0_at(predicted, t)
            rhos = [0.5] if p == 1 else np.linalg.solve(system, rhs)
            x = base - alpha_t * b_h * (sum(r * d for r, d in zip(rhos[:-1], divided)) + rhos[-1] * (x0_t - x0_s))
        else:
            # UniPC-v: weights from the inverse of the Taylor matrix C[i][k] = r_i^k / (k+1)!.
            taylor = np.array([[r ** k / math.factorial(k + 1) for k in range(p)] for r in rs])
            predicted = base
            if p > 1:
                inverse = np.linalg.inv(taylor[:-1, :-1])
                for k in range(p - 1):
                    predicted = predicted - alpha_t * phis[k + 1] * sum(w * d for w, d in zip(inverse[k], divided))
            if last:
                x = predicted
                break
            x0_t = x0_at(predicted, t)
            inverse = np.linalg.inv(taylor)
            x = base
            for k in range(p - 1):
                x = x - alpha_t * phis[k + 1] * sum(w * d for w, d in zip(inverse[k][:-1], divided))
            # A1111's UniPC weighs the new difference by row p-2 of the inverse (row 0 for p = 1).
            x = x - alpha_t * phis[p] * (x0_t - x0_s) * inverse[max(p - 2, 0)][-1]
        points = (points + [(t, x0_t)])[-order:]
    return x


UNIPC_CASES = {
    # name: (timesteps, is_img2img, start time, variant, order, skip type, lower_order_final)
    "txt2img bh1": (ts.timesteps_for(5), False, 1.0, "bh1", 3, "time_uniform", True),
    "txt2img bh2": (ts.timesteps_for(3), False, 1.0, "bh2", 3, "time_uniform", True),
    "img2img bh1": (ts.timesteps_for(10)[:4], True, 0.302, "bh1", 3, "time_uniform", True),
    "img2img bh2": (ts.timesteps_for(10)[:4], True, 0.302, "bh2", 2, "time_uniform", True),
    "vary_coeff": (ts.timesteps_for(5), False, 1.0, "vary_coeff", 3, "time_uniform", True),
    "order 2 no lower-order final": (ts.timesteps_for(3), False, 1.0, "bh1", 2, "time_uniform", False),
    "time_quadratic": (ts.timesteps_for(3), False, 1.0, "bh1", 3, "time_quadratic", True),
    "logSNR": (ts.timesteps_for(10)[:4], True, 0.302, "bh2", 3, "logSNR", True),
    "logSNR from t = 1": (ts.timesteps_for(3), False, 1.0, "bh1", 3, "logSNR", True),
}


@pytest.mark.parametrize("case", list(UNIPC_CASES))
def test_unipc_equals_the_reference(case):
    timesteps, img2img, start, variant, order, skip_type, lower = UNIPC_CASES[case]
    reference_model = ToyEps(torch.float64)
    times = reference_times(ReferenceSchedule(reference_model.alphas_cumprod), skip_type, start, len(timesteps))
    expected = reference_unipc(reference_model, start_noise(), times, order, variant, lower)
    options = {"is_img2img": img2img, "variant": variant, "skip_type": skip_type, "order": order,
               "lower_order_final": lower}

    model = ToyEps()
    result = ts.unipc(model, start_noise(), timesteps, **options)
    assert relative_difference(result, expected) < FLOAT32_TOLERANCE
    assert len(model.calls) == len(timesteps)
    assert float(model.calls[0][0][0]) == pytest.approx((start - 0.001) * 1000, abs=1e-3)

    exact = ts.unipc(ToyEps(torch.float64), start_noise(torch.float64), timesteps, **options)
    assert relative_difference(exact, expected) < FLOAT64_TOLERANCE


def diffusers_unipc(variant: str, steps: int, timesteps: list[int] | None = None) -> UniPCMultistepScheduler:
    """diffusers' UniPC set up as close to A1111's as it goes: data prediction, order 3, B(h)
    variant, lower order at the end, ending at timestep 0's noise level ("sigma_min")."""
    alphas = sd1_alphas_cumprod()
    scheduler = UniPCMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        solver_order=3, prediction_type="epsilon", predict_x0=True,
                                        solver_type=variant, lower_order_final=True,
                                        timestep_spacing="linspace", final_sigmas_type="sigma_min")
    scheduler.alphas_cumprod = alphas.clone()
    scheduler.set_timesteps(steps)
    if timesteps is not None:
        # An img2img start A1111-style: diffusers' own spacing always starts at 999.
        table = (((1 - alphas) / alphas) ** 0.5).numpy()
        sigmas = np.interp(timesteps, np.arange(1000), table)
        scheduler.timesteps = torch.tensor(timesteps, dtype=torch.int64)
        scheduler.sigmas = torch.from_numpy(np.concatenate([sigmas, [table[0]]]).astype(np.float32))
    return scheduler


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("img2img", [False, True])
def test_unipc_close_to_diffusers(variant, img2img):
    """Where A1111's continuous times fall on whole timesteps, diffusers' UniPC computes the same
    solver. What still differs: diffusers reads alpha and sigma from float32 sigmas at integer
    timesteps where A1111 interpolates log alpha at float32 times (equal up to rounding), gives
    the model integer timesteps (A1111 (t - 1/1000) x 1000, e.g. 961.99994), and forms its
    coefficients in a different order. 26 steps give 27 timesteps, and A1111's UniPC runs 27 steps
    999, 962, ..., 37 -> 0; img2img at 20 steps, strength 0.35 runs 7 steps from 301 (not from 351,
    where the latents were noised) to 0, both 37 / 43 timesteps a step."""
    if img2img:
        timesteps, start_at, steps = ts.timesteps_for(20)[:7], 301, 7
        scheduler = diffusers_unipc(variant, steps, [start_at - 43 * k for k in range(7)])
    else:
        timesteps, steps = ts.timesteps_for(26), 27
        scheduler = diffusers_unipc(variant, steps)
    assert len(timesteps) == steps

    model, x = ToyEps(), start_noise()
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, full_batch(float(t), x)), t, x).prev_sample

    ours = ToyEps()
    result = ts.unipc(ours, start_noise(), timesteps, is_img2img=img2img, variant=variant)
    assert relative_difference(result, x) < FLOAT32_TOLERANCE
    model_times = [float(t[0]) for t, _ in ours.calls]
    assert model_times == pytest.approx([float(t) for t in scheduler.timesteps], abs=1e-3)


def test_unipc_reports_every_step_and_lets_callbacks_stop_it():
    seen = []
    ts.unipc(ToyEps(), start_noise(), ts.timesteps_for(5), callback=lambda info: seen.append(info))
    assert [info["i"] for info in seen] == [0, 1, 2, 3, 4]
    assert all(set(info) == {"x", "i", "sigma", "sigma_hat", "denoised"} for info in seen)
    # The last step has no x0 of its own: the final latents stand in.
    assert seen[-1]["denoised"] is seen[-1]["x"]

    class Stop(Exception):
        pass

    def stop(info):
        raise Stop

    with pytest.raises(Stop):
        ts.unipc(ToyEps(), start_noise(), ts.timesteps_for(5), callback=stop)


def test_unipc_refuses_fewer_steps_than_its_order_and_unknown_options_before_any_call():
    for options in ({"order": 3}, {"variant": "bh3"}, {"skip_type": "karras"}):
        model = ToyEps()
        with pytest.raises(ValueError):
            ts.unipc(model, start_noise(), ts.timesteps_for(10)[:2], is_img2img=True, **{"order": 2, **options})
        assert model.calls == []


def test_unipc_interpolation_puts_a_time_on_a_knot_at_the_end_of_its_segment():
    """A1111 finds the segment by a stable sort of [t, knots...] (on the GPU): t equal to a knot
    sorts before it, so the segment ending at that knot is used."""
    knots = torch.linspace(0.0, 1.0, 1001)[1:]
    values = 0.5 * torch.log(sd1_alphas_cumprod())
    for index in (0, 1, 300, 998, 999):
        t = knots[index].reshape(1)
        left = max(index - 1, 0)
        right = left + 1
        expected = values[left] + (t - knots[left]) * (values[right] - values[left]) / (knots[right] - knots[left])
        assert torch.equal(ts._interpolate(t, knots, values), expected)


def test_callbacks_of_ddim_and_plms_report_x0_each_step():
    for sampler in (ts.ddim, ts.plms):
        seen = []
        ts_list = ts.timesteps_for(10)
        sampler(ToyEps(), start_noise(), ts_list, noise_sampler=Draws(step_noises(10)), callback=seen.append)
        assert [info["i"] for info in seen] == list(range(9))
        assert all(info["denoised"].shape == SHAPE for info in seen)


def test_registry_names_the_four_samplers():
    assert ts.TIMESTEP_SAMPLERS == {"DDIM": ts.ddim, "DDIM CFG++": ts.ddim_cfgpp, "PLMS": ts.plms, "UniPC": ts.unipc}
