"""The tabs' default values and slider ranges, taken from the "User interface" settings.

The tabs are built once, when the app starts, with the values stored then. A page load brings in
any newer ones (no restart): each control the user has not touched on that page gets the new
default, and every slider its new range.
"""

from __future__ import annotations

from typing import Any, Mapping

import gradio as gr

from engine.sampling import samplers
from engine.errors import RequestError, UserError
from engine.option import Option
from engine.settings.options_ui import CFG_MAX, SIZE_MAX, STEPS_MAX, default_key
from engine.settings.store import Settings

# The tab's control name (as in its `controls` dict) -> the end of its setting's key.
CONTROL_SETTINGS = {
    "sampler_name": "sampler", "scheduler": "scheduler", "steps": "steps", "cfg_scale": "cfg_scale",
    "width": "width", "height": "height", "n_iter": "batch_count", "batch_size": "batch_size",
    "denoising_strength": "denoising_strength", "mask_blur": "mask_blur",
}
# Sliders whose largest value is a setting.
RANGE_SETTINGS = {"steps": STEPS_MAX, "width": SIZE_MAX, "height": SIZE_MAX, "cfg_scale": CFG_MAX}
TABS = ("txt2img", "img2img")


def is_tab_default(key: str) -> bool:
    """Whether a setting is one of the tabs' defaults or ranges (shown from the next page load)."""
    return key in RANGE_SETTINGS.values() or any(
        key == default_key(tab, name) for tab in TABS for name in CONTROL_SETTINGS.values())


def start_values(settings: Settings, tab: str) -> dict[str, dict[str, Any]]:
    """{control: {"value": ..., "maximum": ...}} for the tab's controls that have settings."""
    start: dict[str, dict[str, Any]] = {}
    for control, suffix in CONTROL_SETTINGS.items():
        key = default_key(tab, suffix)
        if key not in settings.options:
            continue
        start[control] = {"value": settings[key]}
        if control in RANGE_SETTINGS:
            start[control]["maximum"] = settings[RANGE_SETTINGS[control]]
    return start


def check(values: Mapping[str, Any], changed: set[str], options: Mapping[str, Option]) -> None:
    """Refuse defaults that the tab could not show or run: a default above its slider's range,
    or a schedule type its default sampler cannot use. Only conflicts that involve a changed
    setting are reported, so an old conflict never blocks an unrelated change."""
    def label(key: str) -> str:
        return options[key].label if key in options else key

    for tab in TABS:
        for control, range_key in RANGE_SETTINGS.items():
            key = default_key(tab, CONTROL_SETTINGS[control])
            if key not in values or range_key not in values or not {key, range_key} & changed:
                continue
            if values[key] > values[range_key]:
                raise RequestError(
                    f"{label(key)} ({values[key]:g}) is above {label(range_key)} ({values[range_key]:g}); "
                    f"lower the default or raise the range", key)
        sampler_key, schedule_key = default_key(tab, "sampler"), default_key(tab, "scheduler")
        if sampler_key in values and schedule_key in values and {sampler_key, schedule_key} & changed:
            try:
                samplers.resolve(values[sampler_key], values[schedule_key])
            except UserError as error:
                raise RequestError(f"{label(schedule_key)}: {error.message}", schedule_key) from None


def wire_page_load(blocks: gr.Blocks, settings: Settings, tabs: Mapping[str, dict]) -> None:
    """On each page load, give the tabs' controls the defaults and ranges stored now.
    `tabs` maps "txt2img"/"img2img" to that tab's `controls` dict."""
    entries = [(tab, name, controls[name]) for tab, controls in tabs.items()
               for name in start_values(settings, tab) if name in controls]
    if not entries:
        return

    def fresh(*shown):
        wanted = {tab: start_values(settings, tab) for tab in tabs}
        return [_update(component, current, wanted[tab][name])
                for (tab, name, component), current in zip(entries, shown)]

    components = [component for _, _, component in entries]
    blocks.load(fresh, inputs=components, outputs=components, queue=False,
                api_visibility="private", show_progress="hidden")


def _update(component, current: Any, wanted: dict[str, Any]):
    """The new value only if the control still shows the value it was built with (the user has
    not changed it on this page); the new range always."""
    changes = {}
    built_maximum = getattr(component, "maximum", None)
    if "maximum" in wanted and wanted["maximum"] != built_maximum:
        changes["maximum"] = wanted["maximum"]
    if current == component.value and wanted["value"] != component.value:
        changes["value"] = wanted["value"]
    return gr.update(**changes)
