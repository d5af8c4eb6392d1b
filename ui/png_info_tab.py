"""The PNG Info tab: drop an image, read the parameters it was made with, send them on."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from engine.output import infotext
from engine.errors import UserError
from engine.output.writer import read_infotext
from engine.runs.uploads import open_image

from . import checked_images
from .context import UIContext

TARGETS = {"txt2img": "Send to txt2img", "img2img": "Send to img2img", "inpaint": "Send to inpaint",
           "extras": "Send to extras"}


def read(path: str | None, limit_megapixels: float) -> tuple[str, str]:
    """(infotext, HTML table of its fields) of an image file."""
    if not path:
        return "", ""
    try:
        image = open_image(Path(path).read_bytes(), "image", limit_megapixels)
    except UserError as error:
        return "", f"<p class='pnginfo-error'>{html.escape(error.message)}</p>"
    text = read_infotext(image)
    if not text:
        return "", "<p>This image holds no generation parameters.</p>"
    rows = "".join(f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>"
                   for key, value in infotext.fields_table(text).items())
    return text, f"<table class='pnginfo-table'>{rows}</table>"


def build(ctx: UIContext) -> dict:
    with gr.Row(equal_height=False):
        with gr.Column():
            # A file path, not a decoded image: decoding would drop the text chunks.
            image = checked_images.image(ctx.settings, label="Source", type="filepath", sources=["upload", "clipboard"],
                             elem_id="pnginfo_image", height=420)
        with gr.Column():
            table = gr.HTML("", elem_id="pnginfo_html")
            text = gr.Textbox(label="Parameters", lines=4, interactive=False, elem_id="pnginfo_text",
                              buttons=["copy"])
            with gr.Row():
                send = {target: gr.Button(label, elem_id=f"pnginfo_send_to_{target}", size="sm")
                        for target, label in TARGETS.items()}
            message = gr.Markdown("", elem_id="pnginfo_message", elem_classes=["message"])
    image.change(lambda path: (*read(path, ctx.settings["upload_max_megapixels"]), ""), inputs=image,
                 outputs=[text, table, message], api_visibility="private", concurrency_id="page_load",
                 concurrency_limit=None)
    return {"image": image, "text": text, "send": send, "message": message}
