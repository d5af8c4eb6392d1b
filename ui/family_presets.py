"""Forge's UI presets, done when they matter: when the loaded checkpoint goes from an SD-family
model to a flow model (FLUX.1, SD 3.x) or back, the tabs' sampler, schedule, steps, CFG scale (and
txt2img's size) take that family's defaults (engine/families: FLUX.1-dev 20 steps at CFG 1 with
Euler / Simple, schnell 4 steps, SD 3.5 CFG 4.5, ...). Switching between SD 1.x, 2.x and SDXL
leaves them alone, as A1111 does. The `family_presets` setting turns this off."""

from __future__ import annotations

import gradio as gr

from engine.families import FamilyDefaults, family_of
from engine.families.flux import DEFAULT_DISTILLED_CFG

from .context import UIContext

PRESET_KEY = "family_presets"
FIELDS = ("sampler_name", "scheduler", "steps", "cfg_scale", "distilled_cfg_scale", "width", "height")


def preset_values(defaults: FamilyDefaults) -> dict:
    return {"sampler_name": defaults.sampler, "scheduler": defaults.schedule, "steps": defaults.steps,
            "cfg_scale": defaults.cfg_scale,
            "distilled_cfg_scale": DEFAULT_DISTILLED_CFG if defaults.distilled_cfg_scale is None
            else defaults.distilled_cfg_scale,
            "width": defaults.width, "height": defaults.height}


def wire(blocks: gr.Blocks, ctx: UIContext, dropdown, tabs: dict[str, dict]) -> None:
    """`tabs`: tab name -> its controls. img2img keeps its size (it follows the picture)."""
    targets = [(name, controls[name]) for tab, controls in tabs.items() for name in FIELDS
               if name in controls and not (tab == "img2img" and name in ("width", "height"))]
    # The family and preset this page last saw loaded: a change between FLUX.1-dev, schnell and
    # Fill (one family, other defaults) also applies.
    seen = gr.State(None)

    def follow(_title, previous):
        model = ctx.models.current
        unchanged = [gr.update() for _ in targets]
        if model is None or not ctx.settings[PRESET_KEY]:
            return [*unchanged, previous]
        family = family_of(model.family)
        values = preset_values(family.defaults(model.base))
        now = [model.family, sorted(values.items())]
        flow_before = previous is not None and family_of(previous[0]).flow
        if now == previous or (previous is None and not family.flow) or \
                (previous is not None and not family.flow and not flow_before):
            return [*unchanged, now]
        return [*(gr.update(value=values[name]) for name, _ in targets), now]

    outputs = [control for _, control in targets] + [seen]
    dropdown.change(follow, inputs=[dropdown, seen], outputs=outputs, queue=False, api_visibility="private",
                    show_progress="hidden")
    blocks.load(follow, inputs=[dropdown, seen], outputs=outputs, queue=False, api_visibility="private",
                show_progress="hidden")
