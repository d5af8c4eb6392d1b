"""Sampler names users know, mapped onto diffusers schedulers.

The names and aliases are the ecosystem's (COMPAT.md). A sampler plus a schedule type gives a
scheduler built from the loaded model's own scheduler config, so the model's beta schedule and
prediction type (epsilon or v) always carry over.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import diffusers
import numpy as np
import torch

from .errors import NotFoundError, RequestError

SCHEDULE_TYPES: tuple[str, ...] = ("Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform", "Beta")

# What each schedule type changes in a diffusers scheduler config. "Automatic" resolves to the
# sampler's own default first. "model" keeps the spacing of the model's scheduler config.
_SCHEDULE_OVERRIDES: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "model": MappingProxyType({}),
    "Uniform": MappingProxyType({"timestep_spacing": "linspace"}),
    "SGM Uniform": MappingProxyType({"timestep_spacing": "trailing"}),
    "Karras": MappingProxyType({"use_karras_sigmas": True}),
    "Exponential": MappingProxyType({"use_exponential_sigmas": True}),
    "Beta": MappingProxyType({"use_beta_sigmas": True}),
})
_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


# The sampler parameters of the ecosystem's API, and which samplers it gives each to (the web UI
# these names come from passes eta to its ancestral and SDE samplers and DDIM, the sigma churn
# trio to Euler, Heun and DPM2, and s_noise to those and the noise-adding samplers).
ETA, CHURN, NOISE = "eta", "churn", "s_noise"


@dataclass(frozen=True)
class SamplerParams:
    """The sampler parameters of one job (request fields, else settings)."""

    eta: float = 1.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0  # 0: no upper bound
    s_noise: float = 1.0
    # The always_discard_next_to_last_sigma setting.
    always_discard: bool = False

    @classmethod
    def of(cls, request, always_discard: bool = False) -> "SamplerParams":
        values = {name: getattr(request, name) for name in ("eta", "s_churn", "s_tmin", "s_tmax", "s_noise")}
        return cls(**{name: value for name, value in values.items() if value is not None},
                   always_discard=always_discard)


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler_class: str
    aliases: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    default_schedule: str = "Uniform"
    # Ancestral and SDE samplers add fresh noise every step; the seed must drive it too.
    stochastic: bool = False
    # The parameters the ecosystem applies to this sampler, and those this implementation applies
    # (the rest are reported as not used when set away from their defaults).
    uses: frozenset = frozenset()
    honours: frozenset = frozenset()
    eta_default: float = 1.0
    eta_setting: str = "eta_ancestral"
    # Its step noise is what an eta noise seed delta (ENSD) changes (the infotext says so).
    uses_ensd: bool = False
    # How the ecosystem runs it: "k" (a k-diffusion sampler over sigmas) or "timesteps" (DDIM,
    # PLMS, UniPC); and whether it drops the next-to-last sigma of its schedule by default.
    family: str = "k"
    discards: bool = False

    @property
    def cls(self) -> type:
        return _OWN_SCHEDULERS.get(self.scheduler_class) or getattr(diffusers, self.scheduler_class)

    def supported_schedules(self) -> tuple[str, ...]:
        params = inspect.signature(self.cls.__init__).parameters
        supported = ["Automatic"]
        for name in SCHEDULE_TYPES[1:]:
            keys = _SCHEDULE_OVERRIDES[name].keys()
            if all(key in params for key in keys):
                supported.append(name)
        return tuple(supported)


def _dpmpp(**config) -> Mapping[str, Any]:
    return MappingProxyType({"algorithm_type": "dpmsolver++", "solver_order": 2, **config})


_SDE = frozenset({ETA, NOISE})
_CHURNING = frozenset({CHURN, NOISE})

SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", ("k_dpmpp_2m",), _dpmpp(), "Karras"),
    Sampler("DPM++ SDE", "DPMSolverSDEScheduler", ("k_dpmpp_sde",), {}, "Karras", stochastic=True,
            uses=_SDE, honours=frozenset({NOISE})),
    Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", ("k_dpmpp_2m_sde",),
            _dpmpp(algorithm_type="sde-dpmsolver++"), "Karras", stochastic=True, uses=_SDE),
    Sampler("DPM++ 2M SDE Heun", "DPMSolverMultistepScheduler", ("k_dpmpp_2m_sde_heun",),
            _dpmpp(algorithm_type="sde-dpmsolver++", solver_type="heun"), "Karras", stochastic=True, uses=_SDE),
    Sampler("DPM++ 3M SDE", "DPMSolverMultistepScheduler", ("k_dpmpp_3m_sde",),
            _dpmpp(algorithm_type="sde-dpmsolver++", solver_order=3), "Exponential", stochastic=True, uses=_SDE,
            discards=True),
    Sampler("Euler a", "EulerAncestralWithEta", ("k_euler_a", "k_euler_ancestral"),
            stochastic=True, uses=frozenset({ETA}), honours=frozenset({ETA}), uses_ensd=True),
    Sampler("Euler", "EulerDiscreteScheduler", ("k_euler",), uses=_CHURNING, honours=_CHURNING),
    Sampler("LMS", "LMSDiscreteScheduler", ("k_lms",)),
    Sampler("Heun", "HeunDiscreteScheduler", ("k_heun",), uses=_CHURNING),
    Sampler("DPM2", "KDPM2DiscreteScheduler", ("k_dpm_2",), {}, "Karras", uses=_CHURNING, discards=True),
    Sampler("DPM2 a", "KDPM2AncestralWithEta", ("k_dpm_2_a",), {}, "Karras", stochastic=True,
            uses=_SDE, honours=_SDE, uses_ensd=True, discards=True),
    Sampler("DDIM", "DDIMScheduler", ("ddim",), MappingProxyType({"set_alpha_to_one": False}), "model",
            uses=frozenset({ETA}), honours=frozenset({ETA}), eta_default=0.0, eta_setting="eta_ddim",
            family="timesteps"),
    Sampler("PLMS", "PNDMScheduler", ("plms",), MappingProxyType({"skip_prk_steps": True}), "model",
            family="timesteps"),
    Sampler("UniPC", "UniPCMultistepScheduler", ("unipc",), {}, "model", family="timesteps"),
    Sampler("LCM", "LCMScheduler", ("k_lcm",), {}, "model", stochastic=True, family="lcm"),
)

# Names of the ecosystem that diffusers has no faithful scheduler for: refused with a clear reason.
UNAVAILABLE_SAMPLERS: tuple[str, ...] = (
    "DPM++ 2S a", "DPM fast", "DPM adaptive", "Restart", "DDIM CFG++",
)

DEFAULT_SAMPLER = "DPM++ 2M"  # the mature UI's default since v1.9
API_DEFAULT_SAMPLER = "Euler"


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def _lookup(name: str) -> Sampler | None:
    wanted = name.strip().lower()
    for sampler in SAMPLERS:
        if sampler.name.lower() == wanted or wanted in sampler.aliases:
            return sampler
    return None


def resolve(name: str, schedule: str | None = None) -> tuple[Sampler, str]:
    """Return the sampler and schedule type for a user's names.

    Accepts old combined names such as "DPM++ 2M Karras" (sampler + schedule type); an explicit
    schedule other than Automatic wins over the one inside the combined name.
    """
    sampler = _lookup(name or "")
    embedded = None
    if sampler is None:
        for schedule_name in SCHEDULE_TYPES[1:]:
            suffix = " " + schedule_name.lower()
            if (name or "").strip().lower().endswith(suffix):
                sampler = _lookup(name.strip()[: -len(suffix)])
                embedded = schedule_name
                break
    if sampler is None:
        if (name or "").strip() in UNAVAILABLE_SAMPLERS:
            raise NotFoundError(
                f"Sampler not found: '{name}' has no diffusers equivalent in this version. "
                f"Available: {', '.join(sampler_names())}", field="sampler_name")
        raise NotFoundError(
            f"Sampler not found: '{name}'. Available: {', '.join(sampler_names())}",
            field="sampler_name")
    schedule = resolve_schedule_name(schedule)
    if schedule == "Automatic" and embedded:
        schedule = embedded
    if schedule not in sampler.supported_schedules():
        raise RequestError(
            f"Schedule type '{schedule}' is not available with sampler '{sampler.name}'. "
            f"Choose one of: {', '.join(sampler.supported_schedules())}", field="scheduler")
    return sampler, schedule


def resolve_schedule_name(schedule: str | None) -> str:
    if schedule is None or str(schedule).strip() == "":
        return "Automatic"
    wanted = str(schedule).strip().lower().replace("_", " ")
    for name in SCHEDULE_TYPES:
        if name.lower() == wanted:
            return name
    # The API's lower-case labels ("karras", "sgm_uniform") are accepted above; anything else is not.
    raise RequestError(
        f"Unknown schedule type '{schedule}'. Choose one of: {', '.join(SCHEDULE_TYPES)}",
        field="scheduler")


def effective_schedule(sampler: Sampler, schedule: str) -> str:
    """The schedule actually applied: Automatic means the sampler's own default."""
    return sampler.default_schedule if schedule == "Automatic" else schedule


