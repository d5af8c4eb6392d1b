"""The offer to download a standard model (an upscaler or face restorer the ecosystem names) that
a job needs but does not have yet: which file, how big, into which folder, from where, and a
Download button. Every tab that runs jobs shows it in its results panel.

Only catalogue names are ever downloaded: the names come from the server's own error, are kept
in server-side state, and are checked against the catalogue again before anything is fetched.
"""

from __future__ import annotations

import html

import gradio as gr

from engine.models.model_catalogue import ModelCatalogue, ModelNotDownloaded

from .context import UIContext
from .progress_view import download_steps


def offer_area(tab: str) -> dict:
    """Hidden until a job is refused for a missing model."""
    with gr.Group(visible=False, elem_id=f"{tab}_model_offer", elem_classes=["model-offer"]) as box:
        text = gr.Markdown("", elem_id=f"{tab}_model_offer_text")
        button = gr.Button("Download", variant="primary", size="sm", elem_id=f"{tab}_model_download")
        bar = gr.HTML("", elem_id=f"{tab}_model_download_progress")
    wanted = gr.State([])
    return {"box": box, "text": text, "button": button, "bar": bar, "wanted": wanted}


def offer_text(missing: ModelNotDownloaded, catalogue: ModelCatalogue) -> str:
    lines = ["**Not downloaded yet:**"]
    for entry in missing.entries:
        lines.append(f"- {entry.name}: `{entry.filename}` ({entry.size_label}) into `models/{entry.folder}`, "
                     f"from {catalogue.url(entry)}")
    lines.append("\nDownload checks the file against its published sha256. Or put the file there "
                 "yourself. Then run it again.")
    return "\n".join(lines)


def shown(offer: dict, missing: ModelNotDownloaded, catalogue: ModelCatalogue) -> dict:
    return {offer["box"]: gr.update(visible=True), offer["text"]: offer_text(missing, catalogue),
            offer["wanted"]: [entry.name for entry in missing.entries], offer["bar"]: ""}


def hidden(offer: dict) -> dict:
    return {offer["box"]: gr.update(visible=False), offer["wanted"]: []}


def outputs(offer: dict) -> list:
    """What `shown` and `hidden` change, for an event's outputs."""
    return [offer["box"], offer["text"], offer["wanted"], offer["bar"]]


def wire(ctx: UIContext, offer: dict) -> None:
    downloads = ctx.engine.addons.downloads

    def run(names: list[str]):
        for name in names or []:
            error = yield from download_steps(lambda progress: downloads.fetch(name, progress, wait=False))
            if error:
                yield f"<b>Download failed:</b> {html.escape(error)}"
                return
        if names:
            yield "Downloaded. Run it again."

    offer["button"].click(run, inputs=offer["wanted"], outputs=offer["bar"], concurrency_id="download",
                          concurrency_limit=1, api_visibility="private", show_progress="hidden")
