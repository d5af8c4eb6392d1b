"""Sampler names users know, mapped onto diffusers schedulers.

The names and aliases are the ecosystem's (COMPAT.md). A sampler plus a schedule type gives a
scheduler built from the loaded model's own scheduler config, so the model's beta schedule and
prediction type (epsilon or v) always carry over.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import diffusers

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


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler_class: str
    aliases: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    default_schedule: str = "Uniform"
    # Ancestral and SDE samplers add fresh noise every step; the seed must drive it too.
    stochastic: bool = False

    @property
    def cls(self) -> type:
        return getattr(diffusers, self.scheduler_class)

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


SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", ("k_dpmpp_2m",), _dpmpp(), "Karras"),
    Sampler("DPM++ SDE", "DPMSolverSDEScheduler", ("k_dpmpp_sde",), {}, "Karras", stochastic=True),
    Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", ("k_dpmpp_2m_sde",),
            _dpmpp(algorithm_type="sde-dpmsolver++"), "Karras", stochastic=True),
    Sampler("DPM++ 2M SDE Heun", "DPMSolverMultistepScheduler", ("k_dpmpp_2m_sde_heun",),
            _dpmpp(algorithm_type="sde-dpmsolver++", solver_type="heun"), "Karras", stochastic=True),
    Sampler("DPM++ 3M SDE", "DPMSolverMultistepScheduler", ("k_dpmpp_3m_sde",),
            _dpmpp(algorithm_type="sde-dpmsolver++", solver_order=3), "Exponential", stochastic=True),
    Sampler("Euler a", "EulerAncestralDiscreteScheduler", ("k_euler_a", "k_euler_ancestral"),
            stochastic=True),
    Sampler("Euler", "EulerDiscreteScheduler", ("k_euler",)),
    Sampler("LMS", "LMSDiscreteScheduler", ("k_lms",)),
    Sampler("Heun", "HeunDiscreteScheduler", ("k_heun",)),
    Sampler("DPM2", "KDPM2DiscreteScheduler", ("k_dpm_2",), {}, "Karras"),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", ("k_dpm_2_a",), {}, "Karras", stochastic=True),
    Sampler("DDIM", "DDIMScheduler", ("ddim",), MappingProxyType({"set_alpha_to_one": False}), "model"),
    Sampler("PLMS", "PNDMScheduler", ("plms",), MappingProxyType({"skip_prk_steps": True}), "model"),
    Sampler("UniPC", "UniPCMultistepScheduler", ("unipc",), {}, "model"),
    Sampler("LCM", "LCMScheduler", ("k_lcm",), {}, "model", stochastic=True),
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


def build_scheduler(sampler: Sampler, schedule: str, model_config: Mapping[str, Any], seed: int):
    """A fresh scheduler for one job, from the model's original scheduler config."""
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
    return sampler.cls.from_config({k: v for k, v in config.items() if k in accepted})


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
