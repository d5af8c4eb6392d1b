"""Generation parameters (infotext) into a tab's controls: "send to", the paste button, and a
PNG dropped on a prompt box all go through `control_values`."""

from __future__ import annotations

from typing import Any

from engine import image_prep, infotext, samplers
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
