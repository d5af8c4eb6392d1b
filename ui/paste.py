"""Generation parameters (infotext) into a tab's controls: "send to", the paste button, and a
PNG dropped on a prompt box all go through `control_values`."""

from __future__ import annotations

import re
from typing import Any

from engine.sampling import samplers
from engine import image_prep

from engine.output import infotext
from engine.controlnet.units import MAX_UNITS
from engine.errors import RequestError, UserError

SEED_FIELDS = ("seed", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h")
SIZE_FIELDS = ("width", "height")
# Request fields that the UI shows as a named choice rather than a number.
CHOICE_NAMES = {
    "inpainting_fill": image_prep.MASKED_CONTENT,
    "resize_mode": image_prep.RESIZE_MODES,
    "inpaint_full_res": image_prep.INPAINT_AREAS,
    "inpainting_mask_invert": image_prep.MASK_MODES,
}


# A "ControlNet N" infotext entry's keys -> the unit's control, and how to read the value.
_UNIT_KEYS = {"Module": ("module", str), "Model": ("model", str), "Weight": ("weight", float),
              "Resize Mode": ("resize_mode", str), "Processor Res": ("processor_res", int),
              "Threshold A": ("threshold_a", float), "Threshold B": ("threshold_b", float),
              "Guidance Start": ("guidance_start", float), "Guidance End": ("guidance_end", float),
              "Pixel Perfect": ("pixel_perfect", lambda v: v.strip().lower() == "true"),
              "Control Mode": ("control_mode", str)}
_UNIT = re.compile(r"^ControlNet (\d+)$")
CONTROLNET_PASTABLE = tuple(f"cn::{unit}::{field}" for unit in range(MAX_UNITS)
                            for field in ("enabled", *(name for name, _ in _UNIT_KEYS.values())))


# Infotext keys A1111 keeps as settings and we take per request: (key, request field, setting,
# type). A pasted picture carries the ones that differ from the current settings as "Override
# settings" entries ("RNG: NV"), so that it is made again as it was; the user can remove them.
OVERRIDES = (("RNG", "randn_source", "randn_source", str),
             ("Clip skip", "clip_skip", "CLIP_stop_at_last_layers", int),
             ("Emphasis", "emphasis", "emphasis", str),
             ("Noise Schedule", "noise_schedule", "sd_noise_schedule", str))


def override_entries(fields: dict[str, Any], settings=None) -> list[str]:
    """The "Override settings" entries for the request fields an infotext gave."""
    return [f"{key}: {fields[field]}" for key, field, setting, _ in OVERRIDES
            if field in fields and (settings is None or fields[field] != settings[setting])]


def override_fields(entries) -> dict[str, Any]:
    """The request fields of "Override settings" entries; a damaged entry is named."""
    known = {key.lower(): (field, kind) for key, field, _, kind in OVERRIDES}
    fields: dict[str, Any] = {}
    for entry in entries or ():
        key, colon, text = str(entry).partition(":")
        field, kind = known.get(key.strip().lower(), (None, None))
        if not colon or field is None:
            raise RequestError(f"Unknown override setting '{entry}': it must be one of "
                               f"{', '.join(key for key, *_ in OVERRIDES)} with a value, like 'RNG: CPU'",
                               "override_settings")
        try:
            fields[field] = kind(text.strip())
        except ValueError:
            wanted = "whole number" if kind is int else "text"
            raise RequestError(f"Unreadable override setting '{entry}': its value must be a {wanted}",
                               "override_settings") from None
    return fields


def controlnet_values(params: dict[str, str]) -> dict[str, Any]:
    """The units an infotext records, as the unit controls' values (the pictures are not in it)."""
    values: dict[str, Any] = {}
    for key, text in params.items():
        match = _UNIT.match(key)
        if not match or int(match.group(1)) >= MAX_UNITS:
            continue
        unit = int(match.group(1))
        values[f"cn::{unit}::enabled"] = True
        for name, value in infotext.parse_pairs(text).items():
            if name in _UNIT_KEYS:
                field, read = _UNIT_KEYS[name]
                try:
                    values[f"cn::{unit}::{field}"] = read(value)
                except ValueError:
                    continue  # a damaged value leaves that control as it is
    return values


def control_values(text: str, send_seed: bool = True, send_size: bool = True,
                   settings=None) -> dict[str, Any]:
    """{control name: value} for the parameters an infotext holds; `settings` (the current ones)
    leave out the override entries that would change nothing."""
    if not text or not text.strip():
        return {}
    fields = infotext.request_fields(text)
    values: dict[str, Any] = {"override_settings": override_entries(fields, settings)}
    for name, value in fields.items():
        if name in ("model_hash", "model_name", "modules") or any(name == field for _, field, *_ in OVERRIDES):
            continue  # not tab controls: the checkpoint bar and the override entries hold these
        if (name in SEED_FIELDS and not send_seed) or (name in SIZE_FIELDS and not send_size):
            continue
        if name in CHOICE_NAMES:
            value = CHOICE_NAMES[name][int(value)]
        values[name] = value
    _resolve_sampler(values)
    # As A1111's Refiner accordion: on exactly when the parameters name a refiner.
    values["refiner_enabled"] = "refiner_checkpoint" in fields
    values.update(controlnet_values(infotext.parse(text)[2]))
    if send_seed and (values.get("subseed_strength", 0) > 0 or values.get("seed_resize_from_w", 0) > 0):
        values["subseed_show"] = True
    return values


def _resolve_sampler(values: dict[str, Any]) -> None:
    """Old combined names ("DPM++ 2M Karras") become a sampler and a schedule type."""
    if "sampler_name" not in values:
        return
    try:
        sampler, schedule = samplers.resolve(values["sampler_name"], values.get("scheduler", "Automatic"))
    except UserError:
        values.pop("sampler_name")
        values.pop("scheduler", None)
        return
    values["sampler_name"] = sampler.name
    values["scheduler"] = schedule


def has_parameters(text: str) -> bool:
    """Whether text is an infotext (has a parameters line), not just a prompt."""
    return bool(text) and bool(infotext.parse(text)[2])
