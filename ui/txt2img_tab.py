"""The txt2img tab: prompts and settings on the left, Generate, progress and results on the right."""

from __future__ import annotations

import gradio as gr

from . import controlnet_ui, extension_fields, generation_columns, refiner_ui, script_fields, ui_defaults, widgets
from .context import UIContext
from .job_flow import wire_generate
from .request_builder import named_values, request_from_ui

TAB = "txt2img"


def build(ctx: UIContext) -> dict:
    """The tab; returns its controls, results panel and buttons (for "send to" wiring)."""
    last_seeds = gr.State({})
    start = ui_defaults.start_values(ctx.settings, TAB)

    def parameters(controls: dict) -> None:
        controls.update(widgets.sampler_row(TAB, start))
        controls.update(widgets.size_and_batch(TAB, start))
        controls.update(widgets.seed_row(TAB, last_seeds))
        controls.update(widgets.override_settings(TAB))
        size = (controls["width"], controls["height"])
        controls.update(refiner_ui.accordion(ctx, TAB))
        controls.update(controlnet_ui.accordion(ctx, TAB, size))
        controls.update(extension_fields.render(ctx, TAB, "txt2img", size))
        controls.update(script_fields.render(ctx, TAB, "txt2img", controls))

    columns, _ = generation_columns.build(ctx, TAB, parameters)
    controls = columns.controls
    wire_generate(ctx, columns.buttons["generate"], set(controls.values()), columns.results, last_seeds,
                  lambda data: [(request_from_ui(named_values(controls, data), TAB), None)])
    return {"controls": controls, "results": columns.results, "buttons": columns.buttons}
