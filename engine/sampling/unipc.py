"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models") as A1111 runs it: multistep, data prediction, the B(h) variants bh1 and bh2,
over continuous time t in [1/N, 1] of a discrete-time model whose log alpha is interpolated
linearly between the training timesteps."""

from __future__ import annotations

import torch


class DiscreteVP:
    """The VP noise schedule of a model trained on N discrete timesteps, in continuous time:
    timestep n sits at t = (n + 1) / N and log alpha_t is piecewise linear in between."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        log_alphas = 0.5 * torch.log(alphas_cumprod)
        self.total_n = len(log_alphas)
        self.t_end = 1.0
        self.times = torch.linspace(0.0, 1.0, self.total_n + 1)[1:].reshape((1, -1))
        self.log_alphas = log_alphas.reshape((1, -1))

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return piecewise_linear(t.reshape((-1, 1)), self.times.to(t.device), self.log_alphas.to(t.device)).reshape((-1))

    def alpha(self, t):
        return torch.exp(self.log_alpha(t))

    def std(self, t):
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def half_log_snr(self, t):
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))

    def time_of(self, half_log_snr):
        log_alpha = -0.5 * torch.logaddexp(torch.zeros((1,)).to(half_log_snr.device), -2.0 * half_log_snr)
        flipped_alphas = torch.flip(self.log_alphas.to(half_log_snr.device), [1])
        flipped_times = torch.flip(self.times.to(half_log_snr.device), [1])
        return piecewise_linear(log_alpha.reshape((-1, 1)), flipped_alphas, flipped_times).reshape((-1,))


def model_time(t: torch.Tensor, schedule: DiscreteVP) -> torch.Tensor:
    """The model's (fractional) timestep of continuous time t: 999 at t = 1, 0 at t = 1/N."""
    return (t - 1.0 / schedule.total_n) * 1000.0


def piecewise_linear(x: torch.Tensor, xp: torch.Tensor, yp: torch.Tensor) -> torch.Tensor:
    """y at each x of the polyline through (xp, yp), extended by its end segments beyond them.
    x: (N, 1); xp, yp: (1, K) with xp increasing. The segment is found by sorting x among the
    keypoints, as the reference implementation does, so ties resolve the same way."""
    count, keypoints = x.shape[0], xp.shape[1]
    merged = torch.cat([x.unsqueeze(2), xp.unsqueeze(0).repeat((count, 1, 1))], dim=2)
    ordered, order = torch.sort(merged, dim=2)
    position = torch.argmin(order, dim=2)  # where x landed among the keypoints
    before = position - 1
    low = torch.where(torch.eq(position, 0), torch.tensor(1, device=x.device),
                      torch.where(torch.eq(position, keypoints), torch.tensor(keypoints - 2, device=x.device), before))
    high = torch.where(torch.eq(low, before), low + 2, low + 1)
    x_low = torch.gather(ordered, dim=2, index=low.unsqueeze(2)).squeeze(2)
    x_high = torch.gather(ordered, dim=2, index=high.unsqueeze(2)).squeeze(2)
    y_index = torch.where(torch.eq(position, 0), torch.tensor(0, device=x.device),
                          torch.where(torch.eq(position, keypoints), torch.tensor(keypoints - 2, device=x.device), before))
    ys = yp.unsqueeze(0).expand(count, -1, -1)
    y_low = torch.gather(ys, dim=2, index=y_index.unsqueeze(2)).squeeze(2)
    y_high = torch.gather(ys, dim=2, index=(y_index + 1).unsqueeze(2)).squeeze(2)
    return y_low + (x - x_low) * (y_high - y_low) / (x_high - x_low)


def _column(v: torch.Tensor, dims: int) -> torch.Tensor:
    return v[(...,) + (None,) * (dims - 1)]


