"""The sigma-based samplers of A1111 (k-diffusion's family, plus A1111's Restart and LCM).

Written from the papers: Karras et al. 2022 (Euler, Heun, the stochastic "churn"), Lu et al.'s
DPM-Solver and DPM-Solver++ (DPM2, DPM++ 2S a / 2M / SDE / 2M SDE / 3M SDE, DPM fast and
adaptive), Xu et al. 2023 (Restart), and the latent consistency models' sampling (LCM). The
arithmetic follows the order of operations of k-diffusion 0.1.1 and A1111 1.10, step by step,
because float32 rounds differently under any reordering and A1111's pictures are the target.

Conventions shared by every sampler function:
- `model(x, sigma_batch)` returns the denoised latents; `sigma_batch` holds the noise level once
  per image.
- `noise_sampler(sigma, sigma_next)` is the only source of randomness. The caller passes the
  images' step-noise generators (which ignore the arguments) or, for the SDE samplers, a
  `BrownianNoise` (engine/sampling/brownian.py). Where k-diffusion draws `randn_like` directly, we call the noise sampler at
  exactly the same moments, so the generators advance exactly as A1111's do.
- `callback(info)` runs after each step's first model call with x, i, sigma, sigma_hat and
  denoised; an exception it raises ends sampling.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from scipy import integrate

from engine.sampling.dpm_solver import sample_dpm_adaptive, sample_dpm_fast
from engine.sampling.k_common import (
    Callback,
    Model,
    NoiseSampler,
    ancestral_split,
    per_image,
)

INFINITY = float("inf")


# --- shared pieces -------------------------------------------------------------------------


def _slope(x: torch.Tensor, sigma, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE (Karras et al. eq. 3 with s = 1, sigma(t) = t).
    A1111 divides by the scalar sigma directly."""
    return (x - denoised) / sigma


def _report(callback: Callback | None, x, i, sigma, sigma_hat, denoised) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def _lambda(sigma):
    """Log signal-to-noise "time" of DPM-Solver for the variance-exploding form: t = -log sigma."""
    return sigma.log().neg()


def _sigma(t):
    """The inverse of `_lambda`."""
    return t.neg().exp()


# --- Karras et al.: Euler, Heun, DPM2 with optional churn ---------------------------------------


