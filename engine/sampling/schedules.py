"""Sigma schedules as AUTOMATIC1111 v1.10 makes them for its k-diffusion samplers.

A model's noise levels come from its `alphas_cumprod` (sigma = sqrt((1 - a) / a)), built the way
the original LDM/SGM code builds it (float64 betas and cumulative product, stored as float32):
that table, not diffusers' float32 one, is what A1111's samplers read. `ModelSigmas` maps between
those noise levels and continuous timesteps as k-diffusion's discrete-schedule wrapper does
(log-sigma interpolation, not quantised, A1111's default); `LcmSigmas` is A1111's LCM denoiser
with its 50-entry table and quantised timesteps.

The twelve schedule types of A1111's "Schedule type" menu are listed in `SCHEDULE_TYPES`;
`schedule_sigmas` makes one of them and `sampler_sigmas` does what A1111's sampler does on top
(dropping the next-to-last sigma for some samplers). The arithmetic follows A1111's own order and
precision (float32 tensors, Python/numpy float64 where it computes in those, one timestep at a
time where it loops) so that the sigmas agree to the last bit on the same torch build. Tensor work
happens on the device of the model's table, as A1111's does on the model's device; the result is
always a float32 CPU tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

# A1111's LCM denoiser assumes 1000 training timesteps distilled to 50 (LCM's "original
# inference steps"), so every 20th noise level is kept: timesteps 19, 39, ..., 999.
LCM_TRAINING_TIMESTEPS = 1000
LCM_ORIGINAL_STEPS = 50

# Align Your Steps' published 10-step schedules (NVIDIA's how-to page), as A1111 lists them.
AYS_SD1_SIGMAS = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL_SIGMAS = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


# ---------------------------------------------------------------------------------------------
# The model's alphas_cumprod
# ---------------------------------------------------------------------------------------------

def _ldm_betas(config: Mapping) -> np.ndarray:
    """The float64 betas of a diffusers scheduler config, computed as the LDM code's
    make_beta_schedule does (torch float64 linspace). diffusers' "scaled_linear" is LDM's
    "linear" (linear in sqrt(beta)), diffusers' "linear" is LDM's "sqrt_linear", and
    "squaredcos_cap_v2" is LDM's "cosine" (s = 0.008, betas capped at 0.999)."""
    trained = config.get("trained_betas")
    if trained is not None:
        return np.asarray(trained, dtype=np.float64)
    count = int(config.get("num_train_timesteps", 1000))
    start = float(config.get("beta_start", 0.0001))
    end = float(config.get("beta_end", 0.02))
    kind = config.get("beta_schedule", "linear")
    if kind == "scaled_linear":
        return (torch.linspace(start ** 0.5, end ** 0.5, count, dtype=torch.float64) ** 2).numpy()
    if kind == "linear":
        return torch.linspace(start, end, count, dtype=torch.float64).numpy()
    if kind == "squaredcos_cap_v2":
        offset = 0.008
        progress = torch.arange(count + 1, dtype=torch.float64) / count + offset
        alpha_bar = torch.cos(progress / (1 + offset) * np.pi / 2).pow(2)
        alpha_bar = alpha_bar / alpha_bar[0]
        return np.clip((1 - alpha_bar[1:] / alpha_bar[:-1]).numpy(), 0, 0.999)
    raise ValueError(f"unsupported beta_schedule {kind!r}")


def ldm_alphas_cumprod(config: Mapping) -> torch.Tensor:
    """alphas_cumprod as A1111's loaded model holds it: cumulative product in numpy float64,
    then float32. diffusers multiplies in float32 instead, which drifts by up to ~1e-6
    relative over 1000 steps: enough to change the last bits of every sigma."""
    alphas = 1.0 - _ldm_betas(config)
    return torch.tensor(np.cumprod(alphas, axis=0), dtype=torch.float32)


def _with_final_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


