"""The Extras tab: upscale a finished picture (it keeps its generation parameters)."""

from __future__ import annotations

import gradio as gr

from engine.errors import UserError
from engine.extras import MAX_SCALE, UPSCALERS, ExtrasRequest

from .context import UIContext
from .job_flow import owner_of

SCALE_BY, SCALE_TO = "Scale by", "Scale to"


def build(ctx: UIContext) -> dict:
    with gr.Row(equal_height=False):
        with gr.Column():
            # Decoded without a mode change, so the picture's text chunks (its parameters) survive.
            image = gr.Image(label="Source", type="pil", image_mode=None, format="png",
                             sources=["upload", "clipboard"], elem_id="extras_image", height=420)
            mode = gr.State(SCALE_BY)
            with gr.Tabs(elem_id="extras_resize_mode"):
                with gr.Tab(SCALE_BY, elem_id="extras_scale_by_tab") as by_tab:
                    scale = gr.Slider(1.0, MAX_SCALE, value=2.0, step=0.05, label="Resize",
                                      elem_id="extras_upscaling_resize")
                with gr.Tab(SCALE_TO, elem_id="extras_scale_to_tab") as to_tab:
                    with gr.Row():
                        width = gr.Number(label="Width", value=512, precision=0, elem_id="extras_upscaling_resize_w")
                        height = gr.Number(label="Height", value=512, precision=0, elem_id="extras_upscaling_resize_h")
                        crop = gr.Checkbox(label="Crop to fit", value=True, elem_id="extras_upscaling_crop")
            upscaler = gr.Dropdown(list(UPSCALERS), value="Lanczos", label="Upscaler",
                                   elem_id="extras_upscaler_1")
            run = gr.Button("Generate", variant="primary", elem_id="extras_generate")
        with gr.Column():
            result = gr.Image(label="Result", type="pil", format="png", interactive=False,
                              elem_id="extras_result", height=420)
            info = gr.Textbox(label="Post-processing", interactive=False, elem_id="extras_info")
            message = gr.Markdown("", elem_id="extras_message", elem_classes=["message"])
    private = {"queue": False, "api_visibility": "private"}
    by_tab.select(lambda: SCALE_BY, outputs=mode, **private)
    to_tab.select(lambda: SCALE_TO, outputs=mode, **private)

    def process(picture, how, factor, w, h, crop_to_fit, method, request: gr.Request):
        try:
            sized = {"width": int(w or 0), "height": int(h or 0), "crop": bool(crop_to_fit)} \
                if how == SCALE_TO else {"scale": float(factor)}
            job = ctx.engine.extras(ExtrasRequest(picture, upscaler=method, **sized),
                                    owner=owner_of(request))
            done = job.outcome()
        except UserError as error:
            return gr.update(), "", f"**Cannot process:** {error.message}"
        size = f"{done.image.width}x{done.image.height}"
        return done.image, f"{done.extras} ({size})", ""

    run.click(process, inputs=[image, mode, scale, width, height, crop, upscaler],
              outputs=[result, info, message], concurrency_id="generate", api_visibility="private")
    return {"image": image}
