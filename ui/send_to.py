"""Moving pictures and their parameters between tabs: the gallery's "Send to" buttons, PNG Info's
and History's buttons, and each tab's paste button."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from PIL import Image

from engine.errors import UserError
from engine.runs.uploads import open_image

from . import paste
from .context import UIContext

# Request field -> the img2img control that shows it, where the names differ.
CONTROL_NAMES = {"inpaint_full_res": "inpaint_area", "inpainting_mask_invert": "mask_mode"}
PASTABLE = ("prompt", "negative_prompt", "steps", "sampler_name", "scheduler", "cfg_scale", "cfg_rescale",
            "distilled_cfg_scale", "shift", "seed",
            "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h", "subseed_show",
            "width", "height", "denoising_strength", "mask_blur", "inpainting_fill", "inpaint_area",
            "inpaint_full_res_padding", "mask_mode", "resize_mode", "override_settings", "refiner_enabled",
            "refiner_checkpoint", "refiner_switch_at") + paste.CONTROLNET_PASTABLE
SUBTAB_OF = {"img2img": "img2img", "inpaint": "Inpaint"}
NOTHING_GENERATED = "Nothing to send yet: generate a picture first."
NO_PARAMETERS = "Nothing to send to txt2img: this picture holds no generation parameters."


def pasted(controls: dict, values: dict) -> dict:
    """{component: value} for the parsed parameters this tab has controls for."""
    out = {}
    for name, value in values.items():
        name = CONTROL_NAMES.get(name, name)
        if name in controls and name in PASTABLE:
            if name == "override_settings":  # a new paste replaces the entries; none: hidden
                value = gr.update(choices=value, value=value, visible=bool(value))
            out[controls[name]] = value
    return out


def _targets(controls: dict) -> list:
    return [controls[name] for name in PASTABLE if name in controls]


def wire(ctx: UIContext, tabs: gr.Tabs, txt2img: dict, img2img: dict, png_info: dict,
         extras: dict, history: dict) -> None:
    # Where a picture bound for the inpaint editor waits for one step (see _send_into_img2img).
    img2img = {**img2img, "pending_inpaint": gr.State(None)}
    for tab in (txt2img, img2img):
        _wire_paste_button(ctx, tab)
        for target, button in tab["results"]["send"].items():
            if target == "extras":
                _wire_gallery_to_extras(tabs, tab["results"], extras, button)
            else:
                _wire_gallery_send(ctx, tabs, tab["results"], img2img, target, button)
    _wire_png_info(ctx, tabs, png_info, txt2img, img2img, extras)
    _wire_history(ctx, tabs, history, txt2img, img2img, extras)


def _selected(images, index: int, texts: list[str]) -> tuple[Image.Image, str] | None:
    """The gallery's selected picture (with its parameters inside) and its infotext."""
    if not images:
        return None
    index = index if 0 <= index < len(images) else 0
    item = images[index]
    image = item[0] if isinstance(item, (tuple, list)) else item
    text = texts[index] if index < len(texts) else ""
    if text:
        image.info["parameters"] = text
    return image, text


# A handler that changes nothing must say so with an update per output (gr.skip()): an empty
# dict counts as one output value, and Gradio then fails the event (an HTTP 500) for the
# missing others. These buttons instead say why nothing was sent, in the tab's message area.

def _wire_gallery_to_extras(tabs: gr.Tabs, results: dict, extras: dict, button: gr.Button) -> None:
    message = results["message"]

    def send(images, index: int, texts: list[str]) -> dict:
        chosen = _selected(images, index, texts)
        if chosen is None:
            return {message: NOTHING_GENERATED}
        return {tabs: gr.Tabs(selected="extras"), extras["image"]: chosen[0], message: ""}

    button.click(send, inputs=[results["gallery"], results["selected"], results["infotexts"]],
                 outputs=[tabs, extras["image"], message], queue=False, api_visibility="private")


def _wire_paste_button(ctx: UIContext, tab: dict) -> None:
    controls, message = tab["controls"], tab["results"]["message"]

    def read_prompt_box(text: str) -> dict:
        if not paste.has_parameters(text):
            return {message: "Nothing to read: paste generation parameters (or drop a PNG made "
                             "by a Stable Diffusion UI) into the prompt box first."}
        return {**pasted(controls, paste.control_values(text, settings=ctx.settings)), message: ""}

    tab["buttons"]["paste"].click(read_prompt_box, inputs=controls["prompt"],
                                  outputs=[*_targets(controls), message], queue=False,
                                  api_visibility="private")


def _img2img_outputs(tabs: gr.Tabs, img2img: dict) -> list:
    controls = img2img["controls"]
    return [tabs, img2img["subtabs"], controls["subtab"], img2img["inpaint_group"],
            controls["init_image"], img2img["pending_inpaint"], *_targets(controls)]


