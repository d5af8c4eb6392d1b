"""The whole page: checkpoint bar, then one tab per task."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine.version import VERSION

from . import (
    checkpoint_bar,
    controlnet_tab,
    extension_fields,
    extras_tab,
    family_presets,
    gradio_cache,
    history_tab,
    img2img_tab,
    merger_tab,
    network_cards,
    png_info_tab,
    refiner_ui,
    send_to,
    settings_tab,
    txt2img_tab,
    ui_defaults,
    workers_tab,
)
from .context import UIContext

ASSETS = Path(__file__).parent / "assets"


def build_app(ctx: UIContext) -> gr.Blocks:
    gradio_cache.install()  # pictures are never served half-written (see ui/gradio_cache.py)
    # Gallery images are copied into Gradio's cache; clear out day-old copies every hour.
    ctx.extension_accordions.clear()  # filled again by the tabs below
    hidden = set(ctx.settings["hidden_tabs"])  # laid out once: a change needs a restart
    with gr.Blocks(title="SD Studio", analytics_enabled=False, delete_cache=(3600, 86400)) as blocks:
        bar = checkpoint_bar.build(ctx)
        network_cards.wire_checkpoint_cards(ctx, bar)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                txt2img = txt2img_tab.build(ctx)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img", visible="img2img" not in hidden):
                img2img = img2img_tab.build(ctx)
            with gr.Tab("ControlNet", id="controlnet", elem_id="tab_controlnet",
                        visible="ControlNet" not in hidden):
                controlnet_tab.build(ctx)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras", visible="Extras" not in hidden):
                extras = extras_tab.build(ctx)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo", visible="PNG Info" not in hidden):
                png_info = png_info_tab.build(ctx)
            with gr.Tab("Checkpoint Merger", id="modelmerger", elem_id="tab_modelmerger",
                        visible="Checkpoint Merger" not in hidden):
                merger_tab.build(ctx, bar["dropdown"])
            with gr.Tab("History", id="history", elem_id="tab_history",
                        visible="History" not in hidden) as history_block:
                history = history_tab.build(ctx, history_block)
            with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions",
                        visible="Extensions" not in hidden):
                extensions_state = extension_fields.extensions_tab(ctx)
            if ctx.engine.has_workers:
                with gr.Tab("Workers", id="workers", elem_id="tab_workers"):
                    workers_tab.build(ctx)
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                settings_load = settings_tab.build(ctx, linked=bar["quick"], extensions=extensions_state)
        send_to.wire(ctx, tabs, txt2img, img2img, png_info, extras, history)
        gr.Markdown(f"SD Studio {VERSION}", elem_id="footer_version")
        _on_page_load(blocks, ctx, bar, extensions_state)
        settings_load(blocks)
        ui_defaults.wire_page_load(blocks, ctx.settings, {"txt2img": txt2img["controls"],
                                                          "img2img": img2img["controls"]})
        refiner_ui.wire_page_load(blocks, ctx, [tab["controls"]["refiner_checkpoint"] for tab in (txt2img, img2img)])
        family_presets.wire(blocks, ctx, bar["dropdown"], {"txt2img": txt2img["controls"],
                                                           "img2img": img2img["controls"]})
    return blocks


def _on_page_load(blocks: gr.Blocks, ctx: UIContext, bar: dict, extensions_state: tuple) -> None:
    """Every page load sees the current checkpoint list, the no-model notice if it applies, and
    the extensions as they are enabled now."""
    outputs = [bar["dropdown"], bar["notice"], bar["status"], *bar["quick"].values()]
    blocks.load(bar["on_load"], outputs=outputs,
                concurrency_id="page_load", concurrency_limit=None, api_visibility="private",
                show_progress="hidden")
    current, outputs = extensions_state
    blocks.load(current, outputs=outputs, queue=False, api_visibility="private", show_progress="hidden")
    check = bar["download"]["check"]
    if check is not None:
        blocks.load(check, outputs=bar["download"]["button"], api_visibility="private")


def page_css() -> str:
    return (ASSETS / "style.css").read_text(encoding="utf-8")


SCRIPTS = ("shortcuts.js", "infotext_drop.js", "theme.js", "settings_search.js", "editor_upload_check.js",
           "extra_networks.js")


def page_js() -> str:
    """One function (what Gradio takes) that runs each script's function."""
    calls = "".join(f"({(ASSETS / name).read_text(encoding='utf-8').strip()})();\n" for name in SCRIPTS)
    return "() => {\n" + calls + "}"
