"""Extensions in the UI: an accordion of fields per extension in each tab it applies to, and the
Extensions tab that lists them all with their status and installs or updates third-party ones.

Nothing here runs an extension's code: an install or an update only changes files (and, for an
install, records the new extension as disabled); code runs at the next start, if enabled."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr

from engine.extensions import install as extension_install
from engine.errors import UserError
from engine.extensions.registry import Field, LoadedExtension

from .context import UIContext
from .markdown_text import literal
from .number_inputs import Number, Slider
from .settings_tab import disabled_names

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


def component(field: Field, elem_id: str):
    """The control that edits one field (an extension's or a script's)."""
    common = {"label": field.label, "value": field.default, "elem_id": elem_id}
    if field.info:
        common["info"] = field.info
    if field.kind == "checkbox":
        return gr.Checkbox(**common)
    if field.kind == "slider":
        return Slider(field.minimum, field.maximum, step=field.step or 1, **common)
    if field.kind == "number":
        return Number(minimum=field.minimum, maximum=field.maximum, **common)
    if field.kind == "dropdown":
        return gr.Dropdown(list(field.choices), **common)
    if field.kind == "radio":
        return gr.Radio(list(field.choices), **common)
    if field.kind == "multiselect":
        return gr.CheckboxGroup(list(field.choices), **common)
    return gr.Textbox(lines=field.lines, **common)


def render(ctx: UIContext, tab: str, mode: str, size: tuple | None = None) -> dict:
    """The fields of the loaded extensions for this tab, as named controls; disabled ones are
    drawn hidden, so enabling them needs no restart (one not loaded has none until a start that
    imports it). `size` (the tab's width and height controls)
    feeds the extensions' live summary lines."""
    controls = {}
    for entry in ctx.engine.addons.extensions.loaded():
        extension = entry.extension
        if entry.is_script or mode not in extension.modes or not any(f.in_ui for f in extension.fields):
            continue
        with gr.Accordion(extension.title, open=False, visible=entry.enabled,
                          elem_id=f"{tab}_ext_{entry.name}") as accordion:
            ctx.extension_accordions.append((entry.name, accordion))
            fields = {}
            for field in (f for f in extension.fields if f.in_ui):
                fields[field.name] = component(field, f"{tab}_ext_{entry.name}_{field.name}")
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


def _status(entry: LoadedExtension) -> str:
    """The status column: for one not loaded, what it takes to run it."""
    if not entry.waiting:
        return entry.status
    if entry.enabled:
        return "enabled, not loaded: its code runs from the next restart"
    return "installed, not loaded: enable it and restart the web UI to run it"


def _source(entry: LoadedExtension) -> str:
    """Where a third-party extension came from and at which commit, when git installed it."""
    found = None if entry.builtin else extension_install.source(entry.path)
    return f"{found[0]} @ {found[1]}" if found else ""


def _table(ctx: UIContext) -> str:
    rows = []
    for entry in ctx.engine.addons.extensions.entries:
        extension = entry.extension
        cells = [entry.name, extension.title if extension else "", str(extension.order) if extension else "",
                 ", ".join(extension.modes) if extension else "", "built-in" if entry.builtin else "third-party",
                 _source(entry), _status(entry), entry.error or ""]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("Name", "Title", "Order", "Modes", "Where", "Source", "Status",
                                             "Error"))
    return f"<table class='extensions-table'><tr>{head}</tr>{''.join(rows)}</table>"


def _choosable_names(ctx: UIContext) -> list[str]:
    return [e.name for e in ctx.engine.addons.extensions.choosable()]


def _enabled_choices(ctx: UIContext):
    """The Enabled box as the registry is now (an install adds a name to it, unticked)."""
    choosable = ctx.engine.addons.extensions.choosable()
    return gr.update(choices=[e.name for e in choosable], value=[e.name for e in choosable if e.enabled])


def extensions_tab(ctx: UIContext) -> tuple:
    """Every extension found, in run order, with its status; enable or disable them; install
    and update third-party ones from git.
    Returns what a page load calls (and its outputs) so every new page shows the current state."""
    registry = ctx.engine.addons.extensions
    table = gr.HTML(_table(ctx), elem_id="extensions_table")
    enabled = gr.CheckboxGroup(_choosable_names(ctx), value=[e.name for e in registry.choosable() if e.enabled],
                               label="Enabled (in the order they run; a third-party extension not loaded "
                                     "yet runs from the next restart)", elem_id="extensions_enabled")
    apply = gr.Button("Apply", elem_id="extensions_apply")
    note = gr.Markdown("", elem_id="extensions_message")

    accordions = list(ctx.extension_accordions)  # the tabs are built before this one

    def save(chosen: list[str]):
        chosen = set(chosen or [])
        # Names this page did not offer (one installed since it opened) keep their state: a new
        # extension is enabled only by ticking it.
        ctx.settings.update({"disabled_extensions": disabled_names(
            _choosable_names(ctx), sorted(chosen), ctx.settings["disabled_extensions"])})
        ctx.engine.sync_extensions()
        return _table(ctx), _saved_message(ctx, chosen), *_shown(chosen)

    def _shown(chosen: set[str]) -> list:
        return [gr.update(visible=name in chosen) for name, _ in accordions]

    apply.click(save, inputs=enabled, outputs=[table, note, *(a for _, a in accordions)], queue=False,
                api_visibility="private")
    refresh = gr.Button("Refresh status", size="sm", elem_id="extensions_refresh")

    def refreshed():
        ctx.engine.sync_extensions()  # the setting may have changed in Settings or through the API
        return _table(ctx)

    refresh.click(refreshed, outputs=table, queue=False, api_visibility="private")
    updatable = _install_section(ctx, table, enabled)

    def current():
        ctx.engine.sync_extensions()
        chosen = {e.name for e in registry.loaded() if e.enabled}
        return _table(ctx), _enabled_choices(ctx), _updatable_choices(ctx), *_shown(chosen)

    return current, [table, enabled, updatable, *(a for _, a in accordions)]


