"""Running jobs from a tab: submit, show progress and previews, then the results; Interrupt and
Skip. Every generation tab wires its buttons through here."""

from __future__ import annotations

import html
from typing import Callable, Iterable

import gradio as gr

from engine.errors import UserError
from engine.job_results import GenerationResult
from engine.request import GenerationRequest

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
    message, infotexts = results["message"], results["infotexts"]

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
                yield {message: "", progress: ""}
                yield from poll(ctx.engine, job, lambda html_, preview: _live(html_, preview, progress, gallery))
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
        except UserError as error:
            yield {message: f"**Cannot generate:** {error.message}", progress: "",
                   gallery: images or None, infotexts: texts}
            return
        yield {progress: "", gallery: images, infotexts: texts, info: texts[0] if texts else "",
               message: "  \n".join(notes), last_seeds: last}

    outputs = [gallery, progress, info, message, infotexts, last_seeds]
    button.click(generate, inputs=inputs, outputs=outputs, concurrency_id="generate",
                 concurrency_limit=32, api_visibility="private", show_progress="hidden")


def _live(progress_html: str, preview, progress, gallery) -> dict:
    changes = {progress: progress_html}
    if preview is not None:
        changes[gallery] = [preview]
    return changes
