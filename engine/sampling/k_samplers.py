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
  `BrownianNoise`. Where k-diffusion draws `randn_like` directly, we call the noise sampler at
  exactly the same moments, so the generators advance exactly as A1111's do.
- `callback(info)` runs after each step's first model call with x, i, sigma, sigma_hat and
  denoised; an exception it raises ends sampling.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchsde
from scipy import integrate

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSampler = Callable[[Any, Any], torch.Tensor]
Callback = Callable[[dict], None]

INFINITY = float("inf")


# --- shared pieces -------------------------------------------------------------------------


def _per_image(x: torch.Tensor, sigma) -> torch.Tensor:
    """The noise level repeated for each image of the batch, as the model expects it."""
    return sigma * x.new_ones([x.shape[0]])


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


def ancestral_split(sigma, sigma_next, eta: float = 1.0):
    """(sigma_down, sigma_up) of an ancestral step from sigma to sigma_next: move
    deterministically down to sigma_down, then add fresh noise of standard deviation sigma_up,
    so that sigma_down^2 + sigma_up^2 = sigma_next^2. eta scales the fresh share (0: none)."""
    if not eta:
        return sigma_next, 0.0
    variance_share = sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2
    sigma_up = min(sigma_next, eta * variance_share ** 0.5)
    sigma_down = (sigma_next ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


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
    slope_there = _slope(estimate, sigma_next, model(estimate, _per_image(x, sigma_next)))
    return x + (slope + slope_there) / 2 * dt


def _dpm2_step(model: Model, x, slope, sigma, sigma_next):
    """DPM-Solver-2 in sigma: the slope at the geometric midpoint carries the whole step."""
    sigma_mid = sigma.log().lerp(sigma_next.log(), 0.5).exp()
    halfway = x + slope * (sigma_mid - sigma)
    slope_mid = _slope(halfway, sigma_mid, model(halfway, _per_image(x, sigma_mid)))
    return x + slope_mid * (sigma_next - sigma)


def _churning_sampler(model, x, sigmas, noise_sampler, callback, churn, second_order_step):
    """The loop of Euler, Heun and DPM2: churn, predict, then step (plain Euler into sigma 0,
    where a second evaluation would divide by zero)."""
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise_sampler, *churn)
        denoised = model(x, _per_image(x, sigma_hat))
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
        denoised = model(x, _per_image(x, sigmas[i]))
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
        denoised = model(x, _per_image(x, sigmas[i]))
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
    denoised_mid = model(halfway, _per_image(x, _sigma(s)))
    return (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_mid


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model: Model, x, sigmas, *, noise_sampler: NoiseSampler,
                              callback: Callback | None = None, eta=1.0, s_noise=1.0):
    for i in range(len(sigmas) - 1):
        denoised = model(x, _per_image(x, sigmas[i]))
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
        denoised = model(x, _per_image(x, sigmas[i]))
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
        denoised = model(x, _per_image(x, sigmas[i]))
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
        denoised = model(x, _per_image(x, sigmas[i]))
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
        denoised_staged = model(staged, _per_image(x, _sigma(s)))
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
        denoised = model(x, _per_image(x, sigmas[i]))
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
        denoised = model(x, _per_image(x, sigmas[i]))
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
        denoised = model(x, _per_image(x, sigmas[i]))
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
        denoised = model(x, _per_image(x, sigma))
        slope = _slope(x, sigma, denoised)
        _report(callback, x, step, sigma_next, sigma, denoised)
        if sigma_next == 0:
            x = _euler_step(x, slope, sigma, sigma_next)
        else:
            x = _heun_step(model, x, slope, sigma, sigma_next)
        last_sigma = sigma_next
    return x


# --- DPM-Solver fast and adaptive ------------------------------------------------------------


class _PidStepSize:
    """Adaptive step size from the error estimates (a PID controller in the manner of
    Söderlind), as k-diffusion's DPM adaptive uses it; factors pass an arctan limiter."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order, accept_safety, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.inverse_errors: list[float] = []  # the current and the last two accepted

    def propose(self, error) -> bool:
        """Rescale h by this step's error; True when the step is accepted."""
        inverse = 1 / (float(error) + self.eps)
        if not self.inverse_errors:
            self.inverse_errors = [inverse, inverse, inverse]
        self.inverse_errors[0] = inverse
        e0, e1, e2 = self.inverse_errors
        factor = 1 + math.atan(e0 ** self.b1 * e1 ** self.b2 * e2 ** self.b3 - 1)
        accepted = factor >= self.accept_safety
        if accepted:
            self.inverse_errors[2] = self.inverse_errors[1]
            self.inverse_errors[1] = self.inverse_errors[0]
        self.h *= factor
        return accepted