def build_scheduler(sampler: Sampler, schedule: str, model_config: Mapping[str, Any], seed: int,
                    params: SamplerParams | None = None):
    """A fresh scheduler for one job, from the model's original scheduler config, with the job's
    sampler parameters applied where this sampler takes them."""
    overrides: dict[str, Any] = {flag: False for flag in _SIGMA_FLAGS}
    overrides.update(sampler.config)
    overrides.update(_SCHEDULE_OVERRIDES[effective_schedule(sampler, schedule)])
    if sampler.scheduler_class == "DPMSolverSDEScheduler":
        # Unseeded, its Brownian noise would differ between runs of the same seed.
        overrides["noise_sampler_seed"] = seed
    config = {k: v for k, v in model_config.items() if not k.startswith("_")}
    config.update(overrides)
    # Keys another scheduler class used (PNDM's skip_prk_steps, ...) mean nothing to this one.
    accepted = inspect.signature(sampler.cls.__init__).parameters
    scheduler = sampler.cls.from_config({k: v for k, v in config.items() if k in accepted})
    params = params or SamplerParams()
    if discards_here(sampler, params):
        _discarding_penultimate(scheduler)
    elif params.always_discard and sampler.family == "timesteps":
        _one_step_more(scheduler)  # what the setting does to these in the ecosystem
    return _with_params(scheduler, sampler, params)