# ---------------------------------------------------------------------------------------------
# Noise levels <-> timesteps
# ---------------------------------------------------------------------------------------------

class ModelSigmas:
    """A model's discrete noise levels and the continuous timesteps between them, as
    k-diffusion's CompVisDenoiser (a DiscreteSchedule, not quantised) sees them."""

    flow = False  # a rectified flow's table is engine/sampling/flow_sigmas.FlowSigmas

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float32)
        table = self._table_alphas(self.alphas_cumprod)
        # Written as k-diffusion writes it (a power of 0.5, on the model's device).
        self.sigmas = ((1 - table) / table) ** 0.5
        self.log_sigmas = self.sigmas.log()
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])

    @classmethod
    def from_config(cls, config: Mapping) -> ModelSigmas:
        """From a diffusers scheduler config, with the table made the LDM way."""
        return cls(ldm_alphas_cumprod(config))

    @classmethod
    def from_table(cls, alphas_cumprod: Sequence[float] | np.ndarray | torch.Tensor) -> ModelSigmas:
        return cls(torch.as_tensor(alphas_cumprod, dtype=torch.float32))

    def _table_alphas(self, alphas_cumprod: torch.Tensor) -> torch.Tensor:
        """The alphas_cumprod the noise table is made of: all of them."""
        return alphas_cumprod

    @property
    def device(self) -> torch.device:
        return self.log_sigmas.device

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep of each sigma: linear in log sigma between the two table entries
        around it, clamped to the table's ends."""
        # The log is taken where sigma lives, as k-diffusion does before mixing devices.
        log_sigma = sigma.log().to(self.device).reshape(-1)
        entries = self.log_sigmas.shape[0]
        # The last entry at or below each log sigma (the first when none is), kept one short of
        # the end so that there is an entry above it to interpolate towards.
        at_or_below = (self.log_sigmas[:, None] <= log_sigma).sum(dim=0)
        low_index = (at_or_below - 1).clamp(min=0, max=entries - 2)
        high_index = low_index + 1
        low, high = self.log_sigmas[low_index], self.log_sigmas[high_index]
        weight = ((low - log_sigma) / (low - high)).clamp(0, 1)
        t = (1 - weight) * low_index + weight * high_index
        return t.reshape(sigma.shape)

    def unet_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """What the UNet is given as its timestep at each sigma: the continuous training
        timestep (an EDM model's table answers otherwise)."""
        return self.sigma_to_t(sigma)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Sigma at each (fractional) timestep: log sigma interpolated between its neighbours."""
        t = t.to(self.device).float()
        low_index, high_index, weight = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - weight) * self.log_sigmas[low_index] + weight * self.log_sigmas[high_index]
        return log_sigma.exp()

    @staticmethod
    def noised(latents: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
        """The latents at noise level sigma (unit-variance `noise`)."""
        return latents + noise * sigma

    def uniform(self, n: int) -> torch.Tensor:
        """n sigmas evenly spaced in timestep from the last table entry to the first, then 0:
        A1111's "Uniform" and the Automatic schedule of Euler, LMS, Heun, ..."""
        last = self.log_sigmas.shape[0] - 1
        t = torch.linspace(last, 0, n, device=self.device)
        return _with_final_zero(self.t_to_sigma(t))


