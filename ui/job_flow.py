"""Running jobs from a tab: submit, show progress and previews, then the results; Interrupt and
Skip. Every generation tab wires its buttons through here."""

from __future__ import annotations

import html
from typing import Callable, Iterable

import gradio as gr

from engine.errors import UserError
from engine.job_results import GenerationResult
from engine.models.model_catalogue import ModelNotDownloaded
from engine.request import GenerationRequest

from . import model_offer
from .context import UIContext
from .progress_view import poll


def owner_of(request: gr.Request | None) -> str:
    """A browser session's jobs belong to it alone."""
    return (request.session_hash or "") if request else ""


def wire_stop_buttons(ctx: UIContext, buttons: dict) -> None:
    """Interrupt and Skip act on the caller's own job only."""

    def interrupt(request: gr.Request) -> None:
        ctx.engine.interrupt(owner_of(request))

    def skip(request: gr.Request) -> None:
        ctx.engine.skip(owner_of(request))

    for name, handler in (("interrupt", interrupt), ("skip", skip)):
        buttons[name].click(handler, inputs=None, outputs=None, queue=False, api_visibility="private")


# Called with a finished result (the img2img batch copies files to its output folder); may
# return a note for the user.
ResultHook = Callable[[GenerationResult], str | None]
# Builds the job(s) of one click from the tab's input values, each with an optional hook; may
# raise UserError, also while being iterated.
RequestMaker = Callable[[dict], Iterable[tuple[GenerationRequest, ResultHook | None]]]


def wire_generate(ctx: UIContext, button: gr.Button, inputs: set, results: dict,
                  last_seeds: gr.State, make_requests: RequestMaker) -> None:
    gallery, progress, info = results["gallery"], results["progress"], results["infotext"]
    message, infotexts, offer = results["message"], results["infotexts"], results["offer"]
    catalogue = ctx.engine.addons.downloads.catalogue

    def generate(data: dict, request: gr.Request):
        images, texts, notes, last = [], [], [], {}
        try:
            requests = iter(make_requests(data))
            pending = next(requests, None)
            if pending is None:
                yield {message: "**Cannot generate:** nothing to do", progress: ""}
                return
            while pending is not None:
                generation, on_result = pending
                job = ctx.engine.submit(generation, owner=owner_of(request))
                yield {message: "", progress: "", **model_offer.hidden(offer)}
                yield from poll(ctx.engine, job, lambda html_, preview: _live(html_, preview, progress, gallery))
                if isinstance(job.error, ModelNotDownloaded):
                    raise job.error  # its file went away after the check: offer it again
                if job.error is not None:
                    text = getattr(job.error, "message", None) or f"{type(job.error).__name__}: {job.error}"
                    yield {progress: "", message: f"**Generation failed:** {text}"}
                    return
                result: GenerationResult = job.result
                items = result.gallery()
                images += [image for image, _ in items]
                texts += [text for _, text in items]
                if result.interrupted:
                    notes.append("Interrupted: showing what was made so far." if result.images
                                 else "Interrupted before any image was made.")
                notes += [f"Note: {html.escape(w)}" for w in result.warnings]
                if on_result is not None:
                    notes += [n for n in [on_result(result)] if n]
                if result.seeds:
                    last = {"seed": result.seeds[0], "subseed": result.subseeds[0]}
                pending = None if result.interrupted else next(requests, None)
        except ModelNotDownloaded as missing:  # offer the download instead of a dead end
            yield {message: "**Cannot generate:** a model this job uses is not downloaded yet.", progress: "",
                   gallery: images or None, infotexts: texts, **model_offer.shown(offer, missing, catalogue)}
            return
        except UserError as error:
            yield {message: f"**Cannot generate:** {error.message}", progress: "",
                   gallery: images or None, infotexts: texts}
            return
        yield {progress: "", gallery: images, infotexts: texts, info: texts[0] if texts else "",
               message: "  \n".join(notes), last_seeds: last}

    outputs = [gallery, progress, info, message, infotexts, last_seeds, *model_offer.outputs(offer)]
    button.click(generate, inputs=inputs, outputs=outputs, concurrency_id="generate",
                 concurrency_limit=32, api_visibility="private", show_progress="hidden")
    model_offer.wire(ctx, offer)


def _live(progress_html: str, preview, progress, gallery) -> dict:
    changes = {progress: progress_html}
    if preview is not None:
        changes[gallery] = [preview]
    return changes
