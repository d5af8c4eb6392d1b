"""Scripts in the UI: the Script dropdown of a generation tab and, under it, the fields of the
script picked (one group per script, shown while it is picked), with its live estimate line."""

from __future__ import annotations

from typing import Any

import gradio as gr

from engine.errors import UserError
from engine.extensions.script import checked_options
from engine.request import GenerationRequest, ScriptChoice

from .context import UIContext
from .extension_fields import component
from .markdown_text import literal

NONE = "None"
PREFIX = "script::"
CHOICE = "script"


def control_name(script: str, field: str) -> str:
    return f"{PREFIX}{script}::{field}"


SIZING = ("prompt", "negative_prompt", "width", "height", "batch_size", "n_iter")


def render(ctx: UIContext, tab: str, mode: str, sizing: dict | None = None) -> dict:
    """The dropdown and every script's fields for this tab, as named controls. `sizing`: the
    tab's controls (prompt, size, batch), which the scripts' estimate lines read."""
    entries = ctx.engine.addons.extensions.scripts(mode)
    names = [entry.name for entry in entries]
    # Shown by title, valued by name: the request names the script it runs.
    chosen = gr.Dropdown([(NONE, NONE), *((e.extension.title, e.name) for e in entries)], value=NONE,
                         label="Script", elem_id=f"{tab}_script")
    controls: dict[str, Any] = {CHOICE: chosen}
    groups, estimated = [], []
    for entry in entries:
        script = entry.extension
        fields = {}
        with gr.Group(visible=False, elem_id=f"{tab}_script_{entry.name}") as group:
            if script.description:
                gr.Markdown(literal(script.description), elem_id=f"{tab}_script_{entry.name}_help")
            for field in (f for f in script.fields_for(mode) if f.in_ui):
                fields[field.name] = component(field, f"{tab}_script_{entry.name}_{field.name}")
                controls[control_name(entry.name, field.name)] = fields[field.name]
            label = gr.Markdown("", elem_id=f"{tab}_script_{entry.name}_estimate")
        groups.append(group)
        estimated.append((script, fields, label))
    def show(picked):
        updates = [gr.update(visible=picked == name) for name in names]
        # Gradio takes a list returned for a single output as that output's value: one update alone.
        return updates[0] if len(updates) == 1 else updates

    chosen.change(show, inputs=chosen, outputs=groups, queue=False, api_visibility="private")
    if sizing and estimated:
        _estimates(mode, estimated, {name: sizing[name] for name in SIZING if name in sizing})
    return controls


def _estimates(mode: str, estimated: list, sizing: dict) -> None:
    """The line under each script's fields that says what it will make (e.g. how many
    pictures), from one handler per control covering every script."""
    size_names = list(sizing)
    field_lists = [list(fields) for _, fields, _ in estimated]

    def one(script, request, options) -> str:
        try:
            return script.estimate(request, checked_options(script, mode, options)) or ""
        except Exception:  # half-typed values, or a script's bug: an estimate is only a courtesy
            return ""

    def single(texts: list[str]):
        return texts[0] if len(texts) == 1 else texts  # one output takes a list as its value

    def describe(*values):
        tab = dict(zip(size_names, values[:len(size_names)]))
        numbers = {k: int(v) for k, v in tab.items() if k not in ("prompt", "negative_prompt") and v}
        try:
            request = GenerationRequest(mode=mode, prompt=tab.get("prompt") or "",
                                        negative_prompt=tab.get("negative_prompt") or "", **numbers)
        except (UserError, TypeError, ValueError):
            return single([""] * len(estimated))
        texts, at = [], len(size_names)
        for (script, _, _), names in zip(estimated, field_lists):
            texts.append(one(script, request, dict(zip(names, values[at:at + len(names)]))))
            at += len(names)
        return single(texts)

    inputs = [*sizing.values(), *(control for _, fields, _ in estimated for control in fields.values())]
    outputs = [label for _, _, label in estimated]
    # "multiple": a quick, unqueued update that must not displace the tab's own "always_last"
    # handler on the same control (the token counters on the prompts, the size summaries).
    for control in inputs:
        control.change(describe, inputs=inputs, outputs=outputs, queue=False, api_visibility="private",
                       trigger_mode="multiple")


def script_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The request's script and options from a tab's named values ("None": no script)."""
    name = values.get(CHOICE) or NONE
    if name == NONE:
        return {}
    prefix = control_name(name, "")
    options = {key[len(prefix):]: value for key, value in values.items() if key.startswith(prefix)}
    return {"script": ScriptChoice(name, options)}