class LcmSigmas(ModelSigmas):
    """A1111's LCM denoiser: a table of every 20th noise level (timesteps 19, 39, ..., 999),
    sigmas snapped to the nearest of them, and its own default schedule from timestep 999 to 19.
    `alphas_cumprod` stays the model's full table; `sigmas` has the 50 entries."""

    skip = LCM_TRAINING_TIMESTEPS // LCM_ORIGINAL_STEPS

    def _table_alphas(self, alphas_cumprod: torch.Tensor) -> torch.Tensor:
        # Counted back from the last training timestep, so the kept ones are 19 + 20 k.
        kept = torch.arange(LCM_ORIGINAL_STEPS - 1, -1, -1)
        timesteps = (LCM_TRAINING_TIMESTEPS - 1) - kept * self.skip
        return alphas_cumprod[timesteps.to(alphas_cumprod.device)]

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The training timestep (an integer tensor) of the table entry nearest in log sigma."""
        log_sigma = sigma.log().to(self.device).reshape(-1)
        nearest = (log_sigma - self.log_sigmas[:, None]).abs().argmin(dim=0)
        return (nearest * self.skip + (self.skip - 1)).reshape(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Training timesteps back to table positions, clamped to the table, then interpolated."""
        position = ((t.to(self.device) - (self.skip - 1)) / self.skip).float()
        position = torch.clamp(position, min=0, max=self.log_sigmas.shape[0] - 1)
        return super().t_to_sigma(position)

    def uniform(self, n: int) -> torch.Tensor:
        """n sigmas evenly spaced in training timestep from that of the largest sigma (999) to
        that of the smallest (19), then 0."""
        start = self.sigma_to_t(self.sigmas[-1])
        end = self.sigma_to_t(self.sigmas[0])
        t = torch.linspace(float(start), float(end), n, device=self.device)
        return _with_final_zero(self.t_to_sigma(t))


# ---------------------------------------------------------------------------------------------
# Schedule types
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScheduleInputs:
    """What a schedule function gets: A1111's n, sigma_min/max (the model's unless the settings
    say otherwise), rho, the model's table, and the few settings some schedules read."""

    n: int
    model: ModelSigmas
    sigma_min: float
    sigma_max: float
    rho: float
    is_sdxl: bool = False
    beta_alpha: float = 0.6
    beta_beta: float = 0.6


def _uniform(inputs: ScheduleInputs) -> torch.Tensor:
    return inputs.model.uniform(inputs.n)


def _karras(inputs: ScheduleInputs) -> torch.Tensor:
    """Karras et al. (2022): evenly spaced in sigma^(1/rho). The ramp is made on the CPU, as
    k-diffusion makes it whatever the device."""
    ramp = torch.linspace(0, 1, inputs.n)
    top = inputs.sigma_max ** (1 / inputs.rho)
    bottom = inputs.sigma_min ** (1 / inputs.rho)
    return _with_final_zero((top + ramp * (bottom - top)) ** inputs.rho)


def _exponential(inputs: ScheduleInputs) -> torch.Tensor:
    """Evenly spaced in log sigma."""
    log_sigmas = torch.linspace(math.log(inputs.sigma_max), math.log(inputs.sigma_min), inputs.n,
                                device=inputs.model.device)
    return _with_final_zero(log_sigmas.exp())


def _polyexponential(inputs: ScheduleInputs) -> torch.Tensor:
    """log sigma follows a power rho of a ramp from 1 to 0 (rho 1: Exponential)."""
    ramp = torch.linspace(1, 0, inputs.n, device=inputs.model.device) ** inputs.rho
    log_min = math.log(inputs.sigma_min)
    return _with_final_zero(torch.exp(ramp * (math.log(inputs.sigma_max) - log_min) + log_min))


def _timestep_walk(inputs: ScheduleInputs, count: int, drop_last: bool) -> torch.Tensor:
    """Sigmas at `count` timesteps evenly spaced between those of sigma_max and sigma_min
    (without the last one when `drop_last`), then 0. A1111 converts them one at a time."""
    model = inputs.model
    start = model.sigma_to_t(torch.tensor(inputs.sigma_max))
    end = model.sigma_to_t(torch.tensor(inputs.sigma_min))
    timesteps = torch.linspace(float(start), float(end), count)
    if drop_last:
        timesteps = timesteps[:-1]
    values = [float(model.t_to_sigma(t)) for t in timesteps]
    return torch.tensor(values + [0.0], dtype=torch.float32)