class UniPC:
    """Multistep UniPC with data prediction. `noise_model(x, t)` gives epsilon at continuous t;
    `callback` gets each step's x and data prediction."""

    def __init__(self, noise_model, schedule: DiscreteVP, variant: str = "bh1", callback=None):
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"UniPC variant {variant!r} is not available: choose bh1 or bh2")
        self.noise_model = noise_model
        self.schedule = schedule
        self.variant = variant
        self.callback = callback
        self.index = 0

    def data_prediction(self, x, t):
        eps = self.noise_model(x, t)
        dims = x.dim()
        alpha, std = self.schedule.alpha(t), self.schedule.std(t)
        return (x - _column(std, dims) * eps) / _column(alpha, dims)

    def times(self, skip_type: str, t_start: float, t_end: float, steps: int, device) -> torch.Tensor:
        if skip_type == "time_uniform":
            return torch.linspace(t_start, t_end, steps + 1).to(device)
        if skip_type == "time_quadratic":
            return torch.linspace(t_start ** 0.5, t_end ** 0.5, steps + 1).pow(2).to(device)
        if skip_type == "logSNR":
            first = self.schedule.half_log_snr(torch.tensor(t_start).to(device))
            last = self.schedule.half_log_snr(torch.tensor(t_end).to(device))
            return self.schedule.time_of(torch.linspace(first.cpu().item(), last.cpu().item(), steps + 1).to(device))
        raise ValueError(f"unknown UniPC skip type {skip_type!r}")

    def _update(self, x, predictions, times, t, order, use_corrector):
        """One predictor(-corrector) step from the last time in `times` to t (the B(h) variants)."""
        schedule = self.schedule
        dims = x.dim()
        t_last, prediction_last = times[-1], predictions[-1]
        lambda_last, lambda_t = schedule.half_log_snr(t_last), schedule.half_log_snr(t)
        std_last, std_t = schedule.std(t_last), schedule.std(t)
        alpha_t = torch.exp(schedule.log_alpha(t))
        h = lambda_t - lambda_last
        ratios, differences = [], []
        for i in range(1, order):
            ratio = ((schedule.half_log_snr(times[-(i + 1)]) - lambda_last) / h)[0]
            ratios.append(ratio)
            differences.append((predictions[-(i + 1)] - prediction_last) / ratio)
        ratios.append(1.0)
        ratios = torch.tensor(ratios, device=x.device)
        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        rows, targets = [], []
        factorial = 1
        for i in range(1, order + 1):
            rows.append(torch.pow(ratios, i - 1))
            targets.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        system = torch.stack(rows)
        targets = torch.tensor(targets, device=x.device)
        stacked = torch.stack(differences, dim=1) if differences else None
        if stacked is not None:
            rhos_p = torch.tensor([0.5], device=targets.device) if order == 2 else \
                torch.linalg.solve(system[:-1, :-1], targets[:-1])
        if use_corrector:
            rhos_c = torch.tensor([0.5], device=targets.device) if order == 1 else torch.linalg.solve(system, targets)
        base = _column(std_t / std_last, dims) * x - _column(alpha_t * h_phi_1, dims) * prediction_last
        predicted = torch.einsum("k,bkchw->bchw", rhos_p, stacked) if stacked is not None else 0
        x_t = base - _column(alpha_t * b_h, dims) * predicted
        model_t = None
        if use_corrector:
            model_t = self.data_prediction(x_t, t)
            corrected = torch.einsum("k,bkchw->bchw", rhos_c[:-1], stacked) if stacked is not None else 0
            x_t = base - _column(alpha_t * b_h, dims) * (corrected + rhos_c[-1] * (model_t - prediction_last))
        return x_t, model_t

    def _done(self, x, prediction) -> None:
        if self.callback is not None:
            self.callback({"x": x, "i": self.index, "sigma": 0, "sigma_hat": 0, "denoised": prediction})
        self.index += 1

    @torch.no_grad()
    def sample(self, x, steps: int, t_start=None, skip_type="time_uniform", order=3, lower_order_final=True):
        if steps < order:
            raise ValueError(f"UniPC order {order} needs at least {order} steps")
        t_end = 1.0 / self.schedule.total_n
        t_start = self.schedule.t_end if t_start is None else t_start
        times = self.times(skip_type, t_start, t_end, steps, x.device)
        t = times[0].expand((x.shape[0]))
        predictions, seen = [self.data_prediction(x, t)], [t]
        for warmup in range(1, order):  # lower orders until there is enough history
            t = times[warmup].expand(x.shape[0])
            x, prediction = self._update(x, predictions, seen, t, warmup, use_corrector=True)
            if prediction is None:
                prediction = self.data_prediction(x, t)
            self._done(x, prediction)
            predictions.append(prediction)
            seen.append(t)
        for step in range(order, steps + 1):
            t = times[step].expand(x.shape[0])
            step_order = min(order, steps + 1 - step) if lower_order_final else order
            x, prediction = self._update(x, predictions, seen, t, step_order, use_corrector=step != steps)
            self._done(x, prediction)
            predictions, seen = predictions[1:] + predictions[-1:], seen[1:] + [t]
            if step < steps:
                predictions[-1] = prediction if prediction is not None else self.data_prediction(x, t)
        return x