def _churn(x, sigmas, i, noise_sampler, s_churn, s_tmin, s_tmax, s_noise):
    """Karras et al.'s Algorithm 2 "churn": raise the noise level to sigma_hat = sigma (1 + gamma)
    by adding fresh noise. The noise is drawn every step, used or not, because k-diffusion does
    so and the images' generators must advance as in A1111."""
    steps = len(sigmas) - 1
    gamma = min(s_churn / steps, 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
    fresh = noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + fresh * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def _euler_step(x, slope, sigma, sigma_next):
    return x + slope * (sigma_next - sigma)


def _heun_step(model: Model, x, slope, sigma, sigma_next):
    """Trapezoid rule: average the slope here with the slope at the Euler estimate."""
    dt = sigma_next - sigma
    estimate = x + slope * dt
    slope_there = _slope(estimate, sigma_next, model(estimate, per_image(x, sigma_next)))
    return x + (slope + slope_there) / 2 * dt


def _dpm2_step(model: Model, x, slope, sigma, sigma_next):
    """DPM-Solver-2 in sigma: the slope at the geometric midpoint carries the whole step."""
    sigma_mid = sigma.log().lerp(sigma_next.log(), 0.5).exp()
    halfway = x + slope * (sigma_mid - sigma)
    slope_mid = _slope(halfway, sigma_mid, model(halfway, per_image(x, sigma_mid)))
    return x + slope_mid * (sigma_next - sigma)


def _churning_sampler(model, x, sigmas, noise_sampler, callback, churn, second_order_step):
    """The loop of Euler, Heun and DPM2: churn, predict, then step (plain Euler into sigma 0,
    where a second evaluation would divide by zero)."""
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise_sampler, *churn)
        denoised = model(x, per_image(x, sigma_hat))
        slope = _slope(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        if second_order_step is None or sigmas[i + 1] == 0:
            x = _euler_step(x, slope, sigma_hat, sigmas[i + 1])
        else:
            x = second_order_step(model, x, slope, sigma_hat, sigmas[i + 1])
    return x


@torch.no_grad()
def sample_euler(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: Callback | None = None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=INFINITY, s_noise=1.0):
    churn = (s_churn, s_tmin, s_tmax, s_noise)
    return _churning_sampler(model, x, sigmas, noise_sampler, callback, churn, None)


@torch.no_grad()
def sample_heun(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: Callback | None = None,
                s_churn=0.0, s_tmin=0.0, s_tmax=INFINITY, s_noise=1.0):
    churn = (s_churn, s_tmin, s_tmax, s_noise)
    return _churning_sampler(model, x, sigmas, noise_sampler, callback, churn, _heun_step)


@torch.no_grad()
def sample_dpm_2(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: Callback | None = None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=INFINITY, s_noise=1.0):
    churn = (s_churn, s_tmin, s_tmax, s_noise)
    return _churning_sampler(model, x, sigmas, noise_sampler, callback, churn, _dpm2_step)


# --- ancestral samplers ----------------------------------------------------------------------


def _with_fresh_noise(x, noise_sampler, sigma, sigma_next, s_noise, sigma_up):
    return x + noise_sampler(sigma, sigma_next) * s_noise * sigma_up


@torch.no_grad()
def sample_euler_ancestral(model: Model, x, sigmas, *, noise_sampler: NoiseSampler,
                           callback: Callback | None = None, eta=1.0, s_noise=1.0):
    for i in range(len(sigmas) - 1):
        denoised = model(x, per_image(x, sigmas[i]))
        sigma_down, sigma_up = ancestral_split(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = _euler_step(x, _slope(x, sigmas[i], denoised), sigmas[i], sigma_down)
        if sigmas[i + 1] > 0:
            x = _with_fresh_noise(x, noise_sampler, sigmas[i], sigmas[i + 1], s_noise, sigma_up)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model: Model, x, sigmas, *, noise_sampler: NoiseSampler,
                           callback: Callback | None = None, eta=1.0, s_noise=1.0):
    for i in range(len(sigmas) - 1):
        denoised = model(x, per_image(x, sigmas[i]))
        sigma_down, sigma_up = ancestral_split(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        slope = _slope(x, sigmas[i], denoised)
        if sigma_down == 0:
            # Landing on 0: Euler, and no fresh noise is drawn (unlike Euler a, which draws
            # whenever sigma_next > 0).
            x = _euler_step(x, slope, sigmas[i], sigma_down)
        else:
            x = _dpm2_step(model, x, slope, sigmas[i], sigma_down)
            x = _with_fresh_noise(x, noise_sampler, sigmas[i], sigmas[i + 1], s_noise, sigma_up)
    return x


def _dpmpp_2s_step(model: Model, x, denoised, sigma, sigma_to):
    """DPM-Solver++(2S): a half step in log-SNR time predicts again, and that prediction
    carries the full step (exponential integrator on the data prediction)."""
    t, t_next = _lambda(sigma), _lambda(sigma_to)
    r = 1 / 2
    h = t_next - t
    s = t + r * h
    halfway = (_sigma(s) / _sigma(t)) * x - (-h * r).expm1() * denoised
    denoised_mid = model(halfway, per_image(x, _sigma(s)))
    return (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_mid


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model: Model, x, sigmas, *, noise_sampler: NoiseSampler,
                              callback: Callback | None = None, eta=1.0, s_noise=1.0):
    for i in range(len(sigmas) - 1):
        denoised = model(x, per_image(x, sigmas[i]))
        sigma_down, sigma_up = ancestral_split(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            x = _euler_step(x, _slope(x, sigmas[i], denoised), sigmas[i], sigma_down)
        else:
            x = _dpmpp_2s_step(model, x, denoised, sigmas[i], sigma_down)
        if sigmas[i + 1] > 0:
            x = _with_fresh_noise(x, noise_sampler, sigmas[i], sigmas[i + 1], s_noise, sigma_up)
    return x


# --- linear multistep --------------------------------------------------------------------------


def _lms_weight(order: int, levels, i: int, j: int) -> float:
    """Weight of the slope j steps back in the step from levels[i] to levels[i+1]: the integral
    over the step of its Lagrange basis polynomial through the last `order` noise levels.
    `levels` is the float32 NumPy copy of the schedule, so the integrand rounds like A1111's."""
    def basis(tau):
        product = 1.0
        for k in range(order):
            if k != j:
                product *= (tau - levels[i - k]) / (levels[i - j] - levels[i - k])
        return product

    return integrate.quad(basis, levels[i], levels[i + 1], epsrel=1e-4)[0]


@torch.no_grad()
def sample_lms(model: Model, x, sigmas, *, noise_sampler: NoiseSampler | None = None,
               callback: Callback | None = None, order=4):
    levels = sigmas.detach().cpu().numpy()
    slopes: list[torch.Tensor] = []  # oldest first, at most `order`
    for i in range(len(sigmas) - 1):
        denoised = model(x, per_image(x, sigmas[i]))
        slopes.append(_slope(x, sigmas[i], denoised))
        if len(slopes) > order:
            slopes.pop(0)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        current_order = min(i + 1, order)
        weights = [_lms_weight(current_order, levels, i, j) for j in range(current_order)]
        x = x + sum(weight * slope for weight, slope in zip(weights, reversed(slopes)))
    return x


# --- DPM-Solver++ multistep and SDE variants -------------------------------------------------


@torch.no_grad()
def sample_dpmpp_2m(model: Model, x, sigmas, *, noise_sampler: NoiseSampler | None = None,
                    callback: Callback | None = None):
    previous = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, per_image(x, sigmas[i]))
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        t, t_next = _lambda(sigmas[i]), _lambda(sigmas[i + 1])
        h = t_next - t
        if previous is None or sigmas[i + 1] == 0:
            estimate = denoised  # first order: no history yet, or the last step into 0
        else:
            # Second order from the last two predictions, by the ratio of the step sizes.
            r = (t - _lambda(sigmas[i - 1])) / h
            estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * estimate
        previous = denoised
    return x


def _dpmpp_sde_stage(x, denoised, t, t_to, eta):
    """A stochastic DPM-Solver++ first-order move from time t toward t_to: the deterministic
    part lands at the ancestral sigma_down; returns it and the sigma_up still to add."""
    sigma_down, sigma_up = ancestral_split(_sigma(t), _sigma(t_to), eta)
    t_down = _lambda(sigma_down)
    return (_sigma(t_down) / _sigma(t)) * x - (t - t_down).expm1() * denoised, sigma_up


@torch.no_grad()
def sample_dpmpp_sde(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: Callback | None = None,
                     eta=1.0, s_noise=1.0, r=1 / 2):
    """DPM-Solver++ (stochastic, two stages per step, the second at fraction r of the step)."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, per_image(x, sigmas[i]))
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = _euler_step(x, _slope(x, sigmas[i], denoised), sigmas[i], sigmas[i + 1])
            continue
        t, t_next = _lambda(sigmas[i]), _lambda(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        weight = 1 / (2 * r)
        staged, sigma_up = _dpmpp_sde_stage(x, denoised, t, s, eta)
        staged = _with_fresh_noise(staged, noise_sampler, _sigma(t), _sigma(s), s_noise, sigma_up)
        denoised_staged = model(staged, per_image(x, _sigma(s)))
        blended = (1 - weight) * denoised + weight * denoised_staged
        x, sigma_up = _dpmpp_sde_stage(x, blended, t, t_next, eta)
        x = _with_fresh_noise(x, noise_sampler, _sigma(t), _sigma(t_next), s_noise, sigma_up)
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: Callback | None = None,
                        eta=1.0, s_noise=1.0, solver_type="midpoint"):
    """DPM-Solver++(2M) SDE; solver_type picks the second-order correction ('heun' is A1111's
    "DPM++ 2M SDE Heun")."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', not {solver_type!r}")
    previous, h_previous = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, per_image(x, sigmas[i]))
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised  # the last step lands on the prediction
        else:
            t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
            h = t_next - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if previous is not None:
                x = x + _2m_sde_correction(h, eta_h, h_previous, denoised - previous, solver_type)
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * \
                    (-2 * eta_h).expm1().neg().sqrt() * s_noise
            h_previous = h
        previous = denoised
    return x


