"""UniPC as A1111 v1.10.1 runs it (engine.sampling.timestep_samplers.unipc): against a reference
written here from the paper's and A1111's formulas in float64 (A1111's continuous-time schedule,
series for the phi functions, numpy solves), and close to diffusers' UniPCMultistepScheduler.
The toy model, noises and tolerances are those of tests/test_sampling_timesteps.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler

from engine.sampling import timestep_samplers as ts
from tests.test_sampling_timesteps import (
    FLOAT32_TOLERANCE,
    FLOAT64_TOLERANCE,
    ToyEps,
    full_batch,
    relative_difference,
    sd1_alphas_cumprod,
    start_noise,
)



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