class _DpmSolver:
    """DPM-Solver-1/2/3 (Lu et al. 2022) on the noise prediction, in t = -log sigma. Within a
    step, the noise predictions are cached by stage so that an embedded lower-order solution
    shares the model calls of the higher-order one."""

    def __init__(self, model: Model, info_callback: Callback | None):
        self.model = model
        self.info_callback = info_callback

    @staticmethod
    def t(sigma):
        return -sigma.log()

    @staticmethod
    def sigma(t):
        return t.neg().exp()

    def eps(self, cache: dict, stage: str, x, t):
        if stage not in cache:
            cache[stage] = (x - self.model(x, _per_image(x, self.sigma(t)))) / self.sigma(t)
        return cache[stage]

    def first_order(self, x, t, t_next, cache):
        h = t_next - t
        return x - self.sigma(t_next) * h.expm1() * self.eps(cache, "eps", x, t)

    def second_order(self, x, t, t_next, cache, r1=1 / 2):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def third_order(self, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = x - self.sigma(s2) * (r2 * h).expm1() * eps - \
            self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)

    def ancestral_landing(self, t, t_next, t_end, eta):
        """Where a step from t toward t_next lands deterministically (never past t_end), and the
        noise that then brings it to the level of t_next."""
        if not eta:
            return t_next, 0.0
        sigma_down, _ = ancestral_split(self.sigma(t), self.sigma(t_next), eta)
        landing = torch.minimum(t_end, self.t(sigma_down))
        return landing, (self.sigma(t_next) ** 2 - self.sigma(landing) ** 2) ** 0.5

    def report(self, info: dict) -> None:
        if self.info_callback is not None:
            self.info_callback(info)


def _fast_orders(evaluations: int) -> list[int]:
    """Orders of DPM fast's equal steps in t: as many third-order steps as the model-evaluation
    budget allows, the remainder as one lower-order step (or 2 and 1 when it divides by 3)."""
    if evaluations < 1:
        raise ValueError("DPM fast needs at least one step")
    m = math.floor(evaluations / 3) + 1
    if evaluations % 3 == 0:
        return [3] * (m - 2) + [2, 1]
    return [3] * (m - 1) + [evaluations % 3]


def _dpm_fast(solver: _DpmSolver, x, t_start, t_end, evaluations, eta, s_noise, noise_sampler):
    if not t_end > t_start and eta:
        raise ValueError("DPM fast: eta must be 0 when sigma_min is not below sigma_max")
    orders = _fast_orders(evaluations)
    ts = torch.linspace(t_start, t_end, len(orders) + 1, device=x.device)
    steppers = {1: solver.first_order, 2: solver.second_order, 3: solver.third_order}
    for i, order in enumerate(orders):
        cache: dict = {}
        t, t_next = ts[i], ts[i + 1]
        landing, sigma_up = solver.ancestral_landing(t, t_next, t_end, eta)
        denoised = x - solver.sigma(t) * solver.eps(cache, "eps", x, t)
        solver.report({"x": x, "i": i, "t": ts[i], "t_up": t, "denoised": denoised})
        x = steppers[order](x, t, landing, cache)
        # Drawn on every step, even when sigma_up is 0, as k-diffusion does.
        x = x + sigma_up * s_noise * noise_sampler(solver.sigma(t), solver.sigma(t_next))
    return x


def _embedded_pair(solver: _DpmSolver, x, s, t, order, cache):
    """(lower, higher) order solutions of one adaptive step, sharing model calls."""
    if order == 2:
        return solver.first_order(x, s, t, cache), solver.second_order(x, s, t, cache)
    return solver.second_order(x, s, t, cache, r1=1 / 3), solver.third_order(x, s, t, cache)


def _dpm_adaptive(solver: _DpmSolver, x, t_start, t_end, order, rtol, atol, h_init, pcoeff, icoeff, dcoeff,
                  accept_safety, eta, s_noise, noise_sampler):
    if order not in (2, 3):
        raise ValueError("DPM adaptive: order must be 2 or 3")
    forward = t_end > t_start
    if not forward and eta:
        raise ValueError("DPM adaptive: eta must be 0 when sigma_min is not below sigma_max")
    atol, rtol = torch.tensor(atol), torch.tensor(rtol)
    controller = _PidStepSize(abs(h_init) * (1 if forward else -1), pcoeff, icoeff, dcoeff,
                              1.5 if eta else order, accept_safety)
    s, x_previous_low = t_start, x
    counts = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
    while (s < t_end - 1e-5) if forward else (s > t_end + 1e-5):
        cache: dict = {}
        t = torch.minimum(t_end, s + controller.h) if forward else torch.maximum(t_end, s + controller.h)
        landing, sigma_up = solver.ancestral_landing(s, t, t_end, eta)
        denoised = x - solver.sigma(s) * solver.eps(cache, "eps", x, s)
        low, high = _embedded_pair(solver, x, s, landing, order, cache)
        # Mixed absolute/relative tolerance against both the new and the previous low solution.
        scale = torch.maximum(atol, rtol * torch.maximum(low.abs(), x_previous_low.abs()))
        error = torch.linalg.norm((low - high) / scale) / x.numel() ** 0.5
        if controller.propose(error):
            x_previous_low = low
            x = high + sigma_up * s_noise * noise_sampler(solver.sigma(s), solver.sigma(t))
            s = t
            counts["n_accept"] += 1
        else:
            counts["n_reject"] += 1
        counts["nfe"] += order
        counts["steps"] += 1
        # Reported after every attempt, rejected ones too (i counts attempts).
        solver.report({"x": x, "i": counts["steps"] - 1, "t": s, "t_up": s, "denoised": denoised,
                       "error": error, "h": controller.h, **counts})
    return x