def _saved_message(ctx: UIContext, chosen: set[str]) -> str:
    waiting = [e.name for e in ctx.engine.addons.extensions.entries if e.waiting and e.name in chosen]
    message = "Saved: generation and every tab use the change now."
    if waiting:
        message += (f" Not loaded yet: {literal(', '.join(waiting))}. Their code runs from the next "
                    "restart of the web UI.")
    return message


def _third_party_folder(ctx: UIContext) -> Path | None:
    """<data dir>/extensions: the first folder the registry reads that does not hold built-ins."""
    return next((Path(folder) for folder, builtin in ctx.engine.addons.extensions.folders if not builtin),
                None)


def _updatable_choices(ctx: UIContext):
    folder = _third_party_folder(ctx)
    return gr.update(choices=extension_install.updatable(folder) if folder else [])


def _install_section(ctx: UIContext, table, enabled) -> gr.Dropdown:
    """Install from a git URL, update from git. Off (drawn disabled, and refused by the handlers
    themselves, whatever a client sends) while the UI is reachable from the network."""
    refused = extension_install.refusal(ctx.flags)
    folder = _third_party_folder(ctx)
    allowed = refused is None and folder is not None
    with gr.Accordion("Install from URL", open=True, elem_id="extension_install_section"):
        if refused:
            gr.Markdown(f"**{literal(refused)}**", elem_id="extension_install_refused")
        url = gr.Textbox(label="URL of the extension's git repository", interactive=allowed,
                         placeholder="https://github.com/someone/some-extension.git",
                         elem_id="extension_install_url")
        name = gr.Textbox(label="Folder name (optional; taken from the URL when empty)",
                          interactive=allowed, elem_id="extension_install_name")
        install = gr.Button("Install", variant="primary", interactive=allowed, elem_id="extension_install")
        installed = gr.Markdown("", elem_id="extension_install_result")
    with gr.Accordion("Update", open=True, elem_id="extension_update_section"):
        chosen = gr.Dropdown(extension_install.updatable(folder) if folder else [], value=None,
                             label="Third-party extension installed from git", interactive=allowed,
                             elem_id="extension_update_name")
        update = gr.Button("Update", interactive=allowed, elem_id="extension_update")
        updated = gr.Markdown("", elem_id="extension_update_result")

    def run_install(url_text: str, name_text: str):
        try:
            message = _install(ctx, url_text, name_text)
        except UserError as error:
            message = f"**Not installed:** {literal(error.message)}"
        return _table(ctx), _enabled_choices(ctx), _updatable_choices(ctx), message

    def run_update(name_text: str):
        try:
            message = literal(_update(ctx, name_text))
        except UserError as error:
            message = f"**Not updated:** {literal(error.message)}"
        return _table(ctx), message

    # Off the GPU lane (a clone needs no model), one at a time so two installs never race.
    install.click(run_install, inputs=[url, name], outputs=[table, enabled, chosen, installed],
                  concurrency_id="extension_install", concurrency_limit=1, api_visibility="private")
    update.click(run_update, inputs=chosen, outputs=[table, updated],
                 concurrency_id="extension_install", concurrency_limit=1, api_visibility="private")
    return chosen


def _checked_folder(ctx: UIContext) -> Path:
    """The third-party extensions folder, when installing is allowed now (checked on every call:
    the button being drawn disabled protects nothing)."""
    refused = extension_install.refusal(ctx.flags)
    if refused:
        raise UserError(refused)
    folder = _third_party_folder(ctx)
    if folder is None:
        raise UserError("This app has no folder for third-party extensions")
    return folder


def _install(ctx: UIContext, url: str, name: str) -> str:
    """Clone, record as disabled, list: the extension's code does not run (not even at the next
    start) until a user enables it and restarts."""
    folder = _checked_folder(ctx)
    registry = ctx.engine.addons.extensions
    builtins = [e.name for e in registry.entries if e.builtin]
    # Disabled before the folder appears, so a crash in between cannot leave it enabled.
    path = extension_install.install_from_url(
        url, folder, name or None, reserved=builtins,
        before_placing=lambda new: extension_install.keep_disabled(ctx.settings, new))
    registry.discover()
    ctx.engine.sync_extensions()
    found = extension_install.source(path)
    origin = f" from {literal(found[0])} at commit {literal(found[1])}" if found else ""
    return (f"Installed **{literal(path.name)}** into {literal(str(path))}{origin}. Its code has not run: "
            "it is listed above as installed, not loaded, and disabled. To use it, tick it under "
            "Enabled, Apply, and restart the web UI; its code runs from then on.")


def _update(ctx: UIContext, name: str) -> str:
    folder = _checked_folder(ctx)
    if not name:
        raise UserError("Choose the extension to update")
    return extension_install.update(name, folder)