def _sgm_uniform(inputs: ScheduleInputs) -> torch.Tensor:
    """SGM's discretisation: n + 1 evenly spaced timesteps, the last (sigma_min's) left out."""
    return _timestep_walk(inputs, inputs.n + 1, drop_last=True)


def _normal(inputs: ScheduleInputs) -> torch.Tensor:
    """n evenly spaced timesteps from sigma_max's to sigma_min's, both included."""
    return _timestep_walk(inputs, inputs.n, drop_last=False)


def _kl_optimal(inputs: ScheduleInputs) -> torch.Tensor:
    """Evenly spaced in arctan(sigma) (Sabour et al., 2024). A1111 returns all n + 1 points,
    so the schedule ends at sigma_min, not 0: the last step stops short of a clean image."""
    device = inputs.model.device
    angle_min = torch.arctan(torch.tensor(inputs.sigma_min, device=device))
    angle_max = torch.arctan(torch.tensor(inputs.sigma_max, device=device))
    fraction = torch.arange(inputs.n + 1, device=device) / inputs.n
    return torch.tan(fraction * angle_min + (1.0 - fraction) * angle_max)


def _log_linear_resample(decreasing: Sequence[float], count: int) -> np.ndarray:
    """`count` values spread over a decreasing sequence, interpolating linearly in log value
    over evenly spaced positions (numpy float64, as the AYS how-to does it)."""
    positions = np.linspace(0, 1, len(decreasing))
    log_values = np.log(list(decreasing)[::-1])
    resampled = np.interp(np.linspace(0, 1, count), positions, log_values)
    return np.exp(resampled)[::-1].copy()


def _align_your_steps(inputs: ScheduleInputs) -> torch.Tensor:
    """NVIDIA's Align Your Steps schedule for SD 1.x or SDXL, independent of the model's
    sigma_min/max. A1111 uses the table as published only when n equals its length (11), so
    10 steps are already a resampling of it."""
    table = AYS_SDXL_SIGMAS if inputs.is_sdxl else AYS_SD1_SIGMAS
    values = list(table) if inputs.n == len(table) else list(_log_linear_resample(table, inputs.n))
    return torch.tensor(values + [0.0], dtype=torch.float32)


def _simple(inputs: ScheduleInputs) -> torch.Tensor:
    """Every (len/n)-th table entry, walking down from the largest."""
    sigmas = inputs.model.sigmas
    stride = len(sigmas) / inputs.n
    values = [float(sigmas[-(1 + int(step * stride))]) for step in range(inputs.n)]
    return torch.tensor(values + [0.0], dtype=torch.float32)


