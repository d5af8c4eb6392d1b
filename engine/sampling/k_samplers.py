"""The k-diffusion family of samplers as A1111 runs them, over a list of sigmas.

Written from the papers (Karras et al. 2022 for Euler, Heun and sigma churn; Lu et al.'s
DPM-Solver and DPM-Solver++ for DPM2, DPM++ 2S a / 2M / SDE / 2M SDE / 3M SDE, DPM fast and
adaptive; Xu et al. 2023 for Restart) with the arithmetic in the order k-diffusion 0.1.1 uses, so
that float32 results agree with A1111's.

Conventions: `model(x, sigma_batch)` gives denoised latents; `noise_sampler(sigma, sigma_next)`
is the only source of randomness (the images' own generators, or Brownian trees for the SDE
samplers); `callback(info)` gets x, i, sigma, sigma_hat and denoised after each step.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import torch
import torchsde
from scipy import integrate

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSampler = Callable[[object, object], torch.Tensor]


def _derivative(x: torch.Tensor, sigma, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE at x (A1111 divides by the scalar sigma)."""
    return (x - denoised) / sigma


def ancestral_split(sigma, sigma_next, eta: float = 1.0):
    """(sigma_down, sigma_up): an ancestral step from sigma to sigma_next goes down to sigma_down
    deterministically and adds fresh noise of sigma_up (eta 0: no fresh noise)."""
    if not eta:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5)
    sigma_down = (sigma_next ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def _report(callback, x, i, sigma, sigma_hat, denoised) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def _ones(x: torch.Tensor) -> torch.Tensor:
    return x.new_ones([x.shape[0]])


def _churned(x, sigmas, i, noise_sampler, s_churn, s_tmin, s_tmax, s_noise):
    """Karras's stochastic "churn": raise the noise level to sigma_hat by adding fresh noise
    (the noise is drawn every step, as A1111 does, whether it is used or not)."""
    steps = len(sigmas) - 1
    gamma = min(s_churn / steps, 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
    fresh = noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + fresh * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


@torch.no_grad()
def sample_euler(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    ones = _ones(x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churned(x, sigmas, i, noise_sampler, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * ones)
        slope = _derivative(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = x + slope * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback=None,
                           eta=1.0, s_noise=1.0):
    ones = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * ones)
        sigma_down, sigma_up = ancestral_split(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = x + _derivative(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback=None,
                s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    ones = _ones(x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churned(x, sigmas, i, noise_sampler, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * ones)
        slope = _derivative(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        step = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:  # the last step to 0: a plain Euler step
            x = x + slope * step
            continue
        # Trapezoid: the slope at the Euler guess, averaged with the slope here.
        guess = x + slope * step
        slope_there = _derivative(guess, sigmas[i + 1], model(guess, sigmas[i + 1] * ones))
        x = x + (slope + slope_there) / 2 * step
    return x


@torch.no_grad()
def sample_dpm_2(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    ones = _ones(x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churned(x, sigmas, i, noise_sampler, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * ones)
        slope = _derivative(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x = x + slope * (sigmas[i + 1] - sigma_hat)
            continue
        x = _midpoint_step(model, x, slope, sigma_hat, sigmas[i + 1], ones)
    return x


def _midpoint_step(model: Model, x, slope, sigma, sigma_to, ones):
    """DPM-Solver-2: the slope at the log-midpoint of the noise levels carries the whole step."""
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    halfway = x + slope * (sigma_mid - sigma)
    slope_mid = _derivative(halfway, sigma_mid, model(halfway, sigma_mid * ones))
    return x + slope_mid * (sigma_to - sigma)


@torch.no_grad()
def sample_dpm_2_ancestral(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback=None,
                           eta=1.0, s_noise=1.0):
    ones = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * ones)
        sigma_down, sigma_up = ancestral_split(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        slope = _derivative(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + slope * (sigma_down - sigmas[i])
            continue
        x = _midpoint_step(model, x, slope, sigmas[i], sigma_down, ones)
        x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _lms_coefficient(order: int, sigmas, i: int, j: int) -> float:
    """The weight of the j-th last slope in a linear multistep step from sigmas[i] to
    sigmas[i+1]: the integral of its Lagrange basis polynomial over the step."""
    def basis(tau):
        product = 1.0
        for k in range(order):
            if k != j:
                product *= (tau - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k])
        return product

    return integrate.quad(basis, sigmas[i], sigmas[i + 1], epsrel=1e-4)[0]


@torch.no_grad()
def sample_lms(model: Model, x, sigmas, *, noise_sampler: NoiseSampler | None = None, callback=None, order=4):
    ones = _ones(x)
    levels = sigmas.detach().cpu().numpy()
    slopes: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * ones)
        slopes.append(_derivative(x, sigmas[i], denoised))
        del slopes[:-order]
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        used = min(i + 1, order)
        weights = [_lms_coefficient(used, levels, i, j) for j in range(used)]
        x = x + sum(weight * slope for weight, slope in zip(weights, reversed(slopes)))
    return x


def _t_of(sigma):
    return sigma.log().neg()


def _sigma_of(t):
    return t.neg().exp()


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback=None,
                              eta=1.0, s_noise=1.0):
    ones = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * ones)
        sigma_down, sigma_up = ancestral_split(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            x = x + _derivative(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            # DPM-Solver++(2S): a half step in log-SNR time, then the full step with its prediction.
            t, t_next = _t_of(sigmas[i]), _t_of(sigma_down)
            h = t_next - t
            s = t + 0.5 * h
            halfway = (_sigma_of(s) / _sigma_of(t)) * x - (-h * 0.5).expm1() * denoised
            denoised_mid = model(halfway, _sigma_of(s) * ones)
            x = (_sigma_of(t_next) / _sigma_of(t)) * x - (-h).expm1() * denoised_mid
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback=None,
                     eta=1.0, s_noise=1.0, r=1 / 2):
    ones = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * ones)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + _derivative(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t_of(sigmas[i]), _t_of(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        weight = 1 / (2 * r)
        # First stage: a stochastic step to the intermediate time s.
        sigma_down, sigma_up = ancestral_split(_sigma_of(t), _sigma_of(s), eta)
        s_down = _t_of(sigma_down)
        staged = (_sigma_of(s_down) / _sigma_of(t)) * x - (t - s_down).expm1() * denoised
        staged = staged + noise_sampler(_sigma_of(t), _sigma_of(s)) * s_noise * sigma_up
        denoised_s = model(staged, _sigma_of(s) * ones)
        # Second stage: the whole step with the blended prediction.
        sigma_down, sigma_up = ancestral_split(_sigma_of(t), _sigma_of(t_next), eta)
        t_down = _t_of(sigma_down)
        blended = (1 - weight) * denoised + weight * denoised_s
        x = (_sigma_of(t_down) / _sigma_of(t)) * x - (t - t_down).expm1() * blended
        x = x + noise_sampler(_sigma_of(t), _sigma_of(t_next)) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Model, x, sigmas, *, noise_sampler: NoiseSampler | None = None, callback=None):
    ones = _ones(x)
    previous = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * ones)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        t, t_next = _t_of(sigmas[i]), _t_of(sigmas[i + 1])
        h = t_next - t
        if previous is None or sigmas[i + 1] == 0:
            estimate = denoised
        else:
            # Second order from the last two predictions (multistep).
            ratio = (t - _t_of(sigmas[i - 1])) / h
            estimate = (1 + 1 / (2 * ratio)) * denoised - (1 / (2 * ratio)) * previous
        x = (_sigma_of(t_next) / _sigma_of(t)) * x - (-h).expm1() * estimate
        previous = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback=None,
                        eta=1.0, s_noise=1.0, solver_type="midpoint"):
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', not {solver_type!r}")
    ones = _ones(x)
    previous, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * ones)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        h = None
        if sigmas[i + 1] == 0:
            x = denoised  # the final step lands on the prediction
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            decay = (-h - eta_h).expm1().neg()
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + decay * denoised
            if previous is not None:
                ratio = h_last / h
                change = denoised - previous
                if solver_type == "heun":
                    x = x + (decay / (-h - eta_h) + 1) * (1 / ratio) * change
                else:
                    x = x + 0.5 * decay * (1 / ratio) * change
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * \
                    (-2 * eta_h).expm1().neg().sqrt() * s_noise
        previous, h_last = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback=None,
                        eta=1.0, s_noise=1.0):
    ones = _ones(x)
    older, oldest = None, None  # the last two predictions
    h_1, h_2 = None, None      # and the steps that led to them
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * ones)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - older) / r0
                d1_1 = (older - oldest) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                d = (denoised - older) / (h_1 / h)
                x = x + (h_eta.neg().expm1() / h_eta + 1) * d
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * \
                    (-2 * h * eta).expm1().neg().sqrt() * s_noise
        older, oldest = denoised, older
        h_1, h_2 = h, h_1
    return x


@torch.no_grad()
def sample_lcm(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback=None):
    """Latent consistency sampling (A1111's LCM): jump to the prediction, re-noise to the next level."""
    ones = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * ones)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise_sampler(sigmas[i], sigmas[i + 1])
    return x


class BrownianNoise:
    """Noise from Brownian motion over sigma, one torchsde tree per image seed (A1111's noise for
    the SDE samplers): the same picture whatever batch an image is in, and increments that stay
    consistent however the steps cut the interval."""

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, seeds: Sequence[int]):
        low, high = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        self.low, self.high, self.sign = (low, high, 1) if low < high else (high, low, -1)
        start = torch.zeros_like(x)[0]
        self.trees = [torchsde.BrownianTree(self.low, start, self.high, entropy=seed) for seed in seeds]

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        a, b, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        with warnings.catch_warnings():
            # torchsde warns when a float32 end of the schedule rounds a hair outside the float64
            # interval it was made for; it clamps, as A1111's identical call does.
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            increment = torch.stack([tree(a, b) for tree in self.trees]) * (self.sign * sign)
        return increment / (t1 - t0).abs().sqrt()


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al.'s schedule: n levels evenly spaced in sigma^(1/rho), then 0."""
    ramp = torch.linspace(0, 1, n)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(high + ramp * (low - high)) ** rho, torch.zeros(1)])