def _2m_sde_correction(h, eta_h, h_previous, change, solver_type):
    """The multistep second-order term from the change between the last two predictions."""
    r = h_previous / h
    if solver_type == "heun":
        return ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * change
    return 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * change


@torch.no_grad()
def sample_dpmpp_3m_sde(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: Callback | None = None,
                        eta=1.0, s_noise=1.0):
    """DPM-Solver++(3M) SDE: up to third order from the last three predictions."""
    history: list[torch.Tensor] = []   # the previous predictions, newest first (at most 2)
    steps_back: list[torch.Tensor] = []  # the log-SNR steps that followed them, newest first
    for i in range(len(sigmas) - 1):
        denoised = model(x, per_image(x, sigmas[i]))
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
            h = t_next - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if steps_back:
                x = _3m_sde_corrected(x, h, h_eta, denoised, history, steps_back)
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * \
                    (-2 * h * eta).expm1().neg().sqrt() * s_noise
            steps_back = [h, *steps_back][:2]
        history = [denoised, *history][:2]
    return x


def _3m_sde_corrected(x, h, h_eta, denoised, history, steps_back):
    """x with the second-order (one earlier prediction) or third-order (two) terms from
    divided differences of the recent predictions (added in k-diffusion's order)."""
    phi_2 = h_eta.neg().expm1() / h_eta + 1
    if len(steps_back) < 2:
        return x + phi_2 * ((denoised - history[0]) / (steps_back[0] / h))
    r0, r1 = steps_back[0] / h, steps_back[1] / h
    d1_0 = (denoised - history[0]) / r0
    d1_1 = (history[0] - history[1]) / r1
    d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi_3 = phi_2 / h_eta - 0.5
    return x + phi_2 * d1 - phi_3 * d2


