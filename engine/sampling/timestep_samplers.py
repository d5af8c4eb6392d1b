"""The timestep samplers of A1111 (DDIM, DDIM CFG++, PLMS, UniPC) over the model's discrete
timesteps, computing what A1111 v1.10.1 computes.

Written from the papers: DDIM (Song et al. 2021, eq. 12 and the eta noise of eq. 16), PLMS
(Liu et al. 2022, the pseudo linear multistep method with a pseudo improved-Euler start), CFG++
(Chung et al. 2024: the re-noising direction is the unconditional epsilon) and UniPC (Zhao et al.
2023: the multistep predictor UniP with the corrector UniC, B(h) variants and the varying-
coefficient variant, on data predictions, in continuous time over a piecewise-linear log-alpha).

A1111's own arrangement is kept where it changes numbers:
- timesteps 1, 1+k, 1+2k, ... (k = 1000 // steps, clipped at 999); DDIM and PLMS step down from the
  last to the first of them, so they run one step fewer than there are timesteps and stop at
  timestep 1, not at the clean image;
- the per-step constants are read out of float32 tables as Python floats; the "previous" alphas
  are held in float64 and the eta noise level is computed in float64 (with the 1/(1 - alpha)
  factor rounded in float32, as torch's reflected division does);
- UniPC runs len(timesteps) steps in continuous time t in (0, 1], the model getting
  (t - 1/1000) * 1000; for img2img it starts at timesteps[-1]/1000 + 1/1000 (one stride below
  the timestep the init latents were noised to).

Conventions: `model(x, t_batch)` returns epsilon (guidance already combined) and has
`alphas_cumprod`, `cond_scale_multiplier`, `need_last_noise_uncond` and `last_noise_uncond`;
`noise_sampler(sigma, sigma_next)` is the only randomness; `callback(info)` gets x, i, sigma,
sigma_hat and denoised after each step. Latents are (B, C, H, W); all arithmetic stays in the
dtype of `alphas_cumprod` and `x` (float32 in A1111).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Model = Any  # callable (x, t_batch) -> epsilon, with the attributes listed above
NoiseSampler = Callable[[object, object], torch.Tensor]
Callback = Callable[[dict], None]

TRAINING_TIMESTEPS = 1000
# CFG++ works with guidance scales in [0, 1]; A1111 maps the usual 0..12.5 onto that range.
CFGPP_SCALE_MULTIPLIER = 1 / 12.5


# ---------------------------------------------------------------------------------------------
# Timesteps and the img2img start
# ---------------------------------------------------------------------------------------------

def timesteps_for(steps: int, discard_next_to_last: bool = False) -> torch.Tensor:
    """A1111's timesteps for `steps`: every (1000 // steps)-th training timestep counted from 0,
    shifted up by one and clipped to 999 (int64, ascending). Discarding the next-to-last sigma
    means, for these samplers, planning one step more."""
    if discard_next_to_last:
        steps += 1
    if steps < 1 or steps > TRAINING_TIMESTEPS:
        raise ValueError(f"timestep samplers take 1 to {TRAINING_TIMESTEPS} steps, not {steps}")
    stride = TRAINING_TIMESTEPS // steps
    counted = torch.arange(0, TRAINING_TIMESTEPS, stride, dtype=torch.int64)
    return torch.clip(counted + 1, 0, TRAINING_TIMESTEPS - 1)


def img2img_start(x_init: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, t_enc: int,
                  alphas_cumprod: torch.Tensor, extra_noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(noised init latents, timesteps that then run), as A1111 starts img2img for these samplers:
    the init latents are diffused to timesteps[t_enc] (x sqrt(a) + noise sqrt(1 - a)) but the
    sampler is given only timesteps[:t_enc], so it starts one stride lower. `extra_noise`
    (A1111's img2img_extra_noise) adds noise x extra_noise x sqrt(a) on top."""
    alpha = alphas_cumprod[int(timesteps[t_enc])]
    keep = torch.sqrt(alpha)
    spread = torch.sqrt(1 - alpha)
    x = x_init * keep + noise * spread
    if extra_noise > 0:
        x = x + noise * extra_noise * keep
    return x, timesteps[:t_enc]