@torch.no_grad()
def sample_restart(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback=None, s_noise=1.0,
                   restart_list: dict | None = None):
    """Restart sampling (Xu et al. 2023) as A1111 runs it: Heun steps; from 20 steps on, some of
    the steps are spent going back up from sigma ~0.1 to sigma 2 (re-noised) and down again."""
    ones = _ones(x)
    steps = sigmas.shape[0] - 1
    if restart_list is None:
        restart_list = {}
        if steps >= 20:
            restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
            sigmas = karras_sigmas(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item())
            restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
    # Each restart starts at the schedule index nearest its sigma.
    by_index = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart_list.items()}
    segments = []
    for i in range(len(sigmas) - 1):
        segments.append((sigmas[i], sigmas[i + 1]))
        if i + 1 not in by_index:
            continue
        restart_steps, times, restart_max = by_index[i + 1]
        low_index, high_index = i + 1, int(torch.argmin(abs(sigmas - restart_max), dim=0))
        if high_index < low_index:
            loop = karras_sigmas(restart_steps, sigmas[low_index].item(), sigmas[high_index].item())[:-1]
            segments.extend(list(zip(loop[:-1], loop[1:])) * times)
    step = 0
    last = None
    for sigma, sigma_next in segments:
        if last is not None and last < sigma:  # going back up: add the noise of the climb
            x = x + noise_sampler(last, sigma) * s_noise * (sigma ** 2 - last ** 2) ** 0.5
        denoised = model(x, sigma * ones)
        slope = _derivative(x, sigma, denoised)
        _report(callback, x, step, sigma_next, sigma, denoised)
        if sigma_next == 0:
            x = x + slope * (sigma_next - sigma)
        else:
            guess = x + slope * (sigma_next - sigma)
            slope_there = _derivative(guess, sigma_next, model(guess, sigma_next * ones))
            x = x + (slope + slope_there) / 2 * (sigma_next - sigma)
        step += 1
        last = sigma_next
    return x


