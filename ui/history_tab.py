"""The History tab: pictures already saved under outputs/, newest first, a page at a time, so one
made while the browser tab was closed is still found; pick one to read its parameters and send it on.

Pictures reach the page as decoded images that Gradio copies into its own cache, like every
other gallery here: no folder is added to Gradio's allowed_paths.
"""

from __future__ import annotations

import logging

import gradio as gr
from PIL import Image

from engine.errors import UserError
from engine.output.history import SavedImages

from .context import UIContext
from .png_info_tab import TARGETS
from .widgets import REFRESH

log = logging.getLogger(__name__)

KINDS = (("All", "all"), ("txt2img", "txt2img"), ("img2img", "img2img"), ("Extras", "extras"),
         ("Grids", "grids"))
PAGE_SIZE = 24
# Each shown picture is encoded again as PNG for the page; an 8K upscale would take seconds, so
# larger ones are shown scaled down. "Send to" always takes the file itself.
PREVIEW_SIDE = 1024
_EVENTS = {"api_visibility": "private", "concurrency_id": "history", "concurrency_limit": 2}


def page_label(number: int, pages: int, total: int) -> str:
    if not total:
        return "No saved pictures here yet."
    return f"Page {number} of {pages} ({total} picture{'s' if total != 1 else ''})"


def build(ctx: UIContext, tab: gr.Tab) -> dict:
    """The tab's parts; opening the tab (`tab`) shows the newest page."""
    saved = SavedImages(ctx.engine.writer)
    number, names, chosen = gr.State(1), gr.State([]), gr.State("")
    with gr.Row(equal_height=False, elem_id="history_top"):
        kind = gr.Radio(KINDS, value="all", label="Show", elem_id="history_kind", scale=4)
        refresh = gr.Button(f"{REFRESH} Refresh", elem_id="history_refresh", size="sm", scale=0,
                            min_width=120)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Saved pictures, newest first", format="png", columns=6,
                                 height="auto", object_fit="contain", interactive=False,
                                 elem_id="history_gallery")
            with gr.Row(elem_id="history_pager"):
                newer = gr.Button("\u25C0 Newer", elem_id="history_newer", size="sm", interactive=False)
                where = gr.Markdown("", elem_id="history_page")
                older = gr.Button("Older \u25B6", elem_id="history_older", size="sm", interactive=False)
        with gr.Column(scale=2):
            file_name = gr.Textbox(label="File (in outputs/)", interactive=False, elem_id="history_file")
            text = gr.Textbox(label="Generation parameters", lines=6, interactive=False,
                              elem_id="history_infotext", buttons=["copy"])
            with gr.Row():
                send = {target: gr.Button(label, elem_id=f"history_send_to_{target}", size="sm")
                        for target, label in TARGETS.items()}
            message = gr.Markdown("", elem_id="history_message", elem_classes=["message"])

    def show(which: str, wanted: int, keep: str = "") -> dict:
        """A page of the list. The chosen picture `keep` stays chosen (and shown large) when it is
        on the page; otherwise nothing is chosen and the gallery shows its grid, so what is shown
        is always what Send to sends."""
        try:
            listing = saved.page(which, wanted, PAGE_SIZE)
        except UserError as error:
            return {message: error.message}
        pictures, shown = [], []
        for item in listing.images:
            try:
                pictures.append(saved.open(item, PREVIEW_SIDE))
            except UserError as error:  # removed or damaged since it was listed: show the rest
                log.info("History: %s", error.message)
                continue
            shown.append(item.name)
        out = {names: shown, number: listing.number,
               where: page_label(listing.number, listing.pages, listing.total),
               newer: gr.update(interactive=listing.number > 1),
               older: gr.update(interactive=listing.number < listing.pages)}
        if keep and keep in shown:
            return {**out, gallery: gr.Gallery(value=pictures, selected_index=shown.index(keep))}
        return {**out, gallery: gr.Gallery(value=pictures, selected_index=None),
                file_name: "", text: "", chosen: "", message: ""}

    page_outputs = [gallery, names, number, where, newer, older, file_name, text, chosen, message]
    # Coming back to the tab shows the newest pictures, or the chosen one's page while one is chosen.
    tab.select(lambda which, at, keep: show(which, at if keep else 1, keep), inputs=[kind, number, chosen],
               outputs=page_outputs, **_EVENTS)
    kind.change(lambda which: show(which, 1), inputs=kind, outputs=page_outputs, **_EVENTS)
    refresh.click(show, inputs=[kind, number, chosen], outputs=page_outputs, **_EVENTS)
    newer.click(lambda which, at: show(which, at - 1), inputs=[kind, number], outputs=page_outputs, **_EVENTS)
    older.click(lambda which, at: show(which, at + 1), inputs=[kind, number], outputs=page_outputs, **_EVENTS)

    def pick(shown: list[str], event: gr.SelectData) -> dict:
        index = event.index if isinstance(event.index, int) else -1
        if not 0 <= index < len(shown):
            return gr.skip()  # one update per output (an empty dict would fail the event)
        try:
            item = saved.find(shown[index])
            parameters = saved.infotext(item) or ""
        except UserError as error:
            return {file_name: shown[index], text: "", chosen: "", message: error.message}
        return {file_name: item.name, text: parameters, chosen: item.name,
                message: "" if parameters else "This picture holds no generation parameters."}

    gallery.select(pick, inputs=names, outputs=[file_name, text, chosen, message], **_EVENTS)

    def load(name: str) -> Image.Image | None:
        """The chosen picture at full size, for "Send to"; None when it is gone or unreadable."""
        if not name:
            return None
        try:
            return saved.open(saved.find(name))
        except UserError:
            return None

    return {"chosen": chosen, "text": text, "send": send, "message": message, "load": load}
