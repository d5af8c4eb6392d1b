"""The Settings tab: every option, grouped by section, drawn from the settings schema.

A search box filters the settings in the browser (ui/assets/settings_search.js). "Apply settings"
saves only what was changed on this page, so a stale value never undoes a change made meanwhile
in the checkpoint bar, the Extensions tab or through the API.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any, Callable, Iterable, Mapping

import gradio as gr

from engine.errors import UserError
from engine.option import Option
from engine.output.saving_options import DIRECTORY_KEYS
from engine.settings.options_ui import HIDEABLE_TABS
from engine.settings.store import Settings

from . import ui_defaults
from .context import UIContext
from .number_inputs import Number, Slider

SECTION_ORDER = ("Saving images", "Stable Diffusion", "Sampler parameters", "img2img", "Live previews",
                 "Memory and speed", "Extensions", "User interface", "API")
EXTENSIONS_KEY = "disabled_extensions"
THEME_KEY = "ui_theme"
CHECKPOINT_KEY = "sd_model_checkpoint"
# Options never shown here (a constant: the flags' hidden ones are added per page in build()).
_HIDDEN: frozenset[str] = frozenset()
# Options whose choices come from what is on disk, not from the schema (refreshed on page load).
_DYNAMIC_CHOICES = {"sd_vae": lambda ctx: ctx.engine.addons.vaes.choices(),
                    CHECKPOINT_KEY: lambda ctx: ctx.registry.titles(),
                    "sd_model_refiner": lambda ctx: ["None", *ctx.registry.titles()],
                    EXTENSIONS_KEY: lambda ctx: _extension_names(ctx)}
# List settings offered as a fixed set of checkboxes.
_LIST_CHOICES = {"hidden_tabs": HIDEABLE_TABS}
# Applies the theme in the browser (ui/assets/theme.js) once the page holds the stored one.
_THEME_JS = ("(theme) => { window.sdStudioTheme ? window.sdStudioTheme(theme) "
             ": (window.sdStudioPendingTheme = theme); }")


# Pure helpers (no Gradio): what the tab shows and what "Apply settings" says.

def grouped(options: Iterable[Option]) -> list[tuple[str, list[Option]]]:
    """Options by section: the known sections in SECTION_ORDER, then any others in the order
    they first appear; within a section, schema order."""
    sections: dict[str, list[Option]] = {}
    for option in options:
        sections.setdefault(option.section, []).append(option)
    rank = {name: index for index, name in enumerate(SECTION_ORDER)}
    return sorted(sections.items(), key=lambda item: rank.get(item[0], len(rank)))


def section_id(section: str) -> str:
    return "settings_section_" + re.sub(r"[^a-z0-9]+", "_", section.lower()).strip("_")


def saved_message(changed: list[str], options: Mapping[str, Option]) -> str:
    """What "Apply settings" says: how many were saved, and which need a restart (by label)."""
    if not changed:
        return "Nothing changed."
    count = len(changed)
    text = f"Saved {count} setting{'s' if count != 1 else ''}."
    restart = [options[key].label for key in changed if key in options and options[key].restart]
    if restart:
        text += f" Needs a restart to take effect: {', '.join(restart)}."
    if any(ui_defaults.is_tab_default(key) for key in changed):
        text += " New tab defaults show when the page is reloaded."
    return text


def refused_message(error: UserError, options: Mapping[str, Option]) -> str:
    option = options.get(error.field or "")
    where = f"{option.label} ({option.key}): " if option else ""
    return f"**Not saved:** {html.escape(where + error.message)}"


def apply_changes(settings: Settings, changes: dict[str, Any],
                  extra_check: Callable[[dict[str, Any]], None] | None = None) -> tuple[str, list[str] | None]:
    """Validate every change (each on its own, then the tab defaults against their ranges, then
    `extra_check`); save all or nothing. Returns the message and the keys whose value changed,
    or None when the changes were refused."""
    try:
        coerced = settings.validate(changes)
        settings.check_editable(settings.changed_keys(coerced))
        ui_defaults.check({**settings.as_dict(), **coerced}, set(coerced), settings.options)
        if extra_check is not None:
            extra_check(coerced)
        changed = settings.update(coerced)
    except UserError as error:
        return refused_message(error, settings.options), None
    return saved_message(changed, settings.options), changed


def edited(shown: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The values the user changed on this page, compared with what the page was shown."""
    return {key: value for key, value in values.items() if key not in shown or shown[key] != value}