# --- LCM ---------------------------------------------------------------------------------------


@torch.no_grad()
def sample_lcm(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: Callback | None = None):
    """Latent consistency sampling (A1111's LCM): jump to the prediction, then re-noise it to
    the next level with fresh noise."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, per_image(x, sigmas[i]))
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise_sampler(sigmas[i], sigmas[i + 1])
    return x


# --- Restart -----------------------------------------------------------------------------------


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device=None) -> torch.Tensor:
    """Karras et al.'s schedule: n levels evenly spaced in sigma^(1/rho), then 0. Made on the CPU
    and moved, as k-diffusion's `get_sigmas_karras` (which A1111's Restart calls) does."""
    ramp = torch.linspace(0, 1, n)
    top, bottom = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = torch.cat([(top + ramp * (bottom - top)) ** rho, torch.zeros(1)])
    return sigmas if device is None else sigmas.to(device)


def _nearest_index(sigmas: torch.Tensor, sigma: float) -> int:
    return int(torch.argmin(abs(sigmas - sigma), dim=0))


def _automatic_restarts(sigmas: torch.Tensor):
    """A1111's automatic plan: none under 20 steps; otherwise one restart interval at sigma 0.1
    (restarting up to sigma 2) that takes 9 of the steps once, or from 36 steps a quarter of
    them twice; the remaining steps become a Karras schedule between the ends of the given one."""
    steps = sigmas.shape[0] - 1
    if steps < 20:
        return sigmas, {}
    restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
    main = karras_sigmas(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item(),
                         device=sigmas.device)
    return main, {0.1: [restart_steps + 1, restart_times, 2]}


def restart_segments(sigmas: torch.Tensor, restart_list: dict | None = None) -> list[tuple[Any, Any]]:
    """The (sigma, sigma_next) pairs Restart walks, in order. restart_list maps the sigma where a
    restart begins to [levels of its Karras sub-schedule (its steps + 1), how many times to run
    it, the sigma it climbs back to]; each key and top snap to the nearest sigma of the main
    schedule. None means A1111's automatic plan, which also replaces the main schedule."""
    if restart_list is None:
        sigmas, restart_list = _automatic_restarts(sigmas)
    restarts_at = {_nearest_index(sigmas, key): value for key, value in restart_list.items()}
    segments = []
    for i in range(len(sigmas) - 1):
        segments.append((sigmas[i], sigmas[i + 1]))
        if i + 1 not in restarts_at:
            continue
        restart_steps, times, climb_to = restarts_at[i + 1]
        low_index, high_index = i + 1, _nearest_index(sigmas, climb_to)
        if high_index < low_index:  # only when the climb goes to a higher noise level
            loop = karras_sigmas(restart_steps, sigmas[low_index].item(), sigmas[high_index].item(),
                                 device=sigmas.device)[:-1]
            for _ in range(times):
                segments.extend(itertools.pairwise(loop))
    return segments


