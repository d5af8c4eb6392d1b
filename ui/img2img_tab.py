"""The img2img tab: a picture to change (uploaded, sketched, or masked for inpainting), the
img2img and inpainting options, then the same sampler/seed/batch controls as txt2img."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine import image_prep
from engine.settings.flags import is_exposed
from engine.job_results import GenerationResult
from engine.files import write_atomically
from engine.output.writer import png_bytes
from engine.request import MAX_MASK_BLUR, MAX_PADDING

from . import (
    checked_images,
    controlnet_ui,
    extension_fields,
    generation_columns,
    refiner_ui,
    script_fields,
    ui_defaults,
    widgets,
)
from . import img2img_requests as build_requests
from .context import UIContext
from .job_flow import wire_generate
from .number_inputs import Slider
from .request_builder import named_values

TAB = "img2img"
SKETCH_COLOURS = ["#000000", "#ffffff", "#ff0000", "#00a000", "#0000ff", "#ffd000", "#8000ff"]


def build(ctx: UIContext) -> dict:
    """The tab; returns its controls, image inputs, results and buttons (for "send to")."""
    last_seeds = gr.State({})
    start = ui_defaults.start_values(ctx.settings, TAB)

    def parameters(controls: dict) -> tuple[gr.Tabs, gr.Group]:
        subtabs, inputs = _picture_inputs(ctx, controls)
        controls.update(inputs)
        controls.update(_resize_controls(controls, start))
        controls.update(widgets.sampler_row(TAB, start))
        controls.update(widgets.batch_sliders(TAB, start))
        controls.update(widgets.cfg_slider(TAB, start))
        controls["denoising_strength"] = Slider(
            0.0, 1.0, step=0.01, label="Denoising strength", elem_id=f"{TAB}_denoising_strength",
            **widgets.initial(start, "denoising_strength", value=0.75))
        inpaint_group, inpaint_controls = _inpaint_options(start)
        controls.update(inpaint_controls)
        controls.update(widgets.seed_row(TAB, last_seeds))
        controls.update(widgets.override_settings(TAB))
        size = (controls["width"], controls["height"])
        controls.update(refiner_ui.accordion(ctx, TAB))
        controls.update(controlnet_ui.accordion(ctx, TAB, size))
        controls.update(extension_fields.render(ctx, TAB, "img2img", size))
        controls.update(script_fields.render(ctx, TAB, "img2img", controls))
        return subtabs, inpaint_group

    columns, (subtabs, inpaint_group) = generation_columns.build(ctx, TAB, parameters)
    controls = columns.controls
    _wire_subtabs(subtabs, controls["subtab"], inpaint_group)

    def make_requests(data: dict):
        values = named_values(controls, data)
        limit = ctx.settings["upload_max_megapixels"]
        for name, request in build_requests.requests_from_ui(values, limit):
            folder = values.get("batch_output_dir") if name else None
            yield request, (_batch_copier(name, folder) if folder else None)

    wire_generate(ctx, columns.buttons["generate"], set(controls.values()), columns.results, last_seeds,
                  make_requests)
    return {"controls": controls, "results": columns.results, "buttons": columns.buttons,
            "subtabs": subtabs, "inpaint_group": inpaint_group}


def folders_allowed(ctx: UIContext) -> bool:
    """Server folders in Batch read and write this machine's disk: only for a UI that is not
    shared, unless the owner opts in; never with --hide-ui-dir-config (as in the web UI the flag
    comes from)."""
    if getattr(ctx.flags, "hide_ui_dir_config", False):
        return False
    return not is_exposed(ctx.flags) or getattr(ctx.flags, "allow_server_folders", False)


def _picture_inputs(ctx: UIContext, controls: dict) -> tuple[gr.Tabs, dict]:
    image_args = {"type": "pil", "image_mode": "RGBA", "format": "png", "height": 420,
                  "sources": ["upload", "clipboard"]}
    inputs: dict = {"subtab": gr.State("img2img")}
    with gr.Tabs(elem_id=f"{TAB}_modes") as subtabs:
        with gr.Tab("img2img", id="img2img", elem_id=f"{TAB}_tab_img2img"):
            inputs["init_image"] = checked_images.image(ctx.settings, label="Image for img2img",
                                                         elem_id=f"{TAB}_image", **image_args)
        with gr.Tab("Sketch", id="Sketch", elem_id=f"{TAB}_tab_sketch"):
            inputs["sketch"] = checked_images.image_editor(
                ctx.settings, label="Sketch", type="pil", image_mode="RGBA", format="png", height=420,
                elem_id=f"{TAB}_sketch", canvas_size=(512, 512),
                brush=gr.Brush(default_size=8, colors=SKETCH_COLOURS, color_mode="defaults"))
        with gr.Tab("Inpaint", id="Inpaint", elem_id=f"{TAB}_tab_inpaint"):
            inputs["inpaint"] = checked_images.image_editor(
                ctx.settings, label="Paint the part to change", type="pil", image_mode="RGBA", format="png",
                height=420, elem_id=f"{TAB}_inpaint", sources=["upload", "clipboard"],
                brush=gr.Brush(default_size=24, colors=["#ffffff"], color_mode="fixed"),
                eraser=gr.Eraser(default_size=24), layers=False)
        with gr.Tab("Inpaint sketch", id="Inpaint sketch", elem_id=f"{TAB}_tab_inpaint_sketch"):
            inputs["inpaint_sketch"] = checked_images.image_editor(
                ctx.settings, label="Paint new content in colour", type="pil", image_mode="RGBA", format="png",
                height=420, elem_id=f"{TAB}_inpaint_sketch", sources=["upload", "clipboard"],
                brush=gr.Brush(default_size=16, colors=SKETCH_COLOURS, color_mode="defaults"),
                layers=False)
        with gr.Tab("Inpaint upload", id="Inpaint upload", elem_id=f"{TAB}_tab_inpaint_upload"):
            inputs["upload_image"] = checked_images.image(ctx.settings, label="Image",
                                                           elem_id=f"{TAB}_upload_image", **image_args)
            inputs["upload_mask"] = checked_images.image(ctx.settings, label="Mask (white = change)",
                                                          elem_id=f"{TAB}_upload_mask",
                                             **image_args)
        with gr.Tab("Batch", id="Batch", elem_id=f"{TAB}_tab_batch"):
            inputs.update(_batch_inputs(ctx))
    return subtabs, inputs


def _batch_inputs(ctx: UIContext) -> dict:
    inputs = {
        "batch_files": gr.File(label="Pictures", file_count="multiple", file_types=["image"],
                               elem_id=f"{TAB}_batch_files"),
        "batch_mask_files": gr.File(label="Masks (optional; matched to pictures by file name)",
                                    file_count="multiple", file_types=["image"],
                                    elem_id=f"{TAB}_batch_mask_files"),
    }
    if folders_allowed(ctx):
        inputs["batch_input_dir"] = gr.Textbox(label="Input folder (on this machine)",
                                               elem_id=f"{TAB}_batch_input_dir")
        inputs["batch_mask_dir"] = gr.Textbox(label="Mask folder (optional)", elem_id=f"{TAB}_batch_mask_dir")
        inputs["batch_output_dir"] = gr.Textbox(
            label="Output folder (optional: also save the results there, under the pictures' names)",
            elem_id=f"{TAB}_batch_output_dir")
    elif getattr(ctx.flags, "hide_ui_dir_config", False):
        gr.Markdown("Folders on the server are not offered (--hide-ui-dir-config). Upload the pictures instead.")
    else:
        gr.Markdown("Folders on the server are not offered while the UI is shared on the network "
                    "(start with --allow-server-folders to allow them). Upload the pictures instead.")
    return inputs


def _resize_controls(controls: dict, start: dict) -> dict:
    resize_mode = gr.Radio(list(image_prep.RESIZE_MODES), value=image_prep.RESIZE_MODES[0],
                           label="Resize mode", elem_id=f"{TAB}_resize_mode")
    resize_tab = gr.State(build_requests.RESIZE_TO)
    with gr.Tabs(elem_id=f"{TAB}_resize_tabs"):
        with gr.Tab(build_requests.RESIZE_TO, elem_id=f"{TAB}_tab_resize_to") as to_tab:
            size = widgets.size_sliders(TAB, start)
        with gr.Tab(build_requests.RESIZE_BY, elem_id=f"{TAB}_tab_resize_by") as by_tab:
            scale = Slider(0.05, 4.0, value=1.0, step=0.05, label="Scale", elem_id=f"{TAB}_scale")
            scale_label = gr.Markdown("", elem_id=f"{TAB}_scale_label")
    private = {"queue": False, "api_visibility": "private"}
    to_tab.select(lambda: build_requests.RESIZE_TO, outputs=resize_tab, **private)
    by_tab.select(lambda: build_requests.RESIZE_BY, outputs=resize_tab, **private)

    pictures = [controls[k] for k in ("subtab", "init_image", "sketch", "inpaint", "inpaint_sketch",
                                      "upload_image")]

    def describe(scale_value, subtab, init_image, sketch, inpaint, inpaint_sketch, upload_image):
        values = {"subtab": subtab, "init_image": init_image, "sketch": sketch, "inpaint": inpaint,
                  "inpaint_sketch": inpaint_sketch, "upload_image": upload_image, "upload_mask": None}
        try:
            image, _ = build_requests.init_and_mask(values)
        except Exception:  # no picture yet (or an incomplete one): nothing to describe
            return "Upload a picture to see the new size."
        width, height = build_requests.scaled_size(image.size, float(scale_value or 1))
        return f"Resize from {image.width}x{image.height} to **{width}x{height}**"

    for trigger in (scale, by_tab):
        event = trigger.change if trigger is scale else trigger.select
        event(describe, inputs=[scale, *pictures], outputs=scale_label, **private)
    return {"resize_mode": resize_mode, "resize_tab": resize_tab, "scale": scale, **size}


def _inpaint_options(start: dict) -> tuple[gr.Group, dict]:
    with gr.Group(visible=False, elem_id=f"{TAB}_inpaint_controls") as group:
        mask_blur = Slider(0, MAX_MASK_BLUR, step=1, label="Mask blur", elem_id=f"{TAB}_mask_blur",
                              **widgets.initial(start, "mask_blur", value=4))
        mask_mode = gr.Radio(list(image_prep.MASK_MODES), value=image_prep.MASK_MODES[0],
                             label="Mask mode", elem_id=f"{TAB}_mask_mode")
        fill = gr.Radio(list(image_prep.MASKED_CONTENT), value="original", label="Masked content",
                        elem_id=f"{TAB}_inpainting_fill")
        with gr.Row():
            area = gr.Radio(list(image_prep.INPAINT_AREAS), value=image_prep.INPAINT_AREAS[0],
                            label="Inpaint area", elem_id=f"{TAB}_inpaint_full_res")
            padding = Slider(0, MAX_PADDING, value=32, step=4, label="Only masked padding, pixels",
                                elem_id=f"{TAB}_inpaint_full_res_padding")
    return group, {"mask_blur": mask_blur, "mask_mode": mask_mode, "inpainting_fill": fill,
                   "inpaint_area": area, "inpaint_full_res_padding": padding}


def _wire_subtabs(subtabs: gr.Tabs, subtab: gr.State, inpaint_group: gr.Group) -> None:
    """Remember the active sub-tab, and show the mask options where there can be a mask."""
    def chosen(event: gr.SelectData):
        name = event.value if event.value in build_requests.SUBTABS else build_requests.SUBTABS[event.index]
        return name, gr.update(visible=name in build_requests.MASKED_SUBTABS)

    subtabs.select(chosen, outputs=[subtab, inpaint_group], queue=False, api_visibility="private")


def _batch_copier(name: str, folder: str):
    """Batch with an output folder: each result also goes there under its picture's name."""
    def save(result: GenerationResult) -> str | None:
        directory = Path(str(folder).strip()).expanduser()
        stem = Path(name).stem
        for index, (image, text) in enumerate(zip(result.images, result.infotexts)):
            suffix = f"-{index}" if len(result.images) > 1 else ""
            write_atomically(directory / f"{stem}{suffix}.png", png_bytes(image, text))
        return None
    return save
