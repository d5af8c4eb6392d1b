"""The "User interface" settings: the theme, hidden tabs, and the tabs' default values and ranges.

The mature web UIs kept the tabs' defaults in a separate ui-config.json; here they are ordinary
settings, so the Settings tab and /sdapi/v1/options read and write them like any other. The ranges
may only narrow the engine's own limits (engine/request.py): a slider must never offer a value that
the request would refuse.
"""

from __future__ import annotations

from engine import request as limits
from engine.sampling import samplers
from engine.option import Option

SECTION = "User interface"

THEMES = ("light", "dark", "system")
# Tabs that may be hidden; txt2img (the first tab) and Settings (the way back) always stay.
HIDEABLE_TABS = ("img2img", "ControlNet", "Extras", "PNG Info", "Checkpoint Merger", "History", "Extensions")

# How far the tabs' sliders go.
STEPS_MAX, SIZE_MAX, CFG_MAX = "ui_steps_max", "ui_size_max", "ui_cfg_max"
_RANGES = (
    Option(STEPS_MAX, limits.MAX_STEPS, "Sampling steps: largest value on the sliders", SECTION,
           minimum=10, maximum=limits.MAX_STEPS),
    Option(SIZE_MAX, limits.MAX_SIZE, "Width and height: largest value on the sliders", SECTION,
           minimum=256, maximum=limits.MAX_SIZE),
    Option(CFG_MAX, limits.MAX_CFG, "CFG Scale: largest value on the sliders", SECTION,
           minimum=2.0, maximum=limits.MAX_CFG),
    # ui/family_presets.py: Forge's presets when the checkpoint changes between SD and flow models.
    Option("family_presets", True, "When the loaded checkpoint changes from an SD model to FLUX.1 / SD 3 or "
           "back, set the sampler, schedule, steps, CFG scale and size to that family's defaults", SECTION),
)


def default_key(tab: str, control: str) -> str:
    """The setting that holds a tab's default for one control, e.g. ui_txt2img_steps."""
    return f"ui_{tab}_{control}"


def _tab_defaults(tab: str) -> tuple[Option, ...]:
    """The defaults every generation tab shares (same values as COMPAT.md's UI defaults)."""
    def option(control: str, default, what: str, **bounds) -> Option:
        return Option(default_key(tab, control), default, f"{tab}: default {what}", SECTION, **bounds)

    return (
        option("sampler", samplers.DEFAULT_SAMPLER, "sampling method",
               choices=tuple(samplers.sampler_names())),
        option("scheduler", "Automatic", "schedule type", choices=tuple(samplers.SCHEDULE_TYPES)),
        option("steps", 20, "sampling steps", minimum=1, maximum=limits.MAX_STEPS),
        option("cfg_scale", 7.0, "CFG Scale", minimum=limits.MIN_CFG, maximum=limits.MAX_CFG),
        option("width", 512, "width", minimum=limits.MIN_SIZE, maximum=limits.MAX_SIZE),
        option("height", 512, "height", minimum=limits.MIN_SIZE, maximum=limits.MAX_SIZE),
        option("batch_count", 1, "batch count", minimum=1, maximum=limits.MAX_BATCH_COUNT),
        option("batch_size", 1, "batch size", minimum=1, maximum=limits.MAX_BATCH_SIZE),
    )


_IMG2IMG_ONLY = (
    Option(default_key("img2img", "denoising_strength"), 0.75, "img2img: default denoising strength",
           SECTION, minimum=0.0, maximum=1.0),
    Option(default_key("img2img", "mask_blur"), 4, "img2img: default mask blur", SECTION,
           minimum=0, maximum=limits.MAX_MASK_BLUR),
)

UI_OPTIONS: tuple[Option, ...] = (
    # Applied in the browser (a class on the page), so no restart is needed.
    Option("ui_theme", "system", "Theme", SECTION, choices=THEMES),
    # The tabs are laid out once, when the app starts.
    Option("hidden_tabs", [], "Tabs to hide", SECTION, restart=True),
    *_RANGES,
    *_tab_defaults("txt2img"),
    *_tab_defaults("img2img"),
    *_IMG2IMG_ONLY,
)