# ---------------------------------------------------------------------------------------------
# DDIM, DDIM CFG++ and PLMS
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _StepConstants:
    """One timestep's constants as the step reads them (Python floats)."""

    timestep: int
    alpha: float                 # alpha-bar at the timestep
    alpha_prev: float            # alpha-bar at the timestep below it (A1111's float64 table)
    sqrt_one_minus_alpha: float  # sqrt(1 - alpha), rounded in the table's dtype
    eta_sigma: float             # DDIM's eta x sigma_t (eq. 16), computed in float64


def _step_constants(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, eta: float) -> list[_StepConstants]:
    """The constants for every position of `timesteps`. Position 0 pairs with timestep 0 as
    its "previous" one; the loops never step from there."""
    table = alphas_cumprod.detach().cpu()
    positions = timesteps.detach().cpu().to(torch.int64)
    below = torch.cat([positions.new_zeros(1), positions[:-1]])
    alphas = table[positions]
    alphas_prev = table[below].to(torch.float64)
    sqrt_one_minus = torch.sqrt(1 - alphas)
    # A1111 mixes numpy float64 and torch float32 here: the division by (1 - alpha) becomes a
    # float32 reciprocal widened to float64, the rest is float64.
    inverse_remaining = (1 - alphas).reciprocal().to(torch.float64)
    shrink = 1 - alphas.to(torch.float64) / alphas_prev
    eta_sigmas = eta * torch.sqrt(inverse_remaining * (1 - alphas_prev) * shrink)
    return [
        _StepConstants(int(positions[k]), alphas[k].item(), alphas_prev[k].item(),
                       sqrt_one_minus[k].item(), eta_sigmas[k].item())
        for k in range(len(positions))
    ]


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """A Python float as a 0-dim tensor of x's dtype, so that the step arithmetic (sqrt,
    1 - a, ...) rounds where A1111's per-image tensors of the same value round."""
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def _timestep_batch(timestep: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(timestep), dtype=x.dtype, device=x.device)


def _predicted_x0(x: torch.Tensor, eps: torch.Tensor, c: _StepConstants) -> torch.Tensor:
    """Tweedie's estimate of the clean latents from epsilon (DDIM eq. 12, first term)."""
    return (x - _scalar(c.sqrt_one_minus_alpha, x) * eps) / _scalar(c.alpha, x).sqrt()


def _renoised(pred_x0: torch.Tensor, direction: torch.Tensor, c: _StepConstants, sigma: torch.Tensor) -> torch.Tensor:
    """sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) direction: x0 carried down to the previous
    timestep along `direction` (without the fresh noise)."""
    alpha_prev = _scalar(c.alpha_prev, pred_x0)
    return alpha_prev.sqrt() * pred_x0 + (1. - alpha_prev - sigma ** 2).sqrt() * direction


def _top_down(timesteps: torch.Tensor):
    """Positions A1111's DDIM/PLMS loops visit: from the last timestep down to position 1."""
    last = len(timesteps) - 1
    return ((i, last - i) for i in range(last))


def _report(callback: Callback | None, x: torch.Tensor, i: int, denoised: torch.Tensor) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": denoised})


def _ddim_loop(model: Model, x: torch.Tensor, timesteps: torch.Tensor, noise_sampler: NoiseSampler,
               callback: Callback | None, eta: float, unconditional_direction: bool) -> torch.Tensor:
    table = _step_constants(model.alphas_cumprod, timesteps, eta)
    for i, position in _top_down(timesteps):
        c = table[position]
        eps = model(x, _timestep_batch(c.timestep, x))
        # CFG++ points the re-noising direction along the unconditional epsilon.
        direction = model.last_noise_uncond if unconditional_direction else eps
        sigma = _scalar(c.eta_sigma, x)
        pred_x0 = _predicted_x0(x, eps, c)
        # A1111 draws the step noise every step, eta 0 included, so the generators advance alike.
        fresh = sigma * noise_sampler(None, None)
        x = _renoised(pred_x0, direction, c, sigma) + fresh
        _report(callback, x, i, pred_x0)
    return x