def _dpm_solver(model: Model, callback: Callback | None) -> _DpmSolver:
    """A solver whose reports reach the callback with sigma and sigma_hat added."""
    if callback is None:
        return _DpmSolver(model, None)
    return _DpmSolver(model, lambda info: callback(
        {"sigma": _DpmSolver.sigma(info["t"]), "sigma_hat": _DpmSolver.sigma(info["t_up"]), **info}))


def _check_range(name: str, sigma_min, sigma_max) -> None:
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError(f"{name} needs sigma_min and sigma_max above 0")


@torch.no_grad()
def sample_dpm_fast(model: Model, x, sigma_min, sigma_max, n, *, noise_sampler: NoiseSampler,
                    callback: Callback | None = None, eta=0.0, s_noise=1.0):
    """DPM-Solver-fast: n model evaluations in equal steps of log sigma from sigma_max down to
    sigma_min (which must be above 0)."""
    _check_range("DPM fast", sigma_min, sigma_max)
    solver = _dpm_solver(model, callback)
    t_start, t_end = solver.t(torch.as_tensor(sigma_max)), solver.t(torch.as_tensor(sigma_min))
    return _dpm_fast(solver, x, t_start, t_end, n, eta, s_noise, noise_sampler)


@torch.no_grad()
def sample_dpm_adaptive(model: Model, x, sigma_min, sigma_max, *, noise_sampler: NoiseSampler,
                        callback: Callback | None = None, order=3, rtol=0.05, atol=0.0078, h_init=0.05,
                        pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81, eta=0.0, s_noise=1.0):
    """DPM-Solver-12 / 23 with an error-controlled step size, from sigma_max down to sigma_min."""
    _check_range("DPM adaptive", sigma_min, sigma_max)
    solver = _dpm_solver(model, callback)
    t_start, t_end = solver.t(torch.as_tensor(sigma_max)), solver.t(torch.as_tensor(sigma_min))
    return _dpm_adaptive(solver, x, t_start, t_end, order, rtol, atol, h_init, pcoeff, icoeff, dcoeff,
                         accept_safety, eta, s_noise, noise_sampler)


# --- Brownian noise for the SDE samplers -----------------------------------------------------


# torchsde's default resolution, which A1111's trees use; torchsde keeps the interval's ends
# rounded to as many decimals as it resolves.
_TREE_TOLERANCE = 1e-6


def _tree_rounded(t) -> float:
    return round(float(t), -int(math.log10(_TREE_TOLERANCE)))


def _ordered(a, b):
    """(low, high, +1) or (high, low, -1)."""
    return (a, b, 1) if a < b else (b, a, -1)


class BrownianNoise:
    """Noise from a Brownian motion over sigma, one torchsde tree per image seed (A1111's noise
    sampler for the SDE samplers): an image's noise depends on its seed only, whatever batch it
    is in, and increments stay consistent however the steps cut the interval. A call gives the
    increment over [sigma, sigma_next] scaled to unit variance."""

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, seeds: Sequence[int]):
        seeds = list(seeds)
        if len(seeds) != x.shape[0]:
            raise ValueError(f"BrownianNoise needs one seed per image: {len(seeds)} seeds, {x.shape[0]} images")
        low, high, self._orientation = _ordered(torch.as_tensor(sigma_min), torch.as_tensor(sigma_max))
        origin = x.new_zeros(x.shape[1:])
        self._trees = [torchsde.BrownianTree(low, origin, high, entropy=seed, tol=_TREE_TOLERANCE) for seed in seeds]
        self._bounds = (_tree_rounded(low), _tree_rounded(high))

    def _clamped(self, t) -> float:
        """t clamped to the tree's interval as torchsde would clamp it, minus its warning: the
        float32 ends of A1111's schedules and sigmas after a log-time round trip fall outside
        the rounded interval by a hair (14.614602088928223 against 14.614602)."""
        lowest, highest = self._bounds
        return min(max(float(t), lowest), highest)

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        a, b, orientation = _ordered(t0, t1)
        a, b = self._clamped(a), self._clamped(b)
        increment = torch.stack([tree(a, b) for tree in self._trees]) * (self._orientation * orientation)
        return increment / (t1 - t0).abs().sqrt()


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
