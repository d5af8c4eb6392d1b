"""The sampler names and schedule types users know, as AUTOMATIC1111 v1.10 defines them.

Each sampler says how A1111 runs it: a k-diffusion-style function over sigmas ("k"), a timestep
sampler (DDIM, DDIM CFG++, PLMS, UniPC), or LCM; its own schedule when the schedule type is
Automatic; whether it drops the next-to-last sigma, draws Brownian noise, uses the eta noise seed
delta, and which of eta, s_churn, s_tmin, s_tmax and s_noise it takes. The functions themselves
live in engine/sampling.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import NotFoundError, RequestError
from engine.sampling.schedules import SCHEDULE_TYPES as _SCHEDULES

SCHEDULE_TYPES: tuple[str, ...] = tuple(schedule.label for schedule in _SCHEDULES)

# The sampler parameters of the ecosystem's API, grouped as its infotext writes them.
ETA, CHURN, NOISE = "eta", "churn", "s_noise"
_CHURNING = frozenset({CHURN, NOISE})
_ANCESTRAL = frozenset({ETA, NOISE})

K, TIMESTEPS, LCM = "k", "timesteps", "lcm"


@dataclass(frozen=True)
class Sampler:
    name: str
    function: str            # the name of its function in engine/sampling
    aliases: tuple[str, ...] = ()
    kind: str = K
    # Its schedule when the schedule type is Automatic; None: the model's own (Uniform).
    default_schedule: str | None = None
    discards: bool = False   # computes steps+1 sigmas and drops the next-to-last
    brownian: bool = False   # SDE: Brownian-tree noise seeded with the image seeds
    second_order: bool = False
    uses_ensd: bool = False  # its step noise is what an eta noise seed delta changes
    solver_type: str | None = None
    uses: frozenset = frozenset()  # which of eta / churn / s_noise it takes
    eta_default: float = 1.0
    eta_setting: str = "eta_ancestral"

    @property
    def stochastic(self) -> bool:
        return ETA in self.uses or self.brownian

    @property
    def takes_schedule(self) -> bool:
        return self.kind != TIMESTEPS


def _timestep_sampler(name: str, function: str, aliases: tuple[str, ...], uses=frozenset()) -> Sampler:
    return Sampler(name, function, aliases, kind=TIMESTEPS, uses=uses, eta_default=0.0, eta_setting="eta_ddim")


SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", "sample_dpmpp_2m", ("k_dpmpp_2m",), default_schedule="Karras"),
    Sampler("DPM++ SDE", "sample_dpmpp_sde", ("k_dpmpp_sde",), default_schedule="Karras", second_order=True,
            brownian=True, uses=_ANCESTRAL),
    Sampler("DPM++ 2M SDE", "sample_dpmpp_2m_sde", ("k_dpmpp_2m_sde",), default_schedule="Exponential",
            brownian=True, uses=_ANCESTRAL),
    Sampler("DPM++ 2M SDE Heun", "sample_dpmpp_2m_sde", ("k_dpmpp_2m_sde_heun",), default_schedule="Exponential",
            brownian=True, solver_type="heun", uses=_ANCESTRAL),
    Sampler("DPM++ 2S a", "sample_dpmpp_2s_ancestral", ("k_dpmpp_2s_a",), default_schedule="Karras",
            uses_ensd=True, second_order=True, uses=_ANCESTRAL),
    Sampler("DPM++ 3M SDE", "sample_dpmpp_3m_sde", ("k_dpmpp_3m_sde",), default_schedule="Exponential",
            discards=True, brownian=True, uses=_ANCESTRAL),
    Sampler("Euler a", "sample_euler_ancestral", ("k_euler_a", "k_euler_ancestral"), uses_ensd=True,
            uses=frozenset({ETA})),
    Sampler("Euler", "sample_euler", ("k_euler",), uses=_CHURNING),
    Sampler("LMS", "sample_lms", ("k_lms",)),
    Sampler("Heun", "sample_heun", ("k_heun",), second_order=True, uses=_CHURNING),
    Sampler("DPM2", "sample_dpm_2", ("k_dpm_2",), default_schedule="Karras", discards=True, second_order=True,
            uses=_CHURNING),
    Sampler("DPM2 a", "sample_dpm_2_ancestral", ("k_dpm_2_a",), default_schedule="Karras", discards=True,
            uses_ensd=True, second_order=True, uses=_ANCESTRAL),
    Sampler("DPM fast", "sample_dpm_fast", ("k_dpm_fast",), uses_ensd=True, uses=_ANCESTRAL),
    Sampler("DPM adaptive", "sample_dpm_adaptive", ("k_dpm_ad",), uses_ensd=True, uses=frozenset({ETA})),
    Sampler("Restart", "restart", ("restart",), default_schedule="Karras", second_order=True),
    _timestep_sampler("DDIM", "ddim", ("ddim",), uses=frozenset({ETA})),
    _timestep_sampler("DDIM CFG++", "ddim_cfgpp", ("ddim_cfgpp",), uses=frozenset({ETA})),
    _timestep_sampler("PLMS", "plms", ("plms",)),
    _timestep_sampler("UniPC", "unipc", ("unipc",)),
    Sampler("LCM", "lcm", ("k_lcm",), kind=LCM),
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
        raise NotFoundError(
            f"Sampler not found: '{name}'. Available: {', '.join(sampler_names())}",
            field="sampler_name")
    schedule = resolve_schedule_name(schedule)
    if schedule == "Automatic" and embedded:
        schedule = embedded
    return sampler, schedule


def resolve_schedule_name(schedule: str | None) -> str:
    if schedule is None or str(schedule).strip() == "":
        return "Automatic"
    wanted = str(schedule).strip().lower().replace("_", " ")
    for entry in _SCHEDULES:
        names = [entry.label, entry.name, *(entry.aliases or ())]
        if wanted in (name.lower().replace("_", " ") for name in names):
            return entry.label
    # The API's lower-case labels ("karras", "sgm_uniform") are accepted above; anything else is not.
    raise RequestError(
        f"Unknown schedule type '{schedule}'. Choose one of: {', '.join(SCHEDULE_TYPES)}",
        field="scheduler")


def effective_schedule(sampler: Sampler, schedule: str) -> str | None:
    """The schedule type that actually applies and that the infotext names: Automatic means the
    sampler's own default; None where A1111 writes none (the model's own schedule of Euler and
    friends under Automatic, and every timestep sampler, which has no schedule type)."""
    if not sampler.takes_schedule:
        return None
    return sampler.default_schedule if schedule == "Automatic" else schedule


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


def sampler_parameters(sampler: Sampler, request, eta: float) -> dict[str, Any]:
    """The keyword arguments A1111 gives this sampler's function (s_tmax 0 means no bound)."""
    kwargs: dict[str, Any] = {}
    if ETA in sampler.uses:
        kwargs["eta"] = eta
    if CHURN in sampler.uses:
        kwargs.update(s_churn=request.s_churn or 0.0, s_tmin=request.s_tmin or 0.0,
                      s_tmax=request.s_tmax or float("inf"))
    if NOISE in sampler.uses:
        kwargs["s_noise"] = 1.0 if request.s_noise is None else request.s_noise
    return kwargs


