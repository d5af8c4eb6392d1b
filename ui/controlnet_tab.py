"""The ControlNet tab: prompts, the control units and the usual generation controls on the left,
Generate and the results on the right; it generates from noise, from a picture (img2img) or from a
picture with a painted mask (inpaint)."""

from __future__ import annotations

import gradio as gr

from engine.errors import RequestError
from engine.request import GenerationRequest, Img2ImgOptions

from . import checked_images, controlnet_ui, generation_columns, widgets
from .context import UIContext
from .editor_inputs import inpaint_input
from .job_flow import wire_generate
from .number_inputs import Slider
from .request_builder import common_fields, named_values

TAB = "controlnet"
FROM_NOISE, FROM_PICTURE, FROM_MASK = ("Noise (txt2img)", "Picture (img2img)",
                                       "Picture with a painted mask (inpaint)")


def build(ctx: UIContext) -> dict:
    last_seeds = gr.State({})

    def parameters(controls: dict) -> None:
        controls.update(controlnet_ui.render_units(ctx, TAB))
        start = gr.Radio([FROM_NOISE, FROM_PICTURE, FROM_MASK], value=FROM_NOISE, label="Start from",
                         elem_id=f"{TAB}_start_from")
        picture = checked_images.image_editor(
            ctx.settings, label="Picture to change (for inpaint, paint over the part to redraw)",
            type="pil", sources=["upload", "clipboard"], layers=False,
            brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24),
            visible=False, height=360, elem_id=f"{TAB}_picture")
        strength = Slider(0.0, 1.0, value=0.75, step=0.01, label="Denoising strength", visible=False,
                          elem_id=f"{TAB}_denoising_strength")
        controls.update(start_from=start, picture=picture, denoising_strength=strength)
        controls.update(widgets.sampler_row(TAB))
        controls.update(widgets.size_and_batch(TAB))
        controls.update(widgets.seed_row(TAB, last_seeds))
        start.change(lambda how: [gr.update(visible=how != FROM_NOISE)] * 2, inputs=start,
                     outputs=[picture, strength], queue=False, api_visibility="private")

    columns, _ = generation_columns.build(ctx, TAB, parameters)
    controls = columns.controls

    def make_requests(data: dict):
        values = named_values(controls, data)
        return [(request_from_values(values), None)]

    wire_generate(ctx, columns.buttons["generate"], set(controls.values()), columns.results, last_seeds,
                  make_requests)
    return {"controls": controls, "results": columns.results, "buttons": columns.buttons}


def request_from_values(values: dict) -> GenerationRequest:
    how = values.get("start_from", FROM_NOISE)
    if how == FROM_NOISE:
        return GenerationRequest(**common_fields(values, "txt2img")).validate()
    fields = common_fields(values, "img2img")
    editor = values.get("picture")
    if how == FROM_MASK:
        image, mask = inpaint_input(editor)
        if mask.getbbox() is None:
            raise RequestError("Nothing is painted: paint over the part of the picture to redraw", "mask")
    else:
        image, mask = controlnet_ui.control_image(editor)
        if image is None:
            raise RequestError("No picture: upload the picture to change, or start from noise", "init_images")
        mask = None
    part = Img2ImgOptions(init_images=(image,), mask=mask, denoising_strength=values["denoising_strength"])
    return GenerationRequest(**fields, img2img=part).validate()
