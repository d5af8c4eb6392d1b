"""The Checkpoint Merger tab, laid out as AUTOMATIC1111's: three models, the method and its
multiplier, the saving options, and the Merge button; the new file is offered at once in the
checkpoint list at the top."""

from __future__ import annotations

import html

import gradio as gr

from engine.errors import UserError
from engine.merge.merge_request import (
    ADD_DIFFERENCE,
    CONFIG_SOURCES,
    INTERP_METHODS,
    NO_VAE,
    WEIGHTED_SUM,
    MergeRequest,
)

from .context import UIContext
from .number_inputs import Slider
from .widgets import REFRESH

METHOD_HELP = {WEIGHTED_SUM: "Result = A × (1 − M) + B × M", ADD_DIFFERENCE: "Result = A + (B − C) × M",
               "No interpolation": "Result = A"}


def _titles(ctx: UIContext) -> list[str]:
    return [c.title for c in ctx.registry.checkpoints if c.kind in ("safetensors", "pickle")]


def _title_now(ctx: UIContext, chosen: str | None) -> str | None:
    """The title a chosen model has now (reading its hash for the recipe adds it to the title)."""
    try:
        return ctx.registry.find(chosen).title if chosen else None
    except UserError:
        return None


def _vae_choices(ctx: UIContext) -> list[str]:
    return [NO_VAE] + [v.name for v in ctx.engine.addons.vaes.files]


def run_merge(ctx: UIContext, primary, secondary, tertiary, method, multiplier, half, name, config,
              vae, discard, overwrite, progress=None) -> tuple[str, list[str]]:
    """(result text as HTML, the checkpoint titles after the merge)."""
    request = MergeRequest(primary or "", secondary or "", tertiary or "", method, multiplier, bool(half),
                           name or "", config, vae or NO_VAE, discard or "", bool(overwrite))

    def report(done: int, total: int) -> None:
        if progress is not None:
            progress(done / max(total, 1), desc=f"Merging: {done}/{total} tensors")

    try:
        result = ctx.engine.merge_checkpoints(request, report)
    except UserError as error:
        return f"<p class='merge-error'>Error: {html.escape(error.message)}</p>", ctx.registry.titles()
    text = "<br>".join(html.escape(line) for line in result.info.splitlines())
    return f"<p class='merge-result'>{text}</p>", ctx.registry.titles()


def build(ctx: UIContext, checkpoint_dropdown=None) -> dict:
    titles = _titles(ctx)
    with gr.Row(equal_height=False):
        with gr.Column(variant="compact"):
            gr.Markdown("A merger of the models: the result is saved in the checkpoints folder.",
                        elem_id="modelmerger_help")
            with gr.Row():
                primary = gr.Dropdown(titles, value=None, label="Primary model (A)",
                                      elem_id="modelmerger_primary_model_name")
                secondary = gr.Dropdown(titles, value=None, label="Secondary model (B)",
                                        elem_id="modelmerger_secondary_model_name")
                tertiary = gr.Dropdown(titles, value=None, label="Tertiary model (C)",
                                       elem_id="modelmerger_tertiary_model_name")
                refresh = gr.Button(REFRESH, elem_id="modelmerger_refresh_checkpoint_list", scale=0, min_width=40,
                                    elem_classes=["tool"])
            custom_name = gr.Textbox(label="Custom Name (Optional)", elem_id="modelmerger_custom_name",
                                     max_length=200)
            multiplier = Slider(0.0, 1.0, value=0.3, step=0.05, label="Multiplier (M) - set to 0 to get model A",
                                   elem_id="modelmerger_interp_amount")
            method = gr.Radio(list(INTERP_METHODS), value=WEIGHTED_SUM, label="Interpolation Method",
                              elem_id="modelmerger_interp_method", info=METHOD_HELP[WEIGHTED_SUM])
            with gr.Row():
                gr.Radio(["safetensors"], value="safetensors", label="Checkpoint format",
                         elem_id="modelmerger_checkpoint_format", interactive=False)
                half = gr.Checkbox(label="Save as float16", value=False, elem_id="modelmerger_save_as_half")
            config = gr.Radio(list(CONFIG_SOURCES), value=CONFIG_SOURCES[0], label="Copy config from",
                              elem_id="modelmerger_config_method")
            with gr.Row():
                vae = gr.Dropdown(_vae_choices(ctx), value=NO_VAE, label="Bake in VAE",
                                  elem_id="modelmerger_bake_in_vae")
                discard = gr.Textbox(label="Discard weights with matching name", value="",
                                     elem_id="modelmerger_discard_weights", max_length=1000)
            overwrite = gr.Checkbox(label="Overwrite a file of the same name", value=False,
                                    elem_id="modelmerger_overwrite")
            merge = gr.Button("Merge", variant="primary", elem_id="modelmerger_merge")
        with gr.Column(variant="compact"):
            result = gr.HTML("", elem_id="modelmerger_result")

    def refreshed(*chosen):
        ctx.registry.refresh()
        ctx.engine.addons.vaes.refresh()
        choices = _titles(ctx)
        return (*(gr.update(choices=choices, value=_title_now(ctx, value)) for value in chosen),
                gr.update(choices=_vae_choices(ctx)))

    private = {"api_visibility": "private"}
    refresh.click(refreshed, inputs=[primary, secondary, tertiary], outputs=[primary, secondary, tertiary, vae],
                  queue=False, **private)
    method.change(lambda chosen: gr.update(info=METHOD_HELP.get(chosen, "")), inputs=method, outputs=method,
                  queue=False, **private)

    def on_merge(*values, progress=gr.Progress()):  # noqa: B008 (Gradio's way of asking for its progress bar)
        text, all_titles = run_merge(ctx, *values, progress=progress)
        mergeable = _titles(ctx)
        updates = [text, *(gr.update(choices=mergeable, value=_title_now(ctx, chosen)) for chosen in values[:3])]
        if checkpoint_dropdown is not None:
            updates.append(gr.update(choices=all_titles))
        return tuple(updates)

    outputs = [result, primary, secondary, tertiary] + ([checkpoint_dropdown] if checkpoint_dropdown is not None else [])
    merge.click(on_merge, inputs=[primary, secondary, tertiary, method, multiplier, half, custom_name, config,
                                  vae, discard, overwrite], outputs=outputs, concurrency_id="merge",
                concurrency_limit=1, **private)
    return {"primary": primary, "secondary": secondary, "tertiary": tertiary, "method": method,
            "multiplier": multiplier, "merge": merge, "result": result}
