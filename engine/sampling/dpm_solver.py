"""DPM fast and DPM adaptive: DPM-Solver (Lu et al. 2022) with a fixed number of model
evaluations, or with an embedded error estimate and a PID step-size controller, as A1111 runs them
through k-diffusion 0.1.1 (same order of operations, so the same float32 results)."""

from __future__ import annotations

import math

import torch

from engine.sampling.k_common import (
    Callback,
    Model,
    NoiseSampler,
    ancestral_split,
    per_image,
)

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
            cache[stage] = (x - self.model(x, per_image(x, self.sigma(t)))) / self.sigma(t)
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