@torch.no_grad()
def ddim(model: Model, x: torch.Tensor, timesteps: torch.Tensor, *, noise_sampler: NoiseSampler,
         callback: Callback | None = None, eta: float = 0.0) -> torch.Tensor:
    """DDIM (eta 0: deterministic; eta 1: DDPM-like ancestral noise)."""
    return _ddim_loop(model, x, timesteps, noise_sampler, callback, eta, unconditional_direction=False)


@torch.no_grad()
def ddim_cfgpp(model: Model, x: torch.Tensor, timesteps: torch.Tensor, *, noise_sampler: NoiseSampler,
               callback: Callback | None = None, eta: float = 0.0) -> torch.Tensor:
    """DDIM with CFG++: guidance scaled by 1/12.5 for the x0 estimate, the unconditional epsilon
    for the direction back to the previous timestep. The model's guidance settings are put back
    afterwards."""
    saved = (model.cond_scale_multiplier, model.need_last_noise_uncond)
    model.cond_scale_multiplier = CFGPP_SCALE_MULTIPLIER
    model.need_last_noise_uncond = True
    try:
        return _ddim_loop(model, x, timesteps, noise_sampler, callback, eta, unconditional_direction=True)
    finally:
        model.cond_scale_multiplier, model.need_last_noise_uncond = saved


