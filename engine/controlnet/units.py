"""A ControlNet unit: what one control image, preprocessor and model should do to a job.

Field names and defaults follow the ecosystem's API (COMPAT.md), so client programs' units read
as they are; `from_api` also takes the older spellings of the resize and control modes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from PIL import Image

from engine.controlnet.layouts import UNION_CONTROL_TYPES
from engine.errors import RequestError
from engine.validation import Flag, Number, Whole

MAX_UNITS = 3  # what the tabs show; the API takes up to the control_net_unit_count setting
MOST_UNITS = 10  # the largest control_net_unit_count: more units are refused before any is read
NO_MODEL = "None"
# Preprocessors that act with no model (engine/controlnet/reference.py).
MODEL_FREE_MODULES = ("reference_only", "reference_adain", "reference_adain+attn")
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
BALANCED, PROMPT_MORE, CONTROLNET_MORE = CONTROL_MODES
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
# The older names API clients still send, lower-cased, and the index forms.
_RESIZE_ALIASES = {"envelope (outer fit)": "Crop and Resize", "scale to fit (inner fit)": "Resize and Fill",
                   "inner fit": "Resize and Fill", "outer fit": "Crop and Resize"}


@dataclass(frozen=True)
class ControlUnit:
    enabled: bool = False
    module: str = "none"                 # the preprocessor
    model: str = NO_MODEL                # a ControlNet in models/ControlNet
    weight: float = 1.0                  # 0-2
    image: Image.Image | None = None     # the control image (img2img falls back to the init image)
    mask: Image.Image | None = None      # for inpaint preprocessors; white = masked
    resize_mode: str = "Crop and Resize"
    processor_res: int = 512             # -1: the preprocessor's default
    threshold_a: float = -1.0            # -1: the preprocessor's default
    threshold_b: float = -1.0
    guidance_start: float = 0.0          # fraction of the steps where control begins...
    guidance_end: float = 1.0            # ...and ends
    pixel_perfect: bool = False          # preprocess at the resolution the output needs
    control_mode: str = BALANCED
    save_detected_map: bool = True       # return (and save) the detected map with the pictures
    union_control_type: str = ""         # a Union / ProMax model's control type; "": the preprocessor's
    more_images: tuple = ()              # IP-Adapter units: further reference pictures, averaged

    @property
    def model_free(self) -> bool:
        """A unit whose preprocessor acts on its own (reference_only, reference_adain): its model is ignored."""
        return self.module.strip().lower() in MODEL_FREE_MODULES

    def replace(self, **changes: Any) -> "ControlUnit":
        return dataclasses.replace(self, **changes)

    def validate(self, index: int) -> "ControlUnit":
        """Check the values that need no model or file; raise RequestError naming the unit."""
        where = f"ControlNet unit {index}"
        Number(0.0, 2.0).check(self.weight, f"{where}: weight", "weight")
        for name in ("guidance_start", "guidance_end"):
            Number(0.0, 1.0).check(getattr(self, name), f"{where}: {name}", name)
        if self.processor_res != -1:  # -1: the preprocessor's default
            Whole(64, 2048).check(self.processor_res, f"{where}: processor_res (-1 for the default)",
                                  "processor_res")
        for name in ("threshold_a", "threshold_b"):
            Number().check(getattr(self, name), f"{where}: {name}", name)
        Flag().check(self.enabled, f"{where}: enabled", "enabled")
        Flag().check(self.save_detected_map, f"{where}: save_detected_map", "save_detected_map")
        if self.union_control_type and self.union_control_type not in UNION_CONTROL_TYPES:
            raise RequestError(f"{where}: unknown union_control_type '{self.union_control_type}'. Known: "
                               f"{', '.join(UNION_CONTROL_TYPES)}", "union_control_type")
        if self.guidance_start >= self.guidance_end:
            raise RequestError(f"{where}: guidance_start ({self.guidance_start}) must be below "
                               f"guidance_end ({self.guidance_end})", "guidance_start")
        if self.resize_mode not in RESIZE_MODES:
            raise RequestError(f"{where}: unknown resize mode '{self.resize_mode}'. Known: "
                               f"{', '.join(RESIZE_MODES)}", "resize_mode")
        if self.control_mode not in CONTROL_MODES:
            raise RequestError(f"{where}: unknown control mode '{self.control_mode}'. Known: "
                               f"{', '.join(CONTROL_MODES)}", "control_mode")
        if self.enabled and (not self.model or self.model == NO_MODEL) and not self.model_free:
            raise RequestError(f"{where} is enabled but has no model: pick a ControlNet model", "model")
        for name in ("image", "mask"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Image.Image):
                raise RequestError(f"{where}: {name} is not an image", name)
        if not all(isinstance(value, Image.Image) for value in self.more_images):
            raise RequestError(f"{where}: every reference image must be an image", "image")
        return self

    def active_at(self, step: int, total: int) -> bool:
        """Whether this step lies in the unit's window (as a fraction of the steps that run)."""
        total = max(1, total)
        return not (step / total < self.guidance_start or (step + 1) / total > self.guidance_end)

    def params(self) -> dict[str, Any]:
        """What the infotext records of this unit (as the ecosystem writes it)."""
        return {"Module": self.module, "Model": self.model, "Weight": _number(self.weight),
                "Resize Mode": self.resize_mode, "Processor Res": self.processor_res,
                "Threshold A": _number(self.threshold_a), "Threshold B": _number(self.threshold_b),
                "Guidance Start": _number(self.guidance_start), "Guidance End": _number(self.guidance_end),
                "Pixel Perfect": self.pixel_perfect, "Control Mode": self.control_mode}

    def infotext_value(self) -> str:
        return ", ".join(f"{key}: {value}" for key, value in self.params().items())


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(float(value), 4)


def resize_mode_name(value: Any) -> str:
    """An API resize mode (a name, an old name, or an index) as one of RESIZE_MODES."""
    if isinstance(value, bool):
        raise RequestError(f"Unknown ControlNet resize mode {value!r}", "resize_mode")
    if isinstance(value, int):
        if 0 <= value < len(RESIZE_MODES):
            return RESIZE_MODES[value]
        raise RequestError(f"ControlNet resize_mode index must be 0-{len(RESIZE_MODES) - 1}, got {value}",
                           "resize_mode")
    text = str(value).strip()
    for name in RESIZE_MODES:
        if text.lower() == name.lower():
            return name
    if text.lower() in _RESIZE_ALIASES:
        return _RESIZE_ALIASES[text.lower()]
    raise RequestError(f"Unknown ControlNet resize mode '{text}'. Known: {', '.join(RESIZE_MODES)}",
                       "resize_mode")


def control_mode_name(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(CONTROL_MODES):
            return CONTROL_MODES[value]
        raise RequestError(f"ControlNet control_mode index must be 0-2, got {value}", "control_mode")
    text = str(value).strip()
    for name in CONTROL_MODES:
        if text.lower() == name.lower():
            return name
    raise RequestError(f"Unknown ControlNet control mode '{text}'. Known: {', '.join(CONTROL_MODES)}",
                       "control_mode")


def pixel_perfect_resolution(image: Image.Image, width: int, height: int, resize_mode: str) -> int:
    """The preprocessor resolution at which the map comes out at the size the generation uses:
    the image's short side once it is scaled to cover the output (crop) or fit inside it (fill)."""
    scale_w, scale_h = width / image.width, height / image.height
    scale = min(scale_w, scale_h) if resize_mode == "Resize and Fill" else max(scale_w, scale_h)
    return max(64, min(2048, round(scale * min(image.width, image.height))))
