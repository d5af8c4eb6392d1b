"""The txt2img tab: prompts and settings on the left, progress and results on the right."""

from __future__ import annotations

import gradio as gr

from . import controlnet_ui, extension_fields, prompt_tools, ui_defaults, widgets
from .context import UIContext
from .job_flow import wire_generate, wire_stop_buttons
from .request_builder import named_values, request_from_ui

TAB = "txt2img"


def build(ctx: UIContext) -> dict:
    """The tab; returns its controls, results panel and buttons (for "send to" wiring)."""
    last_seeds = gr.State({})
    start = ui_defaults.start_values(ctx.settings, TAB)
    controls, counters, buttons = prompt_tools.prompt_area(ctx, TAB)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            controls.update(widgets.sampler_row(TAB, start))
            controls.update(widgets.size_and_batch(TAB, start))
            controls.update(widgets.seed_row(TAB, last_seeds))
            controls.update(controlnet_ui.accordion(ctx, TAB, (controls["width"], controls["height"])))
            controls.update(extension_fields.render(ctx, TAB, "txt2img",
                                                    (controls["width"], controls["height"])))
        with gr.Column(scale=1):
            results = widgets.results_panel(TAB)
    prompt_tools.token_counters(ctx, {k: controls[k] for k in counters}, counters, controls["steps"])

    wire_generate(ctx, buttons["generate"], set(controls.values()), results, last_seeds,
                  lambda data: [(request_from_ui(named_values(controls, data), TAB), None)])
    wire_stop_buttons(ctx, buttons)
    return {"controls": controls, "results": results, "buttons": buttons}