def _plms_epsilon(eps: torch.Tensor, history: list[torch.Tensor]) -> torch.Tensor:
    """Adams-Bashforth combination of this epsilon with up to three earlier ones (orders 2-4)."""
    if len(history) == 1:
        return (3 * eps - history[-1]) / 2
    if len(history) == 2:
        return (23 * eps - 16 * history[-1] + 5 * history[-2]) / 12
    return (55 * eps - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24


def _plms_move(x: torch.Tensor, eps: torch.Tensor, c: _StepConstants) -> tuple[torch.Tensor, torch.Tensor]:
    """(x at the previous timestep, x0 estimate): a deterministic DDIM step with `eps`."""
    pred_x0 = _predicted_x0(x, eps, c)
    return _renoised(pred_x0, eps, c, _scalar(0.0, x)), pred_x0


@torch.no_grad()
def plms(model: Model, x: torch.Tensor, timesteps: torch.Tensor, *, noise_sampler: NoiseSampler | None = None,
         callback: Callback | None = None) -> torch.Tensor:
    """PLMS: the first step is a pseudo improved-Euler step (two model calls), the next ones
    linear multistep steps of rising order on the epsilons of earlier steps."""
    table = _step_constants(model.alphas_cumprod, timesteps, 0.0)
    history: list[torch.Tensor] = []
    for i, position in _top_down(timesteps):
        c = table[position]
        eps = model(x, _timestep_batch(c.timestep, x))
        if history:
            combined = _plms_epsilon(eps, history)
        else:
            trial, _ = _plms_move(x, eps, c)
            # The timestep the trial step reached (position 0 looks at itself, as A1111's does).
            reached = table[max(position - 1, 0)].timestep
            combined = (eps + model(trial, _timestep_batch(reached, x))) / 2
        x, pred_x0 = _plms_move(x, combined, c)
        history = (history + [eps])[-3:]
        _report(callback, x, i, pred_x0)
    return x


# ---------------------------------------------------------------------------------------------
# UniPC
# ---------------------------------------------------------------------------------------------

def _interpolate(x: torch.Tensor, knots_x: torch.Tensor, knots_y: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear y(x) through increasing knots, extended linearly past both ends. A value
    equal to a knot takes the segment that ends there (A1111 finds the segment with a stable sort
    on the GPU, which puts the value before an equal knot)."""
    count = knots_x.shape[0]
    above = torch.searchsorted(knots_x, x.contiguous(), right=False)
    start = (above - 1).clamp(0, count - 2)
    x0, x1 = knots_x[start], knots_x[start + 1]
    y0, y1 = knots_y[start], knots_y[start + 1]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


class _ContinuousSchedule:
    """The model's noise schedule in continuous time: training timestep n sits at t = (n+1)/N
    and log(alpha_t) (alpha_t = sqrt(alpha-bar)) is linear between those points; sigma_t and
    lambda_t = log(alpha_t / sigma_t) follow from it (the VP convention of DPM-Solver/UniPC)."""

    def __init__(self, alphas_cumprod: torch.Tensor, device: torch.device):
        table = alphas_cumprod.detach().to(device)
        self.count = table.shape[0]
        self.dtype = table.dtype
        self.knot_times = torch.linspace(0.0, 1.0, self.count + 1, dtype=self.dtype)[1:].to(device)
        self.knot_log_alphas = 0.5 * torch.log(table)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return _interpolate(t, self.knot_times, self.knot_log_alphas)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1. - torch.exp(2. * self.log_alpha(t)))

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda_t (half the log signal-to-noise ratio)."""
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(1. - torch.exp(2. * log_alpha))

    def time_of_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        log_alpha = -0.5 * torch.logaddexp(torch.zeros((1,), dtype=log_snr.dtype, device=log_snr.device), -2. * log_snr)
        # log alpha falls as t rises: interpolate over the reversed knots.
        return _interpolate(log_alpha, torch.flip(self.knot_log_alphas, [0]), torch.flip(self.knot_times, [0]))

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The (fractional) training timestep the UNet gets for continuous time t."""
        return (t - 1. / self.count) * 1000.


def _solver_times(schedule: _ContinuousSchedule, skip_type: str, t_start: torch.Tensor, t_end: float,
                  steps: int, device: torch.device) -> torch.Tensor:
    """steps + 1 continuous times from t_start down to t_end (made on the CPU, as A1111 does)."""
    if skip_type == "time_uniform":
        times = torch.linspace(t_start.item(), t_end, steps + 1, dtype=schedule.dtype)
    elif skip_type == "time_quadratic":
        roots = torch.linspace((t_start ** 0.5).item(), t_end ** 0.5, steps + 1, dtype=schedule.dtype)
        times = roots.pow(2)
    elif skip_type == "logSNR":
        ends = torch.stack([t_start.reshape(()), torch.tensor(t_end, dtype=schedule.dtype)]).to(device)
        first, last = (value.item() for value in schedule.log_snr(ends))
        levels = torch.linspace(first, last, steps + 1, dtype=schedule.dtype).to(device)
        return schedule.time_of_log_snr(levels)
    else:
        raise ValueError(f"unknown UniPC skip type {skip_type!r} (time_uniform, time_quadratic or logSNR)")
    return times.to(device)


def _per_image(values: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1), to scale each image of a latent batch."""
    return values[:, None, None, None]


class _UniPCState:
    """What the UniPC update reads: the schedule, the model as a data predictor, the variant."""

    VARIANTS = ("bh1", "bh2", "vary_coeff")

    def __init__(self, model: Model, schedule: _ContinuousSchedule, variant: str):
        if variant not in self.VARIANTS:
            raise ValueError(f"unknown UniPC variant {variant!r} (one of {', '.join(self.VARIANTS)})")
        self.model = model
        self.schedule = schedule
        self.variant = variant

    def data_prediction(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 = (x - sigma_t eps) / alpha_t from the model's epsilon at continuous time t."""
        eps = self.model(x, self.schedule.model_time(t))
        return (x - _per_image(self.schedule.sigma(t)) * eps) / _per_image(self.schedule.alpha(t))

    def update(self, x, history, t, order, correct):
        if self.variant == "vary_coeff":
            return _vary_coeff_update(self, x, history, t, order, correct)
        return _bh_update(self, x, history, t, order, correct)


@dataclass(frozen=True)
class _StepFrame:
    """What a UniPC step from the latest point to time t starts from."""

    x0_last: torch.Tensor        # the latest x0 (data prediction)
    h: torch.Tensor              # lambda_t - lambda_last, per image
    sigma_ratio: torch.Tensor    # sigma_t / sigma_last, per image
    alpha_t: torch.Tensor        # per image
    ratios: torch.Tensor         # r_k of the earlier points (lambda steps relative to h), then 1
    differences: torch.Tensor | None  # (B, order-1, C, H, W): (x0_k - x0_last) / r_k


def _step_frame(state: _UniPCState, history, t: torch.Tensor, order: int, like: torch.Tensor) -> _StepFrame:
    schedule = state.schedule
    t_last, x0_last = history[-1]
    log_snr_last = schedule.log_snr(t_last)
    h = schedule.log_snr(t) - log_snr_last
    ratios, differences = [], []
    for back in range(1, order):
        t_i, x0_i = history[-(back + 1)]
        # Every image shares the times: the first image's ratio is the ratio.
        ratio = ((schedule.log_snr(t_i) - log_snr_last) / h)[0]
        ratios.append(ratio)
        differences.append((x0_i - x0_last) / ratio)
    ratios.append(torch.ones((), dtype=like.dtype, device=like.device))
    return _StepFrame(
        x0_last=x0_last, h=h, sigma_ratio=schedule.sigma(t) / schedule.sigma(t_last),
        alpha_t=torch.exp(schedule.log_alpha(t)), ratios=torch.stack(ratios),
        differences=torch.stack(differences, dim=1) if differences else None)


def _phi_sequence(hh: torch.Tensor, count: int) -> list[torch.Tensor]:
    """phi_0 = e^hh - 1 and phi_(k+1) = phi_k / hh - 1/(k+1)! (= sum_(n>=1) hh^n / (n+k)!), by the
    recurrence, which is how the rounding goes in A1111's UniPC."""
    phis = [torch.expm1(hh)]
    for k in range(1, count):
        phis.append(phis[-1] / hh - 1 / math.factorial(k))
    return phis


def _exponential_step(frame: _StepFrame, x: torch.Tensor, h_phi_1: torch.Tensor) -> torch.Tensor:
    """First-order step of the data-prediction ODE: sigma_t/sigma_s x + alpha_t (1 - e^-h) x0."""
    return _per_image(frame.sigma_ratio) * x - _per_image(frame.alpha_t * h_phi_1) * frame.x0_last


def _bh_update(state: _UniPCState, x, history, t, order: int, correct: bool):
    """One UniPC step with the B(h) coefficients (B(h) = h for bh1, e^h - 1 for bh2): the UniP
    predictor to time t, then (if `correct`) the UniC corrector with the model's x0 there.
    Returns (x at t, x0 at the predicted x or None)."""
    frame = _step_frame(state, history, t, order, x)
    hh = -frame.h[0]  # data prediction integrates in -lambda
    phis = _phi_sequence(hh, order + 1)
    b_h = hh if state.variant == "bh1" else torch.expm1(hh)
    # Order conditions: sum_k rho_k r_k^(i-1) = i! phi_i(hh) / B(h), i = 1..order.
    system = torch.stack([torch.pow(frame.ratios, i - 1) for i in range(1, order + 1)])
    rhs = torch.stack([phis[i] * math.factorial(i) / b_h for i in range(1, order + 1)])
    # The paper's simplified weights: 1/2 for a second-order predictor and a first-order corrector.
    half = torch.tensor([0.5], dtype=x.dtype, device=x.device)

    base = _exponential_step(frame, x, phis[0])
    scale = _per_image(frame.alpha_t * b_h)
    x_t = base
    if frame.differences is not None:
        rhos_p = half if order == 2 else torch.linalg.solve(system[:-1, :-1], rhs[:-1])
        x_t = base - scale * torch.einsum("k,bkchw->bchw", rhos_p, frame.differences)
    if not correct:
        return x_t, None

    rhos_c = half if order == 1 else torch.linalg.solve(system, rhs)
    x0_t = state.data_prediction(x_t, t)
    earlier = 0
    if frame.differences is not None:
        earlier = torch.einsum("k,bkchw->bchw", rhos_c[:-1], frame.differences)
    return base - scale * (earlier + rhos_c[-1] * (x0_t - frame.x0_last)), x0_t


def _taylor_matrix(ratios: torch.Tensor) -> torch.Tensor:
    """C[i, k] = r_i^k / (k+1)!, built column by column."""
    columns, column = [], torch.ones_like(ratios)
    for k in range(1, len(ratios) + 1):
        columns.append(column)
        column = column * ratios / (k + 1)
    return torch.stack(columns, dim=1)


def _vary_coeff_update(state: _UniPCState, x, history, t, order: int, correct: bool):
    """One UniPC step with varying coefficients (UniPC-v): weights from the inverse of the Taylor
    matrix rather than from B(h).

    A1111 keeps per-image ratios and phi values here and so breaks on batches larger than one;
    every image has the same times, so the first image's ratio serves all (the same numbers for
    batch 1). Its corrector weighs the new difference by row K-2 of C^-1 (row 0 when K = 1): kept."""
    frame = _step_frame(state, history, t, order, x)
    size = len(frame.ratios)
    taylor = _taylor_matrix(frame.ratios)
    phis = _phi_sequence(-frame.h, size + 1)
    base = _exponential_step(frame, x, phis[0])

    def weighted(x_t, inverse, columns):
        for row in range(size - 1):
            combined = torch.einsum("bkchw,k->bchw", frame.differences, inverse[row][columns])
            x_t = x_t - _per_image(frame.alpha_t * phis[row + 1]) * combined
        return x_t

    x_t = base
    if frame.differences is not None:
        x_t = weighted(base, torch.linalg.inv(taylor[:-1, :-1]), slice(None))
    if not correct:
        return x_t, None

    inverse = torch.linalg.inv(taylor)
    x0_t = state.data_prediction(x_t, t)
    x_t = weighted(base, inverse, slice(None, -1))
    quirk_row = max(size - 2, 0)
    x_t = x_t - _per_image(frame.alpha_t * phis[size]) * ((x0_t - frame.x0_last) * inverse[quirk_row][-1])
    return x_t, x0_t


def _step_order(step: int, steps: int, order: int, lower_order_final: bool) -> int:
    """The order of step `step` (1-based): warming up it is the number of points so far; after
    that `order`, lowered towards the end with lower_order_final (not below 1 at the last step)."""
    if step < order:
        return step
    return min(order, steps + 1 - step) if lower_order_final else order


def _unipc_start(timesteps: torch.Tensor, is_img2img: bool, dtype: torch.dtype) -> torch.Tensor:
    """Continuous start time: t = 1 for txt2img; for img2img A1111's timesteps[-1]/1000 + 1/1000
    (a time one stride below where img2img_start noised the latents)."""
    if not is_img2img:
        return torch.tensor(1.0, dtype=dtype)
    return torch.tensor(int(timesteps[-1]), dtype=dtype) / 1000 + 1 / 1000


@torch.no_grad()
def unipc(model: Model, x: torch.Tensor, timesteps: torch.Tensor, *, callback: Callback | None = None,
          is_img2img: bool = False, variant: str = "bh1", skip_type: str = "time_uniform", order: int = 3,
          lower_order_final: bool = True) -> torch.Tensor:
    """Multistep UniPC on data predictions, len(timesteps) steps from the start time down to
    t = 1/1000 (timestep 0), one model call per step. The last step is not corrected and has no
    x0 of its own: its callback reports the final latents as `denoised` (A1111 passes None)."""
    steps = len(timesteps)
    if steps < order:
        # A1111 stops here too (an assertion in its UniPC).
        raise ValueError(f"UniPC order {order} needs at least as many steps, got {steps}")
    schedule = _ContinuousSchedule(model.alphas_cumprod, x.device)
    state = _UniPCState(model, schedule, variant)
    t_start = _unipc_start(timesteps, is_img2img, schedule.dtype)
    times = _solver_times(schedule, skip_type, t_start, 1. / schedule.count, steps, x.device)

    batch = x.shape[0]
    t = times[0].expand(batch)
    history = [(t, state.data_prediction(x, t))]
    for step in range(1, steps + 1):
        t = times[step].expand(batch)
        step_order = _step_order(step, steps, order, lower_order_final)
        x, x0 = state.update(x, history, t, step_order, correct=step < steps)
        _report(callback, x, step - 1, x0 if x0 is not None else x)
        if x0 is not None:
            history = (history + [(t, x0)])[-order:]
    return x


TIMESTEP_SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "DDIM": ddim,
    "DDIM CFG++": ddim_cfgpp,
    "PLMS": plms,
    "UniPC": unipc,
}
