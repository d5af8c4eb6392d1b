"""ControlNet in the browser: up to three units (an accordion in txt2img and img2img, the main
part of the ControlNet tab), each with its control image or scribble, preprocessor, model and
options, and a preview of the detected map."""

from __future__ import annotations

import math
from typing import Any

import gradio as gr
from PIL import Image

from engine.controlnet import preprocessors
from engine.controlnet.apply import detect_map
from engine.controlnet.units import (
    CONTROL_MODES,
    MAX_UNITS,
    NO_MODEL,
    RESIZE_MODES,
    ControlUnit,
)
from engine.errors import UserError
from engine.image_prep import flatten

from . import checked_images
from .context import UIContext
from .editor_inputs import strokes_mask
from .number_inputs import Slider

PREFIX = "cn::"
FIELDS = ("enabled", "image", "module", "model", "weight", "guidance_start", "guidance_end", "control_mode",
          "resize_mode", "pixel_perfect", "processor_res", "threshold_a", "threshold_b")


def control_name(unit: int, field: str) -> str:
    return f"{PREFIX}{unit}::{field}"


def control_image(value) -> tuple[Image.Image | None, Image.Image | None]:
    """What a unit's editor holds: the picture (a drawing on the blank canvas is flattened on
    white, as scribbles are drawn) and, when strokes were painted over an upload, their mask."""
    if isinstance(value, Image.Image):
        return value, None
    if not isinstance(value, dict):
        return None, None
    background, composite = value.get("background"), value.get("composite")
    layers = value.get("layers") or []
    has_strokes = any(isinstance(layer, Image.Image) and _has_paint(layer) for layer in layers)
    if isinstance(background, Image.Image) and not _blank(background):
        picture = flatten(background)  # strokes over an upload mark a mask (for inpaint units)
        return picture, (strokes_mask(layers, picture.size) if has_strokes else None)
    if isinstance(composite, Image.Image) and has_strokes:
        return flatten(composite), None  # a scribble on the blank canvas
    return None, None


def _has_paint(layer: Image.Image) -> bool:
    return layer.mode not in ("RGBA", "LA") or layer.getchannel("A").getextrema()[1] > 0


def _blank(image: Image.Image) -> bool:
    """The editor's empty canvas: fully transparent, or one flat colour."""
    if image.mode in ("RGBA", "LA") and image.getchannel("A").getextrema()[1] == 0:
        return True
    return all(low == high for low, high in image.convert("RGB").getextrema())


def units_from_values(values: dict[str, Any]) -> tuple[ControlUnit, ...]:
    """The units of a tab's named control values (unit order kept)."""
    by_unit: dict[int, dict[str, Any]] = {}
    for key, value in values.items():
        if key.startswith(PREFIX):
            unit, field = key[len(PREFIX):].split("::", 1)
            by_unit.setdefault(int(unit), {})[field] = value
    units = []
    for index in sorted(by_unit):
        fields = dict(by_unit[index])
        if not fields.get("enabled"):
            # A disabled unit does nothing, so whatever its hidden or half-typed fields hold
            # must not stop the job: it goes in with the defaults (keeping the units' numbers).
            units.append(ControlUnit())
            continue
        fields["image"], fields["mask"] = control_image(fields.pop("image", None))
        fields["processor_res"] = int(fields.get("processor_res") or 512)
        fields["model"] = fields.get("model") or NO_MODEL
        if fields.get("threshold_a") is None:
            fields["threshold_a"] = -1.0
        if fields.get("threshold_b") is None:
            fields["threshold_b"] = -1.0
        units.append(ControlUnit(**fields))
    return tuple(units)


# A threshold slider when its preprocessor has no such threshold: hidden, at -1 ("the
# preprocessor's default"), in a range that holds -1.
UNSET_THRESHOLD = {"minimum": -1, "maximum": 255, "value": -1}


def _slider_update(slider) -> dict:
    if slider is None:
        # The range goes back too: the page keeps the last preprocessor's (canny's starts at 1),
        # and -1 outside it is a value the slider refuses.
        return gr.update(visible=False, **UNSET_THRESHOLD)
    return gr.update(visible=True, label=slider.label, minimum=slider.minimum, maximum=slider.maximum,
                     step=slider.step, value=slider.default)


def render_units(ctx: UIContext, tab: str, size: tuple | None = None) -> dict:
    """Up to MAX_UNITS units as sub-tabs; returns their named controls. `size`: the tab's width
    and height controls (pixel-perfect previews use them)."""
    controls: dict[str, Any] = {}
    library = ctx.engine.addons.controlnets
    modules = list(preprocessors.PREPROCESSORS)
    with gr.Tabs(elem_id=f"{tab}_controlnet_units"):
        for index in range(MAX_UNITS):
            with gr.Tab(f"ControlNet Unit {index}", elem_id=f"{tab}_controlnet_unit_{index}_tab"):
                controls.update(_unit(ctx, tab, index, library, modules, size))
    return controls


