"""ControlNet in the HTTP API, as client programs of the ecosystem's ControlNet extension speak
it: units inside `alwayson_scripts: {"controlnet": {"args": [unit, ...]}}` on txt2img/img2img,
and the /controlnet routes (model_list, module_list, version, detect)."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Body, Depends

from engine.controlnet import preprocessors
from engine.controlnet.layouts import UNION_CONTROL_TYPES
from engine.controlnet.units import MOST_UNITS, ControlUnit, control_mode_name, resize_mode_name
from engine.errors import RequestError, UserError
from engine.output.writer import png_bytes
from engine.runs.uploads import image_from_base64

from .models import MAX_LIST_ITEMS, Image, Name

SCRIPT_TITLES = ("controlnet",)  # the alwayson_scripts key, case-insensitive
API_VERSION = 2
_NUMBERS = ("weight", "processor_res", "threshold_a", "threshold_b", "guidance_start", "guidance_end")


def _image_field(value: Any, field: str, limit: float) -> tuple[Any, Any]:
    """A unit's image: base64, or {"image": ..., "mask": ...} as some clients send it."""
    if value is None or value == "":
        return None, None
    if isinstance(value, dict):
        image = _image_field(value.get("image"), field, limit)[0]
        mask = _image_field(value.get("mask"), f"{field}.mask", limit)[0]
        return image, mask
    if not isinstance(value, str):
        raise RequestError(f"{field} must be a base64 image", field)
    return image_from_base64(value, field, limit), None


def _flag(value: Any, field: str) -> bool:
    """true/false, as JSON or as the strings some clients send ("false" must not read as on)."""
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise RequestError(f"{field} must be true or false, got {value!r}", field.rsplit(".", 1)[-1])


def unit_from_api(data: Any, index: int, limit: float) -> ControlUnit:
    where = f"alwayson_scripts.controlnet.args[{index}]"
    if not isinstance(data, dict):
        raise RequestError(f"{where} must be an object (a ControlNet unit)", "alwayson_scripts")
    fields: dict[str, Any] = {"enabled": _flag(data.get("enabled", True), f"{where}.enabled")}
    union = data.get("union_control_type")
    if isinstance(union, str):   # the extension's names in any case; its "Unknown": the preprocessor's
        known = {kind.lower(): kind for kind in UNION_CONTROL_TYPES}
        data = {**data, "union_control_type": known.get(union.strip().lower(), union) if
                union.strip().lower() != "unknown" else None}
    for name in ("module", "model", "union_control_type"):
        if name in data and data[name] is not None:
            if not isinstance(data[name], str):
                raise RequestError(f"{where}.{name} must be a name", name)
            fields[name] = data[name]
    for name in _NUMBERS:
        if data.get(name) is not None:
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RequestError(f"{where}.{name} must be a number, got {value!r}", name)
            fields[name] = int(value) if name == "processor_res" else float(value)
    for name in ("pixel_perfect", "save_detected_map"):
        if data.get(name) is not None:
            fields[name] = _flag(data[name], f"{where}.{name}")
    if data.get("resize_mode") is not None:
        fields["resize_mode"] = resize_mode_name(data["resize_mode"])
    if data.get("control_mode") is not None:
        fields["control_mode"] = control_mode_name(data["control_mode"])
    given = data.get("image", data.get("input_image"))
    # IP-Adapter units take several reference pictures (averaged): a list, or batch_images.
    pictures = list(given) if isinstance(given, list) else [given]
    batch = data.get("batch_images")
    if batch not in (None, "", []):
        if not isinstance(batch, list):
            raise RequestError(f"{where}.batch_images must be a list of base64 images", "batch_images")
        pictures += batch
    if len(pictures) > MOST_UNITS * 2:
        raise RequestError(f"{where}: at most {MOST_UNITS * 2} reference images per unit", "image")
    read = [_image_field(picture, f"{where}.image[{i}]" if len(pictures) > 1 else f"{where}.image", limit)
            for i, picture in enumerate(pictures)]
    read = [pair for pair in read if pair[0] is not None] or [(None, None)]
    (image, mask), more = read[0], tuple(pair[0] for pair in read[1:])
    explicit_mask = data.get("mask", data.get("mask_image"))
    if explicit_mask:
        mask = _image_field(explicit_mask, f"{where}.mask", limit)[0]
    return ControlUnit(image=image, mask=mask, more_images=more, **fields)


def units_from_scripts(alwayson_scripts: dict | None, limit: float) -> tuple[ControlUnit, ...]:
    """The ControlNet units of a txt2img/img2img body (none when it has no controlnet entry)."""
    for title, payload in (alwayson_scripts or {}).items():
        if title.lower() in SCRIPT_TITLES:
            args = payload.get("args", []) if isinstance(payload, dict) else payload
            if not isinstance(args, list):
                raise RequestError("alwayson_scripts.controlnet.args must be a list of units", "alwayson_scripts")
            if len(args) > MOST_UNITS:
                raise RequestError(f"At most {MOST_UNITS} ControlNet units per request, got {len(args)}",
                                   "alwayson_scripts")
            return tuple(unit_from_api(unit, i, limit) for i, unit in enumerate(args))
    return ()


