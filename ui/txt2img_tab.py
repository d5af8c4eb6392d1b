"""The txt2img tab: prompts and settings on the left, progress and results on the right."""

from __future__ import annotations

import html

import gradio as gr

from engine.errors import UserError

from . import prompt_tools, widgets
from .context import UIContext
from .progress_view import poll
from .request_builder import named_values, request_from_ui

TAB = "txt2img"


def build(ctx: UIContext) -> dict[str, gr.components.Component]:
    last_seeds = gr.State({})
    with gr.Row(equal_height=False):
        with gr.Column(scale=6):
            controls, counters = widgets.prompt_boxes(TAB)
        with gr.Column(scale=1, min_width=160):
            buttons = widgets.action_buttons(TAB)
    controls["styles"] = prompt_tools.styles_row(ctx, TAB, controls["prompt"],
                                                 controls["negative_prompt"])
    prompt_tools.lora_browser(ctx, TAB, controls["prompt"])
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            controls.update(widgets.sampler_row(TAB))
            controls.update(widgets.size_and_batch(TAB))
            controls.update(widgets.seed_row(TAB, last_seeds))
        with gr.Column(scale=1):
            results = widgets.results_panel(TAB)
    prompt_tools.token_counters(ctx, {k: controls[k] for k in counters}, counters, controls["steps"])

    _wire_generate(ctx, controls, buttons, results, last_seeds)
    _wire_stop_buttons(ctx, buttons)
    return controls


def _owner(request: gr.Request | None) -> str:
    return (request.session_hash or "") if request else ""


def _wire_stop_buttons(ctx: UIContext, buttons: dict) -> None:
    """Interrupt and Skip act on the caller's own job only."""

    def interrupt(request: gr.Request) -> None:
        ctx.engine.interrupt(_owner(request))

    def skip(request: gr.Request) -> None:
        ctx.engine.skip(_owner(request))

    for name, handler in (("interrupt", interrupt), ("skip", skip)):
        buttons[name].click(handler, inputs=None, outputs=None, queue=False, api_visibility="private")


def _wire_generate(ctx: UIContext, controls: dict, buttons: dict, results: dict,
                   last_seeds: gr.State) -> None:
    gallery, progress, info = results["gallery"], results["progress"], results["infotext"]
    message, infotexts = results["message"], results["infotexts"]

    def generate(data: dict, request: gr.Request):
        try:
            job = ctx.engine.submit(request_from_ui(named_values(controls, data), TAB),
                                    owner=_owner(request))
        except UserError as error:
            yield {message: f"**Cannot generate:** {error.message}", progress: ""}
            return
        yield {message: "", progress: ""}

        def update(html: str, preview) -> dict:
            changes = {progress: html}
            if preview is not None:
                changes[gallery] = [preview]
            return changes

        yield from poll(ctx.engine, job, update)
        if job.error is not None:
            text = getattr(job.error, "message", None) or f"{type(job.error).__name__}: {job.error}"
            yield {progress: "", message: f"**Generation failed:** {text}"}
            return
        result = job.result
        items = result.gallery()
        notes = (["Interrupted: showing what was made so far."] if result.interrupted else [])
        note = "  \n".join(notes + [f"Note: {html.escape(w)}" for w in result.warnings])
        yield {
            progress: "",
            gallery: [image for image, _ in items],
            infotexts: [text for _, text in items],
            info: items[0][1] if items else "",
            message: note,
            last_seeds: {"seed": result.seeds[0], "subseed": result.subseeds[0]} if result.seeds else {},
        }

    inputs = set(controls.values())
    outputs = [gallery, progress, info, message, infotexts, last_seeds]
    buttons["generate"].click(generate, inputs=inputs, outputs=outputs, concurrency_id="generate",
                              concurrency_limit=32, api_visibility="private", show_progress="hidden")