# Schedulers whose schedule is one array of sigmas (and one of timesteps): a sigma can be taken out.
_PLAIN_SCHEDULES = ("EulerDiscreteScheduler", "EulerAncestralWithEta", "LMSDiscreteScheduler",
                    "DPMSolverMultistepScheduler")


def discards_here(sampler: Sampler, params: SamplerParams) -> bool:
    """Whether this job's schedule drops its next-to-last sigma here."""
    wanted = sampler.discards or (params.always_discard and sampler.family == "k")
    return wanted and sampler.scheduler_class in _PLAIN_SCHEDULES


def _discarding_penultimate(scheduler) -> None:
    """The schedule made for one step more, then its next-to-last sigma taken out: the same
    number of steps, ending with a longer last one (the ecosystem's discard_next_to_last_sigma)."""
    original = scheduler.set_timesteps

    @functools.wraps(original)
    def set_timesteps(num_inference_steps=None, device=None, **kwargs):
        original(num_inference_steps + 1, device=device, **kwargs)
        sigmas = scheduler.sigmas
        scheduler.sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        scheduler.timesteps = scheduler.timesteps[:-1]
        scheduler.num_inference_steps = num_inference_steps

    scheduler.set_timesteps = set_timesteps


def _one_step_more(scheduler) -> None:
    original = scheduler.set_timesteps

    @functools.wraps(original)
    def set_timesteps(num_inference_steps=None, device=None, **kwargs):
        original(num_inference_steps + 1, device=device, **kwargs)

    scheduler.set_timesteps = set_timesteps


