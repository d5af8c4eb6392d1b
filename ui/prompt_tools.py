"""Helpers around the prompt boxes: token counters, styles, the extra network cards and the LoRA list.

Shared by every tab that has prompts; each builder returns the components it made.
"""

from __future__ import annotations

import html

import gradio as gr

from engine.errors import RequestError
from engine.prompts.styles import Style, StyleStore

from . import network_cards
from .context import UIContext

PRIVATE = {"api_visibility": "private"}
CARD_TABS = ("txt2img", "img2img")  # as in A1111; the ControlNet tab keeps the list of LoRAs


def counter_html(used: int, limit: int) -> str:
    over = " over" if used > limit else ""
    return f"<span class='token-counter{over}' title='tokens used / current limit'>{used}/{limit}</span>"


def token_counters(ctx: UIContext, boxes: dict, counters: dict, steps: gr.Slider) -> None:
    """Update each prompt box's N/75 counter as the user types (and when steps change).

    Steps has one handler for all the counters, not one per counter: Gradio's page re-sends a
    deferred "always_last" event to every handler of its trigger, so two such handlers on one
    trigger kept re-running each other after a quick double move of the slider, an endless
    request loop that held the browser at full CPU."""

    def count(text: str, step_count) -> str:
        try:
            used, limit = ctx.engine.token_count(text or "", int(step_count or 20))
        except Exception:  # counting must never get in the way of typing
            return ""
        return counter_html(used, limit)

    options = {"queue": False, "trigger_mode": "always_last", "show_progress": "hidden", **PRIVATE}
    for name, box in boxes.items():
        box.change(count, inputs=[box, steps], outputs=counters[name], **options)
    names = list(boxes)

    def count_all(step_count, *texts) -> list[str]:
        return [count(text, step_count) for text in texts]

    steps.release(count_all, inputs=[steps, *(boxes[n] for n in names)],
                  outputs=[counters[n] for n in names], **options)


def styles_row(ctx: UIContext, tab: str, prompt: gr.Textbox, negative: gr.Textbox) -> gr.Dropdown:
    """A multi-select of saved styles, and a way to save the current prompts as a new one."""
    store = ctx.engine.addons.styles
    with gr.Row(equal_height=False):
        styles = gr.Dropdown(store.names(), value=[], multiselect=True, label="Styles",
                             elem_id=f"{tab}_styles", scale=6)
        refresh = gr.Button("\U0001F504", elem_id=f"{tab}_styles_refresh", scale=0, min_width=40,
                            elem_classes=["tool"])
    with gr.Accordion("Save prompts as a style", open=False, elem_id=f"{tab}_style_save_box"):
        with gr.Row():
            name = gr.Textbox(label="Style name", elem_id=f"{tab}_style_name", scale=4)
            save = gr.Button("Save style", elem_id=f"{tab}_style_save", scale=1)
        note = gr.Markdown("", elem_id=f"{tab}_style_note")

    def refreshed(chosen: list[str]):
        names = store.names()
        return gr.update(choices=names, value=[n for n in chosen or [] if n in names])

    def saved(style_name: str, prompt_text: str, negative_text: str, chosen: list[str]):
        done, note = save_style(store, style_name, prompt_text, negative_text)
        return (refreshed(chosen) if done else gr.update()), note

    refresh.click(refreshed, inputs=styles, outputs=styles, queue=False, **PRIVATE)
    save.click(saved, inputs=[name, prompt, negative, styles], outputs=[styles, note], queue=False,
               **PRIVATE)
    return styles


def save_style(store: StyleStore, style_name: str, prompt_text: str, negative_text: str
               ) -> tuple[bool, str]:
    """Save the prompts as the style `style_name`: whether it was saved, and the note to show.
    The note also names the rows of the styles file that cannot be read, so whoever saves learns
    why a style they expected is missing from the list (the save keeps those rows unchanged)."""
    style_name = (style_name or "").strip()
    if not style_name:
        return False, "**Give the style a name first.**"
    try:
        store.save(Style(style_name, prompt_text or "", negative_text or ""))
    except RequestError as error:
        return False, f"**{html.escape(error.message, quote=False)}**"
    note = f"Saved style **{html.escape(style_name)}**."
    problems = store.problems()
    if problems:
        note += "\n\n" + "\n".join(f"- {html.escape(problem, quote=False)}" for problem in problems)
    return True, note


def lora_browser(ctx: UIContext, tab: str, prompt: gr.Textbox) -> None:
    """A searchable list of models/Lora; clicking one adds its tag to the prompt."""
    library = ctx.engine.addons.loras
    with gr.Accordion("LoRA", open=False, elem_id=f"{tab}_lora_browser"):
        with gr.Row():
            search = gr.Textbox(placeholder="Search LoRAs", show_label=False,
                                elem_id=f"{tab}_lora_search", scale=6)
            refresh = gr.Button("\U0001F504", elem_id=f"{tab}_lora_refresh", scale=0, min_width=40,
                                elem_classes=["tool"])
        names = gr.State([lora.name for lora in library.files])
        listing = gr.Dataset(components=[gr.Textbox(visible=False)], samples=_samples(names.value),
                             type="index", label=_listing_label(len(names.value), library.folder),
                             samples_per_page=24, elem_id=f"{tab}_lora_list", layout="gallery")

    def filtered(query: str, rescan: bool = False):
        if rescan:
            library.refresh()
        query = (query or "").strip().lower()
        found = [lora.name for lora in library.files
                 if not query or query in lora.name.lower() or query in lora.alias.lower()]
        return found, gr.Dataset(samples=_samples(found),
                                 label=_listing_label(len(found), library.folder))

    def insert(index: int | None, shown: list[str], text: str) -> str:
        if index is None or not 0 <= index < len(shown):
            return text
        tag = f"<lora:{shown[index]}:1>"
        text = text or ""
        separator = "" if not text or text.endswith((" ", ",", "\n")) else " "
        return f"{text}{separator}{tag}"

    search.change(filtered, inputs=search, outputs=[names, listing], queue=False,
                  trigger_mode="always_last", **PRIVATE)
    refresh.click(lambda query: filtered(query, rescan=True), inputs=search, outputs=[names, listing],
                  queue=False, **PRIVATE)
    listing.click(insert, inputs=[listing, names, prompt], outputs=prompt, queue=False, **PRIVATE)


def _samples(names: list[str]) -> list[list[str]]:
    return [[name] for name in names]


def _listing_label(count: int, folder) -> str:
    if count:
        return f"{count} LoRA file(s): click one to add it to the prompt"
    return f"No LoRA files found in {folder}"


def prompt_area(ctx: UIContext, tab: str) -> tuple[dict, dict, dict | None]:
    """The top of a generation tab's parameters: prompts with counters, the extra network cards
    (txt2img, img2img; other tabs a list of LoRAs), styles.

    Returns (controls, counters, cards); the counters are wired once the tab's steps exist, the
    cards' "replace preview" once the results exist.
    """
    from . import widgets

    controls, counters = widgets.prompt_boxes(tab)
    cards = None
    if tab in CARD_TABS:
        cards = network_cards.panel(ctx, tab, controls["prompt"], controls["negative_prompt"])
    controls["styles"] = styles_row(ctx, tab, controls["prompt"], controls["negative_prompt"])
    if cards is None:
        lora_browser(ctx, tab, controls["prompt"])
    return controls, counters, cards
