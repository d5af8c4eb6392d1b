"""The Settings tab: every option, grouped by section, drawn from the settings schema."""

from __future__ import annotations

import html

import gradio as gr

from engine.errors import UserError
from engine.option import Option

from .context import UIContext

# Options whose choices come from what is on disk, not from the schema.
_DYNAMIC_CHOICES = {"sd_vae": lambda ctx: ctx.engine.addons.vaes.choices()}
# Chosen elsewhere: the checkpoint list above the tabs, the Extensions tab.
_HIDDEN = {"sd_model_checkpoint", "disabled_extensions"}


def _component(ctx: UIContext, option: Option):
    value = ctx.settings[option.key]
    common = {"label": option.label, "elem_id": f"setting_{option.key}", "value": value}
    if option.key in _DYNAMIC_CHOICES:
        return gr.Dropdown(_DYNAMIC_CHOICES[option.key](ctx), **common)
    if isinstance(option.default, bool):
        return gr.Checkbox(**common)
    if option.choices:
        return gr.Dropdown(list(option.choices), **common)
    if isinstance(option.default, (int, float)) and option.minimum is not None:
        step = 1 if isinstance(option.default, int) else 0.01
        return gr.Slider(option.minimum, option.maximum, step=step, **common)
    if isinstance(option.default, (int, float)):
        return gr.Number(precision=0 if isinstance(option.default, int) else None, **common)
    return gr.Textbox(**common)


def build(ctx: UIContext):
    options = [o for o in ctx.settings.options.values() if o.key not in _HIDDEN]
    sections: dict[str, list[Option]] = {}
    for option in options:
        sections.setdefault(option.section, []).append(option)
    components: dict[str, gr.components.Component] = {}
    apply = gr.Button("Apply settings", variant="primary", elem_id="settings_apply")
    result = gr.Markdown("", elem_id="settings_result")
    for section, members in sections.items():
        with gr.Accordion(section, open=True):
            for option in members:
                components[option.key] = _component(ctx, option)

    def applied(data: dict):
        changes = {key: data[component] for key, component in components.items()}
        try:
            changed = ctx.settings.update(changes)
        except UserError as error:
            return f"**Not saved:** {html.escape(error.message)}"
        if not changed:
            return "Nothing changed."
        return f"Saved {len(changed)} setting(s): {', '.join(sorted(changed))}. They apply to the next job."

    def current():
        """The stored values, for the page to show on load (they may have changed via the API)."""
        return [ctx.settings[key] for key in components]

    apply.click(applied, inputs=set(components.values()), outputs=result, queue=False,
                api_visibility="private")
    return current, list(components.values())