def _with_params(scheduler, sampler: Sampler, params: SamplerParams):
    """The parameters the scheduler's step takes, bound to it (the pipeline passes only its own)."""
    if ETA in sampler.honours and hasattr(scheduler, "eta"):
        scheduler.eta = params.eta
    if NOISE in sampler.honours and hasattr(scheduler, "s_noise"):
        scheduler.s_noise = params.s_noise
    bound: dict[str, Any] = {}
    step = inspect.signature(scheduler.step).parameters
    if CHURN in sampler.honours and "s_churn" in step:
        bound.update(s_churn=params.s_churn, s_tmin=params.s_tmin,
                     s_tmax=params.s_tmax if params.s_tmax > 0 else float("inf"), s_noise=params.s_noise)
    elif NOISE in sampler.honours and "s_noise" in step:
        bound["s_noise"] = params.s_noise
    if bound:
        # functools.partial keeps the signature, so the pipeline still sees (and passes) generator.
        scheduler.step = functools.partial(scheduler.step, **bound)
    return scheduler


def eta_for(sampler: Sampler, request_eta: float | None, settings) -> float:
    return request_eta if request_eta is not None else settings[sampler.eta_setting]


def parameters_from_settings(request, settings) -> dict[str, Any]:
    """The request's sampler parameters with those it leaves out taken from the settings (eta
    stays open: its setting depends on the sampler, and a hires pass may use another one)."""
    fields = {}
    for name in ("s_churn", "s_tmin", "s_tmax", "s_noise", "s_min_uncond", "eta_noise_seed_delta"):
        value = getattr(request, name)
        fields[name] = value if value is not None else settings[name]
    return fields


def parameter_notes(sampler: Sampler, request, always_discard: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The infotext keys of the parameters this job uses away from their defaults (the
    ecosystem's names), and a warning for each that this sampler does not apply here."""
    params = SamplerParams.of(request)
    changed = {
        ETA: {"Eta DDIM" if sampler.eta_setting == "eta_ddim" else "Eta": params.eta}
        if params.eta != sampler.eta_default else {},
        CHURN: {key: value for key, value, default in (
            ("Sigma churn", params.s_churn, 0.0), ("Sigma tmin", params.s_tmin, 0.0),
            ("Sigma tmax", params.s_tmax, 0.0)) if value != default},
        NOISE: {"Sigma noise": params.s_noise} if params.s_noise != 1.0 else {},
    }
    infotext: dict[str, Any] = {}
    warnings = []
    if always_discard and not sampler.discards and sampler.family in ("k", "timesteps"):
        if sampler.family == "timesteps" or discards_here(sampler, SamplerParams(always_discard=True)):
            infotext["Discard penultimate sigma"] = True
        else:
            warnings.append("Discard penultimate sigma: not used by the "
                            f"{sampler.name} sampler in this version")
    for group in (ETA, CHURN, NOISE):
        if not changed[group] or group not in sampler.uses:
            continue
        if group in sampler.honours:
            infotext.update(changed[group])
        else:
            warnings.append(f"{', '.join(changed[group])}: not used by the {sampler.name} sampler in "
                            "this version")
    return infotext, warnings


class EulerAncestralWithEta(diffusers.EulerAncestralDiscreteScheduler):
    """Euler a with eta, the ecosystem's knob for how much of each step's noise is fresh: the
    step goes down to sigma_down and adds noise of sigma_up, where
    sigma_up = min(sigma_next, eta * sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2))
    and sigma_down = sqrt(sigma_next^2 - sigma_up^2) (eta 1: diffusers' own step)."""

    eta = 1.0

    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True):
        if self.eta == 1.0:
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        sample = sample.to(torch.float32)
        denoised = _denoised(self.config.prediction_type, model_output, sample, sigma)
        sigma_up, sigma_down = ancestral_step(sigma, sigma_next, self.eta)
        prev = sample + (sample - denoised) / sigma * (sigma_down - sigma)
        noise = diffusers_randn(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                                generator=generator)
        prev = (prev + noise * sigma_up).to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return prev, denoised
        return diffusers.schedulers.scheduling_euler_ancestral_discrete.EulerAncestralDiscreteSchedulerOutput(
            prev_sample=prev, pred_original_sample=denoised)


class KDPM2AncestralWithEta(diffusers.KDPM2AncestralDiscreteScheduler):
    """DPM2 a with eta and s_noise: its down and up sigmas come from ancestral_step with the job's
    eta (the midpoint sigmas and their timesteps follow them), and its noise is scaled by s_noise."""

    eta = 1.0
    s_noise = 1.0

    def set_timesteps(self, num_inference_steps, device=None, num_train_timesteps=None):
        super().set_timesteps(num_inference_steps, device=device, num_train_timesteps=num_train_timesteps)
        if self.eta == 1.0:
            return
        # diffusers interleaves each step's values: [s0, s1, s1, ..., 0, 0, 0]; take one per
        # step ([s0, s1, ..., 0]), recompute with eta, interleave the same way.
        sigmas = torch.cat([self.sigmas[:1], self.sigmas[1:-1:2]])
        sigma_next = torch.cat([sigmas[1:], sigmas.new_zeros(1)])
        up, down = ancestral_step(sigmas, sigma_next, self.eta)
        down[-1] = 0.0
        interpol = sigmas.log().lerp(down.clamp_min(1e-30).log(), 0.5).exp()
        interpol[-2:] = 0.0

        def interleave(values):
            return torch.cat([values[:1], values[1:].repeat_interleave(2), values[-1:]])[:len(self.sigmas)]

        self.sigmas_up, self.sigmas_down, self.sigmas_interpol = interleave(up), interleave(down), interleave(interpol)
        log_sigmas = self.log_sigmas.cpu().numpy()
        steps = np.array([self._sigma_to_t(value, log_sigmas) for value in interpol.cpu().numpy()])
        interpol_t = torch.from_numpy(steps).to(self.timesteps.device, self.timesteps.dtype)
        timesteps = self.timesteps.clone()
        timesteps[1::2] = interpol_t[:-2][: len(timesteps[1::2])]  # the midpoint evaluations
        self.timesteps = timesteps

    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True):
        if self.s_noise == 1.0:
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        scaled = _ScaledGenerator(generator, self.s_noise)
        module = diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete
        original = module.randn_tensor
        module.randn_tensor = scaled.randn
        try:
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        finally:
            module.randn_tensor = original