def _ddim(inputs: ScheduleInputs) -> torch.Tensor:
    """The table entries at 1, 1 + k, 1 + 2k, ... (k = len // n), largest first. As in A1111
    this gives more than n sigmas when k does not divide the table evenly (7 steps: 8)."""
    sigmas = inputs.model.sigmas
    stride = max(len(sigmas) // inputs.n, 1)
    values = [float(sigmas[index]) for index in range(1, len(sigmas), stride)][::-1]
    return torch.tensor(values + [0.0], dtype=torch.float32)


def _beta(inputs: ScheduleInputs) -> torch.Tensor:
    """Quantiles of a Beta(alpha, beta) distribution mapped onto [sigma_min, sigma_max]
    ("Beta Sampling is All You Need", Lee et al., 2024), computed in float64."""
    from scipy import stats  # only this schedule needs scipy

    levels = 1 - np.linspace(0, 1, inputs.n)
    quantiles = [stats.beta.ppf(level, inputs.beta_alpha, inputs.beta_beta) for level in levels]
    spread = inputs.sigma_max - inputs.sigma_min
    values = [inputs.sigma_min + quantile * spread for quantile in quantiles]
    return torch.tensor(values + [0.0], dtype=torch.float32)


@dataclass(frozen=True)
class ScheduleType:
    """One entry of A1111's schedule type menu."""

    name: str                # the API's name
    label: str               # what the menu and infotext show
    build: Callable[[ScheduleInputs], torch.Tensor] | None  # None: the sampler's own (Automatic)
    default_rho: float = -1  # -1: rho does not apply
    need_inner_model: bool = False  # reads the model's noise table
    aliases: tuple[str, ...] = ()


SCHEDULE_TYPES: tuple[ScheduleType, ...] = (
    ScheduleType("automatic", "Automatic", None),
    ScheduleType("uniform", "Uniform", _uniform, need_inner_model=True),
    ScheduleType("karras", "Karras", _karras, default_rho=7.0),
    ScheduleType("exponential", "Exponential", _exponential),
    ScheduleType("polyexponential", "Polyexponential", _polyexponential, default_rho=1.0),
    ScheduleType("sgm_uniform", "SGM Uniform", _sgm_uniform, need_inner_model=True, aliases=("SGMUniform",)),
    ScheduleType("kl_optimal", "KL Optimal", _kl_optimal),
    ScheduleType("align_your_steps", "Align Your Steps", _align_your_steps),
    ScheduleType("simple", "Simple", _simple, need_inner_model=True),
    ScheduleType("normal", "Normal", _normal, need_inner_model=True),
    ScheduleType("ddim", "DDIM", _ddim, need_inner_model=True),
    ScheduleType("beta", "Beta", _beta, need_inner_model=True),
)

_BY_ANY_NAME: dict[str, ScheduleType] = {
    key: schedule
    for schedule in SCHEDULE_TYPES
    for key in (schedule.name, schedule.label, *schedule.aliases)
}


def find_schedule(name: str) -> ScheduleType:
    """A schedule type by its label, API name or alias."""
    try:
        return _BY_ANY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown schedule type {name!r}") from None


def schedule_sigmas(label: str, n: int, model: ModelSigmas, *, is_sdxl: bool = False,
                    sigma_min: float | None = None, sigma_max: float | None = None,
                    rho: float | None = None, beta_alpha: float = 0.6,
                    beta_beta: float = 0.6) -> torch.Tensor:
    """The sigmas of schedule type `label` for n steps: float32 on the CPU, normally n + 1 values
    ending in 0 (DDIM may give more, KL Optimal ends at sigma_min). sigma_min/sigma_max/rho
    left None or 0 mean the model's and the schedule's own, as A1111's settings at 0 do; rho
    only matters to the schedules that have one (Karras, Polyexponential)."""
    schedule = find_schedule(label)
    if schedule.build is None:
        raise ValueError("the Automatic schedule is the sampler's own: resolve it before asking for sigmas")
    if n < 1:
        raise ValueError(f"a schedule needs at least one step, not {n}")
    uses_rho = schedule.default_rho != -1
    inputs = ScheduleInputs(
        n=n, model=model,
        sigma_min=float(sigma_min) if sigma_min else model.sigma_min,
        sigma_max=float(sigma_max) if sigma_max else model.sigma_max,
        rho=float(rho) if (rho and uses_rho) else schedule.default_rho,
        is_sdxl=is_sdxl, beta_alpha=beta_alpha, beta_beta=beta_beta,
    )
    return schedule.build(inputs).to(device="cpu", dtype=torch.float32)


def sampler_sigmas(label: str, steps: int, model: ModelSigmas, *, discard_next_to_last: bool,
                   **options) -> torch.Tensor:
    """The sigmas a k-diffusion sampler runs over for `steps` steps. Samplers that discard the
    next-to-last sigma (DPM2, DPM2 a, DPM++ 3M SDE, or any with the setting on) get a schedule
    for one step more with its next-to-last value removed, so they still take `steps` steps
    but the last one jumps from a smaller sigma straight to 0."""
    if not discard_next_to_last:
        return schedule_sigmas(label, steps, model, **options)
    longer = schedule_sigmas(label, steps + 1, model, **options)
    return torch.cat([longer[:-2], longer[-1:]])
