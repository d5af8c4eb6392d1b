"""The one place the UI's control values become a GenerationRequest."""

from __future__ import annotations

import math
from typing import Any

from engine.errors import RequestError
from engine.families.flux import DEFAULT_DISTILLED_CFG
from engine.request import GenerationRequest

from .controlnet_ui import units_from_values
from .extension_fields import extension_values
from .paste import override_fields
from .refiner_ui import refiner_fields
from .script_fields import script_fields


def whole(value: Any, name: str) -> Any:
    """Sliders and number boxes send floats; whole floats become ints, anything else is refused."""
    if value is None:
        raise RequestError(f"{name} is empty", name)
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise RequestError(f"{name} must be a whole number, got {value:g}", name)
        return int(value)
    return value


INT_FIELDS = ("steps", "width", "height", "batch_size", "n_iter", "seed", "subseed",
              "seed_resize_from_w", "seed_resize_from_h")


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def request_from_ui(values: dict[str, Any], mode: str = "txt2img") -> GenerationRequest:
    """Build (and validate) a request from {control name: value}."""
    return GenerationRequest(**common_fields(values, mode)).validate()


def common_fields(values: dict[str, Any], mode: str) -> dict[str, Any]:
    """The request fields every generation tab has."""
    fields: dict[str, Any] = {
        "mode": mode,
        "prompt": values.get("prompt") or "",
        "negative_prompt": values.get("negative_prompt") or "",
        "sampler_name": values["sampler_name"],
        "scheduler": values.get("scheduler") or "Automatic",
        "cfg_scale": values["cfg_scale"],
        "cfg_rescale": values.get("cfg_rescale") or 0.0,
        "distilled_cfg_scale": _given(values.get("distilled_cfg_scale"), DEFAULT_DISTILLED_CFG),
        "shift": values.get("shift") or 0.0,
        "styles": tuple(values.get("styles") or ()),
        "extensions": extension_values(values),
        "controlnet_units": units_from_values(values),
    }
    for name in INT_FIELDS:
        if name in values:
            fields[name] = whole(values[name], name)
    fields.update(override_fields(values.get("override_settings")))
    fields.update(script_fields(values))
    fields.update(refiner_fields(values))
    if values.get("subseed_show"):
        fields["subseed_strength"] = values.get("subseed_strength") or 0.0
    else:
        # Hidden variation options do not apply, as users of the mature UIs expect.
        fields.update(subseed=-1, subseed_strength=0.0, seed_resize_from_w=0, seed_resize_from_h=0)
    return fields


def named_values(controls: dict[str, Any], data: dict) -> dict[str, Any]:
    """Gradio's dict inputs are keyed by component; turn them into {control name: value}."""
    return {name: data[component] for name, component in controls.items() if component in data}
