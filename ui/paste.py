"""Generation parameters (infotext) into a tab's controls: "send to", the paste button, and a
PNG dropped on a prompt box all go through `control_values`."""

from __future__ import annotations

import re
from typing import Any

from engine import image_prep, infotext, samplers
from engine.controlnet.units import MAX_UNITS
from engine.errors import UserError

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


def control_values(text: str, send_seed: bool = True, send_size: bool = True) -> dict[str, Any]:
    """{control name: value} for the parameters an infotext holds."""
    if not text or not text.strip():
        return {}
    fields = infotext.request_fields(text)
    values: dict[str, Any] = {}
    for name, value in fields.items():
        if name in ("model_hash", "model_name", "clip_skip", "emphasis"):
            continue  # not tab controls: the checkpoint bar and settings hold these
        if (name in SEED_FIELDS and not send_seed) or (name in SIZE_FIELDS and not send_size):
            continue
        if name in CHOICE_NAMES:
            value = CHOICE_NAMES[name][int(value)]
        values[name] = value
    _resolve_sampler(values)
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