@torch.no_grad()
def sample_restart(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: Callback | None = None,
                   s_noise=1.0, restart_list: dict | None = None):
    """Restart sampling (Xu et al. 2023) as A1111 runs it: Heun steps along `restart_segments`;
    wherever the walk jumps back up to a higher sigma, noise brings x to that level first. The
    callback's sigma is the step's target and sigma_hat its start, as in A1111."""
    last_sigma = None
    for step, (sigma, sigma_next) in enumerate(restart_segments(sigmas, restart_list)):
        if last_sigma is not None and last_sigma < sigma:
            x = x + noise_sampler(last_sigma, sigma) * s_noise * (sigma ** 2 - last_sigma ** 2) ** 0.5
        denoised = model(x, per_image(x, sigma))
        slope = _slope(x, sigma, denoised)
        _report(callback, x, step, sigma_next, sigma, denoised)
        if sigma_next == 0:
            x = _euler_step(x, slope, sigma, sigma_next)
        else:
            x = _heun_step(model, x, slope, sigma, sigma_next)
        last_sigma = sigma_next
    return x


# --- the table the runner uses ---------------------------------------------------------------

CHURN_PARAMETERS = ("s_churn", "s_tmin", "s_tmax", "s_noise")


@dataclass(frozen=True)
class SamplerFunction:
    """A sampler function and what A1111 1.10 passes it besides the model, x, callback and noise
    sampler: `parameters` are the job's settings it receives (A1111's sampler_extra_params,
    plus eta wherever the function takes eta); `levels` says how it receives the noise levels:
    the sigma list, or sigma_min / sigma_max (and n, the step count, for DPM fast)."""

    function: Callable[..., torch.Tensor]
    parameters: tuple[str, ...] = ()
    levels: tuple[str, ...] = ("sigmas",)

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.function(*args, **kwargs)


SAMPLER_FUNCTIONS: dict[str, SamplerFunction] = {
    "sample_euler": SamplerFunction(sample_euler, CHURN_PARAMETERS),
    "sample_euler_ancestral": SamplerFunction(sample_euler_ancestral, ("eta",)),
    "sample_heun": SamplerFunction(sample_heun, CHURN_PARAMETERS),
    "sample_dpm_2": SamplerFunction(sample_dpm_2, CHURN_PARAMETERS),
    "sample_dpm_2_ancestral": SamplerFunction(sample_dpm_2_ancestral, ("eta", "s_noise")),
    "sample_lms": SamplerFunction(sample_lms),
    "sample_dpmpp_2s_ancestral": SamplerFunction(sample_dpmpp_2s_ancestral, ("eta", "s_noise")),
    "sample_dpmpp_sde": SamplerFunction(sample_dpmpp_sde, ("eta", "s_noise")),
    "sample_dpmpp_2m": SamplerFunction(sample_dpmpp_2m),
    "sample_dpmpp_2m_sde": SamplerFunction(sample_dpmpp_2m_sde, ("eta", "s_noise")),
    "sample_dpmpp_3m_sde": SamplerFunction(sample_dpmpp_3m_sde, ("eta", "s_noise")),
    "sample_dpm_fast": SamplerFunction(sample_dpm_fast, ("eta", "s_noise"), ("sigma_min", "sigma_max", "n")),
    # Not in A1111's sampler_extra_params: only eta, so s_noise stays 1.
    "sample_dpm_adaptive": SamplerFunction(sample_dpm_adaptive, ("eta",), ("sigma_min", "sigma_max")),
    # A1111's own functions (not k-diffusion's): Restart's s_noise is never passed either.
    "restart": SamplerFunction(sample_restart),
    "lcm": SamplerFunction(sample_lcm),
}
