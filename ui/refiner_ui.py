"""The Refiner accordion of txt2img and img2img, as A1111 1.10 has it: a checkpoint that takes over
the sampling at "Switch at" of it (engine/runs/refiner.py does the switching)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from engine.errors import RequestError
from engine.request import DEFAULT_REFINER_SWITCH_AT, REFINER_SWITCH_RANGE, RefinerChoice

from .context import UIContext
from .number_inputs import Slider
from .widgets import REFRESH

NO_REFINER = ("", "None")


def accordion(ctx: UIContext, tab: str) -> dict[str, gr.components.Component]:
    """The accordion's controls: enable, checkpoint (the sd_model_refiner setting's at start; any
    checkpoint of the job model's family will do), switch point."""
    default = ctx.settings["sd_model_refiner"]
    with gr.Accordion("Refiner", open=False, elem_id=f"{tab}_refiner_accordion"):
        enabled = gr.Checkbox(label="Enable refiner", value=False, elem_id=f"{tab}_refiner_enable")
        with gr.Row():
            # Custom values: a name from a pasted infotext ("name [hash]") is looked up when the job
            # is checked, and an unknown one named then.
            checkpoint = gr.Dropdown(["", *ctx.registry.titles()], value="" if default in NO_REFINER else default,
                                     label="Checkpoint", elem_id=f"{tab}_refiner_checkpoint", scale=6,
                                     allow_custom_value=True,
                                     info="switches to this model in the middle of generation")
            refresh = gr.Button(REFRESH, elem_id=f"{tab}_refiner_refresh", scale=0, min_width=40,
                                elem_classes=["tool"])
        switch_at = Slider(*REFINER_SWITCH_RANGE, step=0.01, value=DEFAULT_REFINER_SWITCH_AT, label="Switch at",
                           elem_id=f"{tab}_refiner_switch_at",
                           info="share of the sampling done when the refiner takes over (1: never)")

    def refreshed(current: str):
        ctx.registry.refresh()
        return gr.update(choices=["", *ctx.registry.titles()], value=current)

    refresh.click(refreshed, inputs=checkpoint, outputs=checkpoint, queue=False, api_visibility="private")
    return {"refiner_enabled": enabled, "refiner_checkpoint": checkpoint, "refiner_switch_at": switch_at}


def wire_page_load(blocks: gr.Blocks, ctx: UIContext, checkpoints: list) -> None:
    """Each page load lists the checkpoints there are now and starts from the sd_model_refiner
    setting as it is now (it may have changed since the page was built)."""
    def fresh():
        default = ctx.settings["sd_model_refiner"]
        update = gr.update(choices=["", *ctx.registry.titles()], value="" if default in NO_REFINER else default)
        return [update] * len(checkpoints)

    blocks.load(fresh, outputs=checkpoints, queue=False, api_visibility="private", show_progress="hidden")


def refiner_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The request's refiner from the accordion's values (none when it is not enabled)."""
    if not values.get("refiner_enabled"):
        return {}
    checkpoint = values.get("refiner_checkpoint")
    if not isinstance(checkpoint, str) or checkpoint.strip() in NO_REFINER:
        raise RequestError("Refiner is enabled but no refiner checkpoint is chosen: pick one, or turn the "
                           "refiner off", "refiner_checkpoint")
    return {"refiner": RefinerChoice(checkpoint.strip(), values.get("refiner_switch_at", DEFAULT_REFINER_SWITCH_AT))}
