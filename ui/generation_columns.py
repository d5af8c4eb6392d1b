"""The two columns every generation tab (txt2img, img2img, ControlNet) is laid out in, as in
AUTOMATIC1111's web UI: the prompts and the tab's parameters on the left; Generate, the progress,
the messages and the results on the right, from the top of the page down. What a click on
Generate produces, an image or the reason there is none, so shows where the user is looking,
however long the parameters column grows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from . import prompt_tools, widgets
from .context import UIContext
from .job_flow import wire_stop_buttons


@dataclass(frozen=True)
class GenerationColumns:
    controls: dict  # {name: component}: the prompt area's and the tab's own parameters
    buttons: dict   # generate, interrupt, skip, paste
    results: dict   # widgets.results_panel's


def build(ctx: UIContext, tab: str, parameters: Callable[[dict], Any]) -> tuple[GenerationColumns, Any]:
    """The tab's two columns. `parameters(controls)` builds the tab's own controls under the
    prompts (adding them to `controls`, which must end up holding "steps"); what it returns is
    handed back beside the columns. Interrupt, Skip and the token counters are wired here; the
    tab wires Generate."""
    with gr.Row(equal_height=False, elem_id=f"{tab}_columns"):
        with gr.Column(scale=1, elem_id=f"{tab}_parameters_column"):
            controls, counters, cards = prompt_tools.prompt_area(ctx, tab)
            extra = parameters(controls)
        with gr.Column(scale=1, elem_id=f"{tab}_results_column"):
            buttons = widgets.action_buttons(tab)
            results = widgets.results_panel(tab)
    if cards is not None:
        cards["wire_results"](results)
    prompt_tools.token_counters(ctx, {k: controls[k] for k in counters}, counters, controls["steps"])
    wire_stop_buttons(ctx, buttons)
    return GenerationColumns(controls, buttons, results), extra
