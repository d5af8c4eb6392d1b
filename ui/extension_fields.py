"""Extensions in the UI: an accordion of fields per extension in each tab it applies to, and the
Extensions tab that lists them all with their status."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from engine.extensions import Field

from .context import UIContext

PREFIX = "ext::"


def control_name(extension: str, field: str) -> str:
    return f"{PREFIX}{extension}::{field}"


def extension_values(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{extension: {field: value}} from a tab's named control values."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if key.startswith(PREFIX):
            extension, field = key[len(PREFIX):].split("::", 1)
            out.setdefault(extension, {})[field] = value
    return out


def _component(field: Field, elem_id: str):
    common = {"label": field.label, "value": field.default, "elem_id": elem_id}
    if field.kind == "checkbox":
        return gr.Checkbox(**common)
    if field.kind == "slider":
        return gr.Slider(field.minimum, field.maximum, step=field.step or 1, **common)
    if field.kind == "number":
        return gr.Number(minimum=field.minimum, maximum=field.maximum, **common)
    if field.kind == "dropdown":
        return gr.Dropdown(list(field.choices), **common)
    if field.kind == "radio":
        return gr.Radio(list(field.choices), **common)
    return gr.Textbox(**common)


def render(ctx: UIContext, tab: str, mode: str, size: tuple | None = None) -> dict:
    """The fields of the extensions for this tab, as named controls; disabled ones are drawn
    hidden, so enabling them needs no restart. `size` (the tab's width and height controls)
    feeds the extensions' live summary lines."""
    controls = {}
    for entry in ctx.engine.addons.extensions.loaded():
        extension = entry.extension
        if mode not in extension.modes or not any(f.in_ui for f in extension.fields):
            continue
        with gr.Accordion(extension.title, open=False, visible=entry.enabled,
                          elem_id=f"{tab}_ext_{entry.name}") as accordion:
            ctx.extension_accordions.append((entry.name, accordion))
            fields = {}
            for field in (f for f in extension.fields if f.in_ui):
                fields[field.name] = _component(field, f"{tab}_ext_{entry.name}_{field.name}")
                controls[control_name(entry.name, field.name)] = fields[field.name]
            if size is not None:
                _live_summary(extension, fields, size, f"{tab}_ext_{entry.name}_summary")
    return controls


def _live_summary(extension, fields: dict, size: tuple, elem_id: str) -> None:
    names = list(fields)

    def describe(width, height, *values):
        try:
            text = extension.summary(dict(zip(names, values)), int(width), int(height))
        except Exception:  # a summary is a courtesy; it must never break the page
            return ""
        return text or ""

    inputs = [*size, *fields.values()]
    initial = describe(*(c.value for c in inputs))
    if not initial:
        return
    label = gr.Markdown(initial, elem_id=elem_id)
    for component in inputs:
        component.change(describe, inputs=inputs, outputs=label, queue=False, api_visibility="private")


def _table(ctx: UIContext) -> str:
    rows = []
    for entry in ctx.engine.addons.extensions.entries:
        extension = entry.extension
        cells = [entry.name, extension.title if extension else "", str(extension.order) if extension else "",
                 ", ".join(extension.modes) if extension else "", "built-in" if entry.builtin else "third-party",
                 entry.status, entry.error or ""]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("Name", "Title", "Order", "Modes", "Where", "Status", "Error"))
    return f"<table class='extensions-table'><tr>{head}</tr>{''.join(rows)}</table>"


def extensions_tab(ctx: UIContext) -> tuple:
    """Every extension found, in run order, with its status; enable or disable them.
    Returns what a page load calls (and its outputs) so every new page shows the current state."""
    registry = ctx.engine.addons.extensions
    table = gr.HTML(_table(ctx), elem_id="extensions_table")
    names = [e.name for e in registry.loaded()]
    enabled = gr.CheckboxGroup(names, value=[e.name for e in registry.loaded() if e.enabled],
                               label="Enabled (in the order they run)", elem_id="extensions_enabled")
    apply = gr.Button("Apply", elem_id="extensions_apply")
    note = gr.Markdown("", elem_id="extensions_message")

    accordions = list(ctx.extension_accordions)  # the tabs are built before this one

    def save(chosen: list[str]):
        chosen = set(chosen or [])
        ctx.settings.update({"disabled_extensions": sorted(set(names) - chosen)})
        ctx.engine.sync_extensions()
        return _table(ctx), "Saved: generation and every tab use the change now.", *_shown(chosen)

    def _shown(chosen: set[str]) -> list:
        return [gr.update(visible=name in chosen) for name, _ in accordions]

    apply.click(save, inputs=enabled, outputs=[table, note, *(a for _, a in accordions)], queue=False,
                api_visibility="private")
    refresh = gr.Button("Refresh status", size="sm", elem_id="extensions_refresh")
    refresh.click(lambda: _table(ctx), outputs=table, queue=False, api_visibility="private")

    def current():
        ctx.engine.sync_extensions()
        chosen = {e.name for e in registry.loaded() if e.enabled}
        return _table(ctx), sorted(chosen, key=names.index), *_shown(chosen)

    return current, [table, enabled, *(a for _, a in accordions)]