def parameter_notes(sampler: Sampler, request, always_discard: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The infotext keys of the parameters this job uses away from their defaults (A1111's names),
    and notes for what this sampler does not use."""
    eta = 1.0 if request.eta is None else request.eta
    churn = {key: value for key, value, default in (
        ("Sigma churn", request.s_churn, 0.0), ("Sigma tmin", request.s_tmin, 0.0),
        ("Sigma tmax", request.s_tmax, 0.0)) if value is not None and value != default}
    noise = {"Sigma noise": request.s_noise} if request.s_noise is not None and request.s_noise != 1.0 else {}
    changed = {
        ETA: {"Eta DDIM" if sampler.eta_setting == "eta_ddim" else "Eta": eta} if eta != sampler.eta_default else {},
        CHURN: churn,
        NOISE: noise,
    }
    infotext: dict[str, Any] = {}
    warnings = []
    if always_discard and not sampler.discards:
        infotext["Discard penultimate sigma"] = True
    for group in (ETA, CHURN, NOISE):
        if not changed[group]:
            continue
        if group in sampler.uses:
            infotext.update(changed[group])
        elif group == ETA:
            warnings.append(f"{', '.join(changed[group])}: not used by the {sampler.name} sampler")
    return infotext, warnings


def api_sampler_list() -> list[dict[str, Any]]:
    def options(sampler: Sampler) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if sampler.default_schedule:
            found["scheduler"] = sampler.default_schedule.lower()
        for flag in ("discards", "brownian", "second_order", "uses_ensd"):
            if getattr(sampler, flag):
                # A1111's API gives these as strings ("True"), its pydantic models coerce them.
                found[{"discards": "discard_next_to_last_sigma", "brownian": "brownian_noise"}.get(flag, flag)] = "True"
        if sampler.solver_type:
            found["solver_type"] = sampler.solver_type
        return found

    return [{"name": s.name, "aliases": list(s.aliases), "options": options(s)} for s in SAMPLERS]


def api_schedule_list() -> list[dict[str, Any]]:
    return [
        {"name": entry.name, "label": entry.label, "aliases": list(entry.aliases) if entry.aliases else None,
         "default_rho": entry.default_rho, "need_inner_model": entry.need_inner_model}
        for entry in _SCHEDULES
    ]


def schedule_parameters(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The schedule settings A1111 applies when set (0: the model's own sigma range, the
    schedule's own rho)."""
    return {key: settings[key] for key in ("sigma_min", "sigma_max", "rho", "beta_dist_alpha", "beta_dist_beta")}
