"""Scripts in the UI: the Script dropdown of a generation tab and, under it, the fields of the
script picked (one group per script, shown while it is picked), with its live estimate line."""

from __future__ import annotations

from typing import Any

import gradio as gr

from engine.errors import UserError
from engine.extensions.script import checked_options
from engine.request import GenerationRequest

from .context import UIContext
from .extension_fields import component
from .markdown_text import literal

NONE = "None"
PREFIX = "script::"
CHOICE = "script"


def control_name(script: str, field: str) -> str:
    return f"{PREFIX}{script}::{field}"


def render(ctx: UIContext, tab: str, mode: str, sizing: dict | None = None) -> dict:
    """The dropdown and every script's fields for this tab, as named controls. `sizing`: the
    tab's width, height, batch_size and n_iter controls, for the scripts' estimate lines."""
    entries = ctx.engine.addons.extensions.scripts(mode)
    names = [entry.name for entry in entries]
    # Shown by title, valued by name: the request names the script it runs.
    chosen = gr.Dropdown([(NONE, NONE), *((e.extension.title, e.name) for e in entries)], value=NONE,
                         label="Script", elem_id=f"{tab}_script")
    controls: dict[str, Any] = {CHOICE: chosen}
    groups = []
    for entry in entries:
        script = entry.extension
        fields = {}
        with gr.Group(visible=False, elem_id=f"{tab}_script_{entry.name}") as group:
            if script.description:
                gr.Markdown(literal(script.description), elem_id=f"{tab}_script_{entry.name}_help")
            for field in (f for f in script.fields_for(mode) if f.in_ui):
                fields[field.name] = component(field, f"{tab}_script_{entry.name}_{field.name}")
                controls[control_name(entry.name, field.name)] = fields[field.name]
            if sizing:
                _estimate(script, mode, fields, sizing, f"{tab}_script_{entry.name}_estimate")
        groups.append(group)
    def show(picked):
        updates = [gr.update(visible=picked == name) for name in names]
        # Gradio takes a list returned for a single output as that output's value: one update alone.
        return updates[0] if len(updates) == 1 else updates

    chosen.change(show, inputs=chosen, outputs=groups, queue=False, api_visibility="private")
    return controls


def _estimate(script, mode: str, fields: dict, sizing: dict, elem_id: str) -> None:
    """A line under the fields that says what the script will make (e.g. how many pictures)."""
    names = list(fields)
    size_names = [name for name in ("width", "height", "batch_size", "n_iter") if name in sizing]

    def describe(*values):
        sizes = dict(zip(size_names, values[:len(size_names)]))
        options = dict(zip(names, values[len(size_names):]))
        try:
            request = GenerationRequest(mode=mode, **{k: int(v) for k, v in sizes.items() if v})
            text = script.estimate(request, checked_options(script, mode, options))
        except (UserError, TypeError, ValueError):  # half-typed values: no estimate yet
            return ""
        except Exception:  # an estimate is a courtesy; it must never break the page
            return ""
        return text or ""

    inputs = [*(sizing[name] for name in size_names), *fields.values()]
    label = gr.Markdown(describe(*(c.value for c in inputs)), elem_id=elem_id)
    for control in inputs:
        control.change(describe, inputs=inputs, outputs=label, queue=False, api_visibility="private")


def script_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The request's script and options from a tab's named values ("None": no script)."""
    name = values.get(CHOICE) or NONE
    if name == NONE:
        return {}
    prefix = control_name(name, "")
    options = {key[len(prefix):]: value for key, value in values.items() if key.startswith(prefix)}
    return {"script": name, "script_options": options}