class _StepSizeController:
    """The PID controller of DPM adaptive's step size (k-diffusion's, after Söderlind)."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order, accept_safety, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errors: list[float] = []

    def propose(self, error) -> bool:
        inverse = 1 / (float(error) + self.eps)
        if not self.errors:
            self.errors = [inverse, inverse, inverse]
        self.errors[0] = inverse
        factor = self.errors[0] ** self.b1 * self.errors[1] ** self.b2 * self.errors[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accepted = factor >= self.accept_safety
        if accepted:
            self.errors[2], self.errors[1] = self.errors[1], self.errors[0]
        self.h *= factor
        return accepted


class _DpmSolver:
    """DPM-Solver (Lu et al. 2022) in time t = -log sigma, with the noise predictions of a
    step cached by name so the higher-order steps reuse the lower ones'."""

    def __init__(self, model: Model, on_step=None):
        self.model = model
        self.on_step = on_step

    @staticmethod
    def t(sigma):
        return -sigma.log()

    @staticmethod
    def sigma(t):
        return t.neg().exp()

    def eps(self, cache: dict, key: str, x, t):
        if key not in cache:
            sigma = self.sigma(t) * x.new_ones([x.shape[0]])
            cache[key] = (x - self.model(x, sigma)) / self.sigma(t)
        return cache[key]

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

    def _ancestral_target(self, t, t_next, t_end, eta):
        """Where a stochastic step lands deterministically, and the noise it then adds."""
        if not eta:
            return t_next, 0.0
        sigma_down, _ = ancestral_split(self.sigma(t), self.sigma(t_next), eta)
        landing = torch.minimum(t_end, self.t(sigma_down))
        return landing, (self.sigma(t_next) ** 2 - self.sigma(landing) ** 2) ** 0.5

    def fast(self, x, t_start, t_end, evaluations, eta, s_noise, noise_sampler):
        """Fixed steps: as many third-order steps as the model evaluations allow."""
        m = math.floor(evaluations / 3) + 1
        ts = torch.linspace(t_start, t_end, m + 1, device=x.device)
        orders = [3] * (m - 2) + [2, 1] if evaluations % 3 == 0 else [3] * (m - 1) + [evaluations % 3]
        solvers = {1: self.first_order, 2: self.second_order, 3: self.third_order}
        for i, order in enumerate(orders):
            cache: dict = {}
            t, t_next = ts[i], ts[i + 1]
            landing, noise_level = self._ancestral_target(t, t_next, t_end, eta)
            denoised = x - self.sigma(t) * self.eps(cache, "eps", x, t)
            if self.on_step is not None:
                self.on_step({"x": x, "i": i, "t": ts[i], "t_up": t, "denoised": denoised})
            x = solvers[order](x, t, landing, cache)
            x = x + noise_level * s_noise * noise_sampler(self.sigma(t), self.sigma(t_next))
        return x

    def adaptive(self, x, t_start, t_end, order, rtol, atol, h_init, pcoeff, icoeff, dcoeff, accept_safety,
                 eta, s_noise, noise_sampler):
        """Embedded pairs of orders (2, 3) or (1, 2) with a step size the error controls."""
        if order not in (2, 3):
            raise ValueError("DPM adaptive's order must be 2 or 3")
        atol, rtol = torch.tensor(atol), torch.tensor(rtol)
        s, x_prev = t_start, x
        controller = _StepSizeController(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
        steps = 0
        while s < t_end - 1e-5:
            cache: dict = {}
            t = torch.minimum(t_end, s + controller.h)
            landing, noise_level = self._ancestral_target(s, t, t_end, eta)
            denoised = x - self.sigma(s) * self.eps(cache, "eps", x, s)
            if order == 2:
                low = self.first_order(x, s, landing, cache)
                high = self.second_order(x, s, landing, cache)
            else:
                low = self.second_order(x, s, landing, cache, r1=1 / 3)
                high = self.third_order(x, s, landing, cache)
            scale = torch.maximum(atol, rtol * torch.maximum(low.abs(), x_prev.abs()))
            error = torch.linalg.norm((low - high) / scale) / x.numel() ** 0.5
            if controller.propose(error):
                x_prev = low
                x = high + noise_level * s_noise * noise_sampler(self.sigma(s), self.sigma(t))
                s = t
            steps += 1
            if self.on_step is not None:
                self.on_step({"x": x, "i": steps - 1, "t": s, "t_up": s, "denoised": denoised})
        return x


def _dpm_callback(solver: _DpmSolver, callback):
    if callback is None:
        return None
    return lambda info: callback({"sigma": solver.sigma(info["t"]), "sigma_hat": solver.sigma(info["t_up"]), **info})


@torch.no_grad()
def sample_dpm_fast(model: Model, x, sigma_min, sigma_max, n, *, noise_sampler: NoiseSampler, callback=None,
                    eta=0.0, s_noise=1.0):
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("DPM fast needs sigma_min and sigma_max above 0")
    solver = _DpmSolver(model)
    solver.on_step = _dpm_callback(solver, callback)
    return solver.fast(x, solver.t(torch.as_tensor(sigma_max)), solver.t(torch.as_tensor(sigma_min)), n, eta, s_noise,
                       noise_sampler)


@torch.no_grad()
def sample_dpm_adaptive(model: Model, x, sigma_min, sigma_max, *, noise_sampler: NoiseSampler, callback=None,
                        order=3, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0,
                        accept_safety=0.81, eta=0.0, s_noise=1.0):
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("DPM adaptive needs sigma_min and sigma_max above 0")
    solver = _DpmSolver(model)
    solver.on_step = _dpm_callback(solver, callback)
    return solver.adaptive(x, solver.t(torch.as_tensor(sigma_max)), solver.t(torch.as_tensor(sigma_min)), order, rtol,
                           atol, h_init, pcoeff, icoeff, dcoeff, accept_safety, eta, s_noise, noise_sampler)


# A1111's function names (its sampler table) -> ours.
SAMPLER_FUNCTIONS: dict[str, Callable] = {
    "sample_euler": sample_euler, "sample_euler_ancestral": sample_euler_ancestral, "sample_heun": sample_heun,
    "sample_dpm_2": sample_dpm_2, "sample_dpm_2_ancestral": sample_dpm_2_ancestral, "sample_lms": sample_lms,
    "sample_dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral, "sample_dpmpp_sde": sample_dpmpp_sde,
    "sample_dpmpp_2m": sample_dpmpp_2m, "sample_dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "sample_dpmpp_3m_sde": sample_dpmpp_3m_sde, "sample_dpm_fast": sample_dpm_fast,
    "sample_dpm_adaptive": sample_dpm_adaptive, "restart": sample_restart, "lcm": sample_lcm,
}