_OWN_SCHEDULERS = {"EulerAncestralWithEta": EulerAncestralWithEta,
                   "KDPM2AncestralWithEta": KDPM2AncestralWithEta}


def ancestral_step(sigma, sigma_next, eta: float):
    """(sigma_up, sigma_down) of an ancestral step from sigma to sigma_next with this eta."""
    sigma_up = torch.minimum(torch.as_tensor(sigma_next),
                             eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5)
    sigma_down = (sigma_next ** 2 - sigma_up ** 2) ** 0.5
    return sigma_up, sigma_down


def _denoised(prediction_type: str, model_output, sample, sigma):
    if prediction_type == "v_prediction":
        return model_output * (-sigma / (sigma ** 2 + 1) ** 0.5) + sample / (sigma ** 2 + 1)
    return sample - sigma * model_output


def diffusers_randn(*args, **kwargs):
    """diffusers' randn_tensor as the scheduler modules see it now (the fast path may swap it)."""
    return diffusers.schedulers.scheduling_euler_ancestral_discrete.randn_tensor(*args, **kwargs)


class _ScaledGenerator:
    def __init__(self, generator, scale: float):
        self.generator, self.scale = generator, scale
        self.original = diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete.randn_tensor

    def randn(self, *args, **kwargs):
        return self.original(*args, **kwargs) * self.scale


def api_sampler_list() -> list[dict[str, Any]]:
    return [
        {"name": s.name, "aliases": list(s.aliases),
         "options": {"scheduler": s.default_schedule.lower()} if s.default_schedule != "model" else {}}
        for s in SAMPLERS
    ]


def api_schedule_list() -> list[dict[str, Any]]:
    return [
        {"name": name.lower().replace(" ", "_"), "label": name, "aliases": None,
         "default_rho": -1, "need_inner_model": False}
        for name in SCHEDULE_TYPES
    ]