def _send_into_img2img(button: gr.Button, send, inputs: list, tabs: gr.Tabs, img2img: dict,
                       message) -> None:
    """Wire `button` to `send` (which returns _into_img2img's update). A picture bound for the
    inpaint editor arrives one step after the img2img tab is shown, with the switch to the Inpaint
    sub-tab: Gradio mounts the editor when its sub-tab is first shown, and one mounted while the
    img2img tab itself was still hidden (sent from PNG Info after an earlier Send to img2img)
    kept a canvas of no size and stayed empty."""
    pending, controls = img2img["pending_inpaint"], img2img["controls"]

    def deliver(editor_value):
        if editor_value is None:
            return [gr.skip()] * 4 + [None]
        return [gr.Tabs(selected=SUBTAB_OF["inpaint"]), SUBTAB_OF["inpaint"], gr.update(visible=True),
                editor_value, None]

    button.click(send, inputs=inputs, outputs=[*_img2img_outputs(tabs, img2img), message],
                 queue=False, api_visibility="private"
                 ).then(deliver, inputs=pending,
                        outputs=[img2img["subtabs"], controls["subtab"], img2img["inpaint_group"],
                                 controls["inpaint"], pending],
                        queue=False, api_visibility="private")


def _into_img2img(tabs: gr.Tabs, img2img: dict, target: str, image: Image.Image, values: dict) -> dict:
    controls = img2img["controls"]
    out = pasted(controls, values)
    out[tabs] = gr.Tabs(selected="img2img")
    if target == "inpaint":  # the sub-tab and the picture follow (see _send_into_img2img)
        out[img2img["pending_inpaint"]] = {"background": image, "layers": [], "composite": image}
    else:
        out.update({img2img["subtabs"]: gr.Tabs(selected=SUBTAB_OF[target]),
                    controls["subtab"]: SUBTAB_OF[target],
                    img2img["inpaint_group"]: gr.update(visible=False),
                    controls["init_image"]: image})
    return out


def _wire_gallery_send(ctx: UIContext, tabs: gr.Tabs, results: dict, img2img: dict, target: str,
                       button: gr.Button) -> None:
    message = results["message"]

    def send(images, index: int, texts: list[str]) -> dict:
        chosen = _selected(images, index, texts)
        if chosen is None:
            return {message: NOTHING_GENERATED}
        image, text = chosen
        settings = ctx.settings
        values = paste.control_values(text, send_seed=settings["send_seed"], send_size=settings["send_size"],
                                      settings=settings)
        return {**_into_img2img(tabs, img2img, target, image, values), message: ""}

    _send_into_img2img(button, send, [results["gallery"], results["selected"], results["infotexts"]],
                       tabs, img2img, message)


def _wire_png_info(ctx: UIContext, tabs: gr.Tabs, png_info: dict, txt2img: dict, img2img: dict,
                   extras: dict) -> None:
    def load(path: str | None) -> Image.Image | None:
        if not path:
            return None
        try:
            return open_image(Path(path).read_bytes(), "image", ctx.settings["upload_max_megapixels"])
        except UserError:
            return None  # PNG Info already shows what is wrong with the file

    _wire_picture_sends(ctx, tabs, png_info["send"], png_info["image"], png_info["text"], load,
                        png_info["message"], "Nothing to send: upload a picture first.",
                        txt2img, img2img, extras)


def _wire_history(ctx: UIContext, tabs: gr.Tabs, history: dict, txt2img: dict, img2img: dict,
                  extras: dict) -> None:
    _wire_picture_sends(ctx, tabs, history["send"], history["chosen"], history["text"], history["load"],
                        history["message"], "Nothing to send: click a picture first.",
                        txt2img, img2img, extras)


def _wire_picture_sends(ctx: UIContext, tabs: gr.Tabs, send: dict, source, text, load, message, nothing_chosen: str,
                        txt2img: dict, img2img: dict, extras: dict) -> None:
    """PNG Info's and History's buttons: `load(source's value)` gives the picture (None when there
    is none), `text` holds its parameters. All of them go along, seed and size included (unlike a
    gallery's Send to): the picture itself is what is wanted again. When there is nothing to send,
    `message` says so (`nothing_chosen` when no picture is there at all)."""
    private = {"queue": False, "api_visibility": "private"}

    def to_txt2img(key, parameters: str) -> dict:
        if not (parameters or "").strip():  # leave txt2img's fields as they are
            return {message: NO_PARAMETERS if key else nothing_chosen}
        return {**pasted(txt2img["controls"], paste.control_values(parameters, settings=ctx.settings)),
                tabs: gr.Tabs(selected="txt2img"), message: ""}

    send["txt2img"].click(to_txt2img, inputs=[source, text],
                          outputs=[tabs, *_targets(txt2img["controls"]), message], **private)

    def to_extras(key) -> dict:
        image = load(key)
        if image is None:
            return {message: nothing_chosen}
        return {tabs: gr.Tabs(selected="extras"), extras["image"]: image, message: ""}

    send["extras"].click(to_extras, inputs=source, outputs=[tabs, extras["image"], message], **private)
    for target in ("img2img", "inpaint"):
        def to_img2img(key, parameters: str, target=target) -> dict:
            image = load(key)
            if image is None:
                return {message: nothing_chosen}
            return {**_into_img2img(tabs, img2img, target, image,
                                    paste.control_values(parameters, settings=ctx.settings)), message: ""}

        _send_into_img2img(send[target], to_img2img, [source, text], tabs, img2img, message)