def _unit(ctx: UIContext, tab: str, index: int, library, modules: list[str], size) -> dict:
    eid = f"{tab}_cn{index}"
    first = preprocessors.PREPROCESSORS[modules[0]]
    with gr.Row(equal_height=False):
        image = checked_images.image_editor(
            ctx.settings, scale=3, label="Control image",
                               type="pil", sources=["upload", "clipboard"], canvas_size=(512, 512),
                               brush=gr.Brush(colors=["#000000", "#ffffff"], default_size=6,
                                              color_mode="fixed"),
                               layers=False, height=360, elem_id=f"{eid}_image")
        with gr.Column(scale=2, min_width=200):
            detected = gr.Image(label="Detected map", type="pil", interactive=False, format="png",
                                height=300, elem_id=f"{eid}_detected")
            preview = gr.Button("Preview the map", size="sm", elem_id=f"{eid}_preview")
            note = gr.Markdown("", elem_id=f"{eid}_message", elem_classes=["message"])
    with gr.Row():
        enabled = gr.Checkbox(label="Enable", value=False, elem_id=f"{eid}_enabled")
        pixel_perfect = gr.Checkbox(label="Pixel perfect", value=False, elem_id=f"{eid}_pixel_perfect")
    with gr.Row():
        module = gr.Dropdown(modules, value=modules[0], label="Preprocessor", elem_id=f"{eid}_module")
        model = gr.Dropdown([NO_MODEL, *library.names()], value=NO_MODEL, label="Model", elem_id=f"{eid}_model")
        refresh = gr.Button("🔄", size="sm", scale=0, min_width=40, elem_classes=["tool"],
                            elem_id=f"{eid}_refresh_models")
    with gr.Row():
        weight = Slider(0.0, 2.0, value=1.0, step=0.05, label="Control weight", elem_id=f"{eid}_weight")
        start = Slider(0.0, 1.0, value=0.0, step=0.01, label="Starting control step", elem_id=f"{eid}_start")
        end = Slider(0.0, 1.0, value=1.0, step=0.01, label="Ending control step", elem_id=f"{eid}_end")
    with gr.Row():
        resolution = Slider(64, 2048, value=512, step=8, label="Preprocessor resolution",
                               visible=first.uses_resolution, elem_id=f"{eid}_processor_res")
        threshold_a = Slider(visible=False, elem_id=f"{eid}_threshold_a", **UNSET_THRESHOLD)
        threshold_b = Slider(visible=False, elem_id=f"{eid}_threshold_b", **UNSET_THRESHOLD)
    control_mode = gr.Radio(list(CONTROL_MODES), value=CONTROL_MODES[0], label="Control mode",
                            elem_id=f"{eid}_control_mode")
    resize_mode = gr.Radio(list(RESIZE_MODES), value="Crop and Resize", label="Resize mode",
                           elem_id=f"{eid}_resize_mode")
    private = {"queue": False, "api_visibility": "private"}

    def module_changed(name: str):
        pre = preprocessors.find(name)
        return (gr.update(visible=pre.uses_resolution), _slider_update(pre.threshold_a),
                _slider_update(pre.threshold_b))

    module.change(module_changed, inputs=module, outputs=[resolution, threshold_a, threshold_b], **private)
    refresh.click(lambda current: gr.update(choices=[NO_MODEL, *library.refresh()], value=current),
                  inputs=model, outputs=model, **private)

    sizes = list(size) if size is not None else []

    def show_map(value, name, res, a, b, perfect, how, *dims):
        picture, mask = control_image(value)
        if picture is None:
            return None, "**No control image:** upload a picture or draw on the canvas first."
        # Empty boxes mean the defaults; out-of-range values are refused by the preprocessor.
        unit = ControlUnit(module=name, processor_res=-1 if res is None else int(res),
                           threshold_a=-1.0 if a is None else float(a),
                           threshold_b=-1.0 if b is None else float(b),
                           pixel_perfect=bool(perfect), resize_mode=how, mask=mask)
        try:
            return detect_map(unit, picture, *_map_size(dims, picture), library.folder,
                              annotators=library.annotators), ""
        except UserError as error:
            return None, f"**Cannot preview:** {error.message}"

    preview.click(show_map, inputs=[image, module, resolution, threshold_a, threshold_b, pixel_perfect,
                                    resize_mode, *sizes], outputs=[detected, note], **private)
    named = {"enabled": enabled, "image": image, "module": module, "model": model, "weight": weight,
             "guidance_start": start, "guidance_end": end, "control_mode": control_mode,
             "resize_mode": resize_mode, "pixel_perfect": pixel_perfect, "processor_res": resolution,
             "threshold_a": threshold_a, "threshold_b": threshold_b}
    return {control_name(index, field): component for field, component in named.items()}


def _map_size(dims: tuple, picture: Image.Image) -> tuple[int, int]:
    """The tab's width and height (pixel-perfect previews use them), or the picture's own size
    while those boxes hold no usable size."""
    if len(dims) == 2 and all(isinstance(d, (int, float)) and math.isfinite(d) and d >= 1 for d in dims):
        return int(dims[0]), int(dims[1])
    return picture.size


def accordion(ctx: UIContext, tab: str, size: tuple | None = None) -> dict:
    """The units as an accordion inside the txt2img and img2img tabs."""
    with gr.Accordion("ControlNet", open=False, elem_id=f"{tab}_controlnet"):
        return render_units(ctx, tab, size)