def enabled_names(names: list[str], disabled: list[str]) -> list[str]:
    return [name for name in names if name not in set(disabled)]


def disabled_names(names: list[str], enabled: list[str] | None, stored: list[str]) -> list[str]:
    """The disabled list for the chosen enabled extensions. Names not loaded now (an extension
    that failed or was removed) keep their stored state."""
    offered = set(names)
    return sorted({name for name in stored if name not in offered} | (offered - set(enabled or [])))


# The tab.

def _shown_value(ctx: UIContext, option: Option) -> Any:
    """The stored value as its component shows it."""
    value = ctx.settings[option.key]
    if option.key == EXTENSIONS_KEY:
        return enabled_names(_extension_names(ctx), value)
    if isinstance(option.default, list) and option.key not in _LIST_CHOICES:
        return ", ".join(value)
    if isinstance(option.default, dict):
        return json.dumps(value, ensure_ascii=False)
    return value


def _setting_value(ctx: UIContext, option: Option, shown: Any) -> Any:
    """A component's value as the setting stores it (checked later by Settings.validate)."""
    if option.key == EXTENSIONS_KEY:
        return disabled_names(_extension_names(ctx), shown, ctx.settings[EXTENSIONS_KEY])
    if isinstance(option.default, dict):
        try:
            return json.loads(shown or "{}")
        except ValueError:
            return shown  # not JSON: Settings.validate names the setting and says what it must be
    return shown


def _extension_names(ctx: UIContext) -> list[str]:
    """Those loaded and those waiting for a start where they are enabled (the Extensions tab's)."""
    return [entry.name for entry in ctx.engine.addons.extensions.choosable()]


def _slider_step(option: Option) -> float:
    if option.key.endswith(("_width", "_height", "size_max")):
        return 8
    if isinstance(option.default, int):
        return 1
    return 0.01 if option.maximum - option.minimum <= 2 else 0.5


def _component(ctx: UIContext, option: Option):
    common = {"label": option.label, "elem_id": f"setting_{option.key}", "value": _shown_value(ctx, option)}
    if option.restart:
        common["info"] = "Needs a restart to take effect."
    locked = ctx.settings.locked_reason(option.key)
    if locked:  # a start flag (--freeze-settings, --theme, ...) fixes it
        common.update(interactive=False, info=f"Cannot be changed: {locked}.")
    if option.key == EXTENSIONS_KEY:
        common["label"] = "Enabled extensions (in the order they run)"
        return gr.CheckboxGroup(_DYNAMIC_CHOICES[EXTENSIONS_KEY](ctx), **common)
    if option.key in _LIST_CHOICES:
        return gr.CheckboxGroup(list(_LIST_CHOICES[option.key]), **common)
    if option.key in _DYNAMIC_CHOICES:
        choices = _DYNAMIC_CHOICES[option.key](ctx)
        if common["value"] not in choices:  # e.g. no checkpoint yet: show none rather than a stale name
            common["value"] = None
        return gr.Dropdown(choices, **common)
    if isinstance(option.default, bool):
        return gr.Checkbox(**common)
    if isinstance(option.default, dict):  # one value per name, as JSON
        choices = ", ".join(f'"{choice}"' for choice in option.choices or ())
        common["info"] = common.get("info") or 'JSON: {"name": value}' + (f"; values: {choices}" if choices else "")
        return gr.Textbox(**common)
    if option.choices and len(option.choices) <= 3:
        return gr.Radio(list(option.choices), **common)
    if option.choices:
        return gr.Dropdown(list(option.choices), **common)
    if isinstance(option.default, (int, float)) and option.minimum is not None and option.maximum is not None:
        return Slider(option.minimum, option.maximum, step=_slider_step(option), **common)
    if isinstance(option.default, (int, float)):
        return Number(precision=0 if isinstance(option.default, int) else None, **common)
    if isinstance(option.default, list):
        common["info"] = "Separate names with commas."
    return gr.Textbox(**common)