def is_controlnet_script(title: str) -> bool:
    return title.lower() in SCRIPT_TITLES


def build_router(ctx, auth_dependency) -> APIRouter:
    router = APIRouter(prefix="/controlnet", dependencies=[Depends(auth_dependency)], tags=["controlnet"])
    engine = ctx.engine

    @router.get("/version")
    def version() -> dict:
        return {"version": API_VERSION}

    @router.get("/model_list")
    def model_list() -> dict:
        return {"model_list": list(engine.addons.controlnets.refresh())}

    @router.get("/module_list")
    def module_list(alias_names: bool = False) -> dict:
        available = {name: (ok, reason) for name, ok, reason in
                     preprocessors.availability(
                         engine.addons.controlnets.folder, engine.addons.controlnets.annotators.downloads_on())}
        detail = {}
        for name, pre in preprocessors.PREPROCESSORS.items():
            sliders = [{"name": "Preprocessor Resolution", "value": 512, "min": 64, "max": 2048}] \
                if pre.uses_resolution else []
            sliders += [{"name": s.label, "value": s.default, "min": s.minimum, "max": s.maximum, "step": s.step}
                        for s in (pre.threshold_a, pre.threshold_b) if s is not None]
            ok, reason = available.get(name, (True, ""))
            detail[name] = {"model_free": not pre.requires, "sliders": sliders, "available": ok,
                            "reason": reason or None, "title": pre.title}
        names = list(preprocessors.PREPROCESSORS)
        return {"module_list": [preprocessors.PREPROCESSORS[n].title for n in names] if alias_names else names,
                "module_detail": detail}

    @router.post("/detect")
    def detect(controlnet_module: Name = Body("none"),
               controlnet_input_images: list[Image] = Body(default_factory=list, max_length=MAX_LIST_ITEMS),
               controlnet_masks: list[Image] = Body(default_factory=list, max_length=MAX_LIST_ITEMS),
               controlnet_processor_res: int = Body(512),
               controlnet_threshold_a: float = Body(-1), controlnet_threshold_b: float = Body(-1),
               controlnet_images: list[Image] = Body(default_factory=list, max_length=MAX_LIST_ITEMS)) -> dict:
        """`controlnet_images`: what the webuiapi client sends instead of controlnet_input_images."""
        import base64

        controlnet_input_images = controlnet_input_images or controlnet_images
        if not controlnet_input_images:
            raise RequestError("controlnet_input_images: give at least one base64 image", "controlnet_input_images")
        _check_detect_numbers(controlnet_module, controlnet_processor_res, controlnet_threshold_a,
                              controlnet_threshold_b)
        limit = ctx.settings["upload_max_megapixels"]
        results = []
        for i, data in enumerate(controlnet_input_images):
            image = image_from_base64(data, f"controlnet_input_images[{i}]", limit)
            mask = image_from_base64(controlnet_masks[i], f"controlnet_masks[{i}]", limit) \
                if i < len(controlnet_masks) else None
            detected = preprocessors.run(controlnet_module, image, controlnet_processor_res,
                                         controlnet_threshold_a if controlnet_threshold_a >= 0 else None,
                                         controlnet_threshold_b if controlnet_threshold_b >= 0 else None,
                                         mask=mask, models_dir=engine.addons.controlnets.folder,
                                         annotators=engine.addons.controlnets.annotators)
            results.append(base64.b64encode(png_bytes(detected, None)).decode())
        return {"images": results, "info": "Success"}

    return router


def _check_detect_numbers(module: str, resolution: int, threshold_a: float, threshold_b: float) -> None:
    """The numbers /detect takes, within what the preprocessor's sliders allow (a huge resolution
    or threshold would try to allocate a giant picture or kernel)."""
    if not (resolution == -1 or 64 <= resolution <= 2048):
        raise RequestError(f"controlnet_processor_res must be -1 (default) or 64-2048, got {resolution}",
                           "controlnet_processor_res")
    try:
        pre = preprocessors.find(module)
    except UserError:
        pre = None  # an unknown name is refused when the preprocessor runs
    for name, value, spec in (("controlnet_threshold_a", threshold_a, pre.threshold_a if pre else None),
                              ("controlnet_threshold_b", threshold_b, pre.threshold_b if pre else None)):
        if not math.isfinite(value):
            raise RequestError(f"{name} must be a number, got {value}", name)
        if value >= 0 and spec is not None and not spec.minimum <= value <= spec.maximum:
            raise RequestError(f"{name} for {module} must be between {spec.minimum:g} and {spec.maximum:g}, "
                               f"got {value:g}", name)
