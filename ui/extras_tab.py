"""The Extras tab: upscale a finished picture (it keeps its generation parameters)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine.errors import UserError
from engine.postprocess.extras import MAX_SCALE, UPSCALERS, ExtrasRequest
from engine.postprocess.faces import restorers
from engine.models.model_catalogue import ModelNotDownloaded
from engine.runs.uploads import open_image

from . import checked_images, model_offer
from .context import UIContext
from .job_flow import owner_of
from .number_inputs import Number, Slider

SCALE_BY, SCALE_TO = "Scale by", "Scale to"


def build(ctx: UIContext) -> dict:
    with gr.Row(equal_height=False):
        with gr.Column():
            # Decoded without a mode change, so the picture's text chunks (its parameters) survive.
            source = gr.State("single")
            with gr.Tabs(elem_id="extras_source"):
                with gr.Tab("Single image", elem_id="extras_single_tab") as single_tab:
                    image = checked_images.image(ctx.settings, label="Source", type="pil", image_mode=None,
                                                 format="png",
                                     sources=["upload", "clipboard"], elem_id="extras_image", height=420)
                with gr.Tab("Batch", elem_id="extras_batch_tab") as batch_tab:
                    files = gr.File(label="Pictures", file_count="multiple", file_types=["image"],
                                    elem_id="extras_batch_files")
            mode = gr.State(SCALE_BY)
            with gr.Tabs(elem_id="extras_resize_mode"):
                with gr.Tab(SCALE_BY, elem_id="extras_scale_by_tab") as by_tab:
                    scale = Slider(1.0, MAX_SCALE, value=2.0, step=0.05, label="Resize",
                                      elem_id="extras_upscaling_resize")
                with gr.Tab(SCALE_TO, elem_id="extras_scale_to_tab") as to_tab:
                    with gr.Row():
                        width = Number(label="Width", value=512, precision=0, elem_id="extras_upscaling_resize_w")
                        height = Number(label="Height", value=512, precision=0, elem_id="extras_upscaling_resize_h")
                        crop = gr.Checkbox(label="Crop to fit", value=True, elem_id="extras_upscaling_crop")
            with gr.Row():
                names = list(ctx.engine.upscaler_names())
                upscaler = gr.Dropdown(names, value="Lanczos", label="Upscaler 1", elem_id="extras_upscaler_1")
                upscaler_2 = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id="extras_upscaler_2")
                visibility = Slider(0, 1, value=0, step=0.01, label="Upscaler 2 visibility",
                                       elem_id="extras_upscaler_2_visibility")
            with gr.Row():
                gfpgan = Slider(0, 1, value=0, step=0.05, label="GFPGAN visibility",
                                   elem_id="extras_gfpgan_visibility")
                codeformer = Slider(0, 1, value=0, step=0.05, label="CodeFormer visibility",
                                       elem_id="extras_codeformer_visibility")
                codeformer_weight = Slider(0, 1, value=0.5, step=0.05,
                                              label="CodeFormer weight (0 = maximum effect, 1 = minimum effect)",
                                              elem_id="extras_codeformer_weight")
            faces = Slider(0, 1, value=0, step=0.05, label="Restore faces (face detailer) visibility",
                              elem_id="extras_face_detailer_visibility")
            gr.Markdown(_restorer_note(ctx), elem_id="extras_face_restorers")
            run = gr.Button("Generate", variant="primary", elem_id="extras_generate")
        with gr.Column():
            result = gr.Gallery(label="Result", format="png", interactive=False, columns=2,
                                elem_id="extras_result", height=420)
            info = gr.Textbox(label="Post-processing", interactive=False, elem_id="extras_info")
            message = gr.Markdown("", elem_id="extras_message", elem_classes=["message"])
            offer = model_offer.offer_area("extras")
    private = {"queue": False, "api_visibility": "private"}
    by_tab.select(lambda: SCALE_BY, outputs=mode, **private)
    to_tab.select(lambda: SCALE_TO, outputs=mode, **private)
    single_tab.select(lambda: "single", outputs=source, **private)
    batch_tab.select(lambda: "batch", outputs=source, **private)

    catalogue = ctx.engine.addons.downloads.catalogue

    def process(where, picture, uploads, how, factor, w, h, crop_to_fit, method, method_2, blend,
                gfpgan_visibility, codeformer_visibility, fidelity, face_visibility, request: gr.Request):
        done = []
        try:
            sized = _target(how, factor, w, h, crop_to_fit)
            amounts = {name: float(_filled(value, label)) for name, label, value in (
                ("upscaler_2_visibility", "Upscaler 2 visibility", blend),
                ("gfpgan_visibility", "GFPGAN visibility", gfpgan_visibility),
                ("codeformer_visibility", "CodeFormer visibility", codeformer_visibility),
                ("codeformer_weight", "CodeFormer weight", fidelity),
                ("face_detailer_visibility", "Restore faces visibility", face_visibility))}
            limit = ctx.settings["upload_max_megapixels"]
            pictures = [picture] if where == "single" else [_read(f, limit) for f in uploads or []]
            if not pictures or pictures[0] is None:
                raise UserError("No image: upload the picture(s) to post-process", "image")
            for item in pictures:
                job = ctx.engine.extras(ExtrasRequest(item, upscaler=method, upscaler_2=method_2,
                                                      **amounts, **sized),
                                        owner=owner_of(request))
                done.append(job.outcome())
        except ModelNotDownloaded as missing:
            return {result: [r.image for r in done] or None, info: "", message: "**Cannot process:** a "
                    "model it uses is not downloaded yet.", **model_offer.shown(offer, missing, catalogue)}
        except UserError as error:
            return {result: [r.image for r in done] or None, info: "",
                    message: f"**Cannot process:** {error.message}", **model_offer.hidden(offer)}
        size = f"{done[0].image.width}x{done[0].image.height}"
        return {result: [r.image for r in done], info: f"{done[0].extras} ({size})", message: "",
                **model_offer.hidden(offer)}

    run.click(process, inputs=[source, image, files, mode, scale, width, height, crop, upscaler,
                               upscaler_2, visibility, gfpgan, codeformer, codeformer_weight, faces],
              outputs=[result, info, message, *model_offer.outputs(offer)], concurrency_id="generate",
              api_visibility="private")
    _offer_when_chosen(ctx, offer, upscaler, upscaler_2, gfpgan, codeformer)
    model_offer.wire(ctx, offer)
    return {"image": image}


def _offer_when_chosen(ctx: UIContext, offer: dict, upscaler, upscaler_2, gfpgan, codeformer) -> None:
    """Picking a standard model that is not downloaded yet shows the download offer at once."""
    addons = ctx.engine.addons
    catalogue = addons.downloads.catalogue

    def check(first: str, second: str, gfpgan_visibility: float, codeformer_visibility: float):
        try:
            for name in (first, second):
                if name not in UPSCALERS and addons.upscalers.canonical(name):
                    addons.upscalers.require(name)
            for name, visibility in (("GFPGAN", gfpgan_visibility), ("CodeFormer", codeformer_visibility)):
                if visibility and visibility > 0:
                    addons.faces.require(name)
        except ModelNotDownloaded as missing:
            return model_offer.shown(offer, missing, catalogue)
        except UserError:
            pass  # anything else is said when the picture is processed
        return model_offer.hidden(offer)

    inputs = [upscaler, upscaler_2, gfpgan, codeformer]
    for control, event in ((upscaler, "input"), (upscaler_2, "input"), (gfpgan, "release"), (codeformer, "release")):
        getattr(control, event)(check, inputs=inputs, outputs=model_offer.outputs(offer), queue=False,
                                api_visibility="private")


def _filled(value, label: str):
    """A number box's value; an empty box is refused by its label."""
    if value is None:
        raise UserError(f"{label} is empty: enter a number", label)
    return value


def _target(how: str, factor, width, height, crop: bool) -> dict:
    """The ExtrasRequest fields of "Scale by" or "Scale to"."""
    if how != SCALE_TO:
        return {"scale": float(_filled(factor, "Resize"))}
    sides = {"width": _filled(width, "Width"), "height": _filled(height, "Height")}
    for name, value in sides.items():
        if value < 1 or value != int(value):
            raise UserError(f"Scale to: {name} must be a whole number of pixels, at least 1; got {value:g}",
                            name)
    return {**{name: int(value) for name, value in sides.items()}, "crop": bool(crop)}


def _restorer_note(ctx: UIContext) -> str:
    """Which face restorers have no weights yet, so a user knows before trying."""
    missing = [f"{r.name}: {r.reason}" for r in restorers(ctx.engine.addons.faces) if not r.available]
    return ("Not available here: " + "; ".join(missing)) if missing else ""


def _read(upload, limit: float):
    path = Path(str(getattr(upload, "name", upload)))
    return open_image(path.read_bytes(), path.name, limit)