def build(ctx: UIContext, linked: Mapping[str, gr.components.Component] | None = None,
          extensions: tuple[Callable, list] | None = None) -> Callable[[gr.Blocks], None]:
    """The tab. `linked`: components elsewhere that show a setting (the checkpoint bar's VAE and
    clip skip), refreshed after saving; `extensions`: the Extensions tab's (refresh function,
    outputs), so its list and every tab's extension fields follow a change made here.
    Returns what wires the tab's page load (it needs the Blocks)."""
    settings = ctx.settings
    hidden = _HIDDEN | (set(DIRECTORY_KEYS) if getattr(ctx.flags, "hide_ui_dir_config", False) else set())
    options = [o for o in settings.options.values() if o.key not in hidden]
    # Kept in view while scrolling (style.css), so Apply and its message are never far away.
    with gr.Column(elem_id="settings_header"):
        with gr.Row(elem_id="settings_top", equal_height=True):
            gr.Textbox(placeholder="Search settings by name or key", show_label=False, container=False,
                       elem_id="settings_search", scale=4)
            apply = gr.Button("Apply settings", variant="primary", elem_id="settings_apply", scale=1)
        result = gr.Markdown("", elem_id="settings_result")
    # Shown by the search script when nothing matches, instead of an empty page.
    gr.HTML("<p>No settings match <q class='settings-query'></q>: try another word, or clear the "
            "search.</p>", elem_id="settings_no_match")
    theme = gr.Textbox(settings[THEME_KEY], visible="hidden", elem_id="settings_applied_theme")
    components: dict[str, gr.components.Component] = {}
    for section, members in grouped(options):
        with gr.Accordion(section, open=True, elem_id=section_id(section), elem_classes=["settings-section"]):
            for option in members:
                components[option.key] = _component(ctx, option)
    # What the page shows, to tell the user's edits apart; until the page load answers, that is
    # what the tab was built with.
    shown_state = gr.State({key: _shown_value(ctx, settings.options[key]) for key in components})
    linked = dict(linked or {})
    refresh_extensions, extension_outputs = extensions or (None, [])

    def current() -> dict:
        """The stored values, for each page load (they may have changed via the API)."""
        values = {key: _shown_value(ctx, settings.options[key]) for key in components}
        updates = {components[key]: gr.update(value=value, choices=_DYNAMIC_CHOICES[key](ctx))
                   if key in _DYNAMIC_CHOICES else value for key, value in values.items()}
        return {**updates, shown_state: values, theme: settings[THEME_KEY]}

    def check_vae(coerced: dict) -> None:
        if "sd_vae" in coerced:
            ctx.engine.addons.vaes.check_choice(coerced["sd_vae"])

    def applied(data: dict) -> dict:
        shown = data[shown_state]
        values = edited(shown, {key: data[component] for key, component in components.items()})
        changes = {key: _setting_value(ctx, settings.options[key], value) for key, value in values.items()}
        # The checkpoint is loaded on the GPU lane like the bar above does it; the setting
        # follows once it has loaded.
        wanted = changes.pop(CHECKPOINT_KEY, None)
        if wanted:
            try:
                ctx.registry.find(wanted)
            except UserError as error:
                return {result: refused_message(error, settings.options)}
        message, changed = apply_changes(settings, changes, check_vae)
        if changed is None:  # refused: keep the user's edits on screen to correct them
            return {result: message}
        if wanted:
            ctx.engine.load_checkpoint(wanted, owner="settings")
            message = (message if changes else "") + f" Loading checkpoint {wanted}: the bar above shows it when ready."
        out = {result: message, **current()}
        if wanted:  # show the one being loaded, not the one it replaces
            out[components[CHECKPOINT_KEY]] = wanted
            out[shown_state] = {**out[shown_state], CHECKPOINT_KEY: wanted}
        out.update({component: settings[key] for key, component in linked.items() if key in changed})
        if EXTENSIONS_KEY in changed:
            ctx.engine.sync_extensions()
            if refresh_extensions is not None:
                out.update(zip(extension_outputs, refresh_extensions()))
        return out

    outputs = [result, shown_state, theme, *components.values(), *linked.values(), *extension_outputs]
    apply.click(applied, inputs={shown_state, *components.values()}, outputs=outputs, queue=False,
                api_visibility="private").then(None, inputs=theme, js=_THEME_JS)

    def wire_page_load(blocks: gr.Blocks) -> None:
        blocks.load(current, outputs=[shown_state, theme, *components.values()], queue=False,
                    api_visibility="private", show_progress="hidden").then(None, inputs=theme, js=_THEME_JS)

    return wire_page_load
