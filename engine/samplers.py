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

from .errors import NotFoundError, RequestError
from .sampler_schedulers import OWN_SCHEDULERS, PLAIN_SCHEDULES, discard_penultimate

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
        return OWN_SCHEDULERS.get(self.scheduler_class) or getattr(diffusers, self.scheduler_class)

    @property
    def discards_itself(self) -> bool:
        """Its scheduler class drops the next-to-last sigma on its own (DPM2's interleaved one)."""
        return self.scheduler_class in ("KDPM2WithDiscard", "KDPM2AncestralWithEta")

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
    Sampler("DPM2", "KDPM2WithDiscard", ("k_dpm_2",), {}, "Karras", uses=_CHURNING, discards=True),
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
    if discards_here(sampler, params) and not sampler.discards_itself:
        discard_penultimate(scheduler)
    return _with_params(scheduler, sampler, params)


def discards_here(sampler: Sampler, params: SamplerParams) -> bool:
    """Whether this job's schedule drops its next-to-last sigma here (as the ecosystem's does for
    some samplers, and for every k-diffusion one with the setting)."""
    wanted = sampler.discards or (params.always_discard and sampler.family == "k")
    return wanted and (sampler.scheduler_class in PLAIN_SCHEDULES or sampler.discards_itself)


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
    if always_discard and not sampler.discards and sampler.family == "k":
        if discards_here(sampler, SamplerParams(always_discard=True)):
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
