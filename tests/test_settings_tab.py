"""The Settings tab's logic without a browser: sections in order, what Apply says and saves, and
the tabs' defaults taken from the "User interface" settings."""

import json

import pytest

from engine.option import Option
from engine.settings.options_ui import HIDEABLE_TABS, UI_OPTIONS
from engine.settings.store import OPTIONS, Settings
from ui import settings_tab, ui_defaults


def test_sections_come_in_the_mature_order_then_the_others_as_they_appear():
    options = [Option("a", 1, "A", "Face restoration"), Option("b", 1, "B", "User interface"),
               Option("c", 1, "C", "Saving images"), Option("d", 1, "D", "img2img"),
               Option("e", 1, "E", "API"), Option("f", 1, "F", "Stable Diffusion"),
               Option("g", 1, "G", "Saving images")]
    names = [name for name, _ in settings_tab.grouped(options)]
    assert names == ["Saving images", "Stable Diffusion", "img2img", "User interface", "API",
                     "Face restoration"]
    assert [o.key for o in dict(settings_tab.grouped(options))["Saving images"]] == ["c", "g"]


def test_the_real_schema_starts_with_saving_images_and_has_an_extensions_section():
    names = [name for name, _ in settings_tab.grouped(OPTIONS)]
    assert names[0] == "Saving images"
    assert names.index("Extensions") < names.index("User interface")
    assert settings_tab.section_id("Memory and speed") == "settings_section_memory_and_speed"


def test_restart_message_names_the_settings_by_label():
    options = {"ui_theme": Option("ui_theme", "system", "Theme", "User interface"),
               "x": Option("x", 1, "Some engine cache", "Memory and speed", restart=True),
               "y": Option("y", True, "Other", "API", restart=True)}
    assert settings_tab.saved_message([], options) == "Nothing changed."
    assert settings_tab.saved_message(["ui_theme"], options) == "Saved 1 setting."
    assert settings_tab.saved_message(["ui_theme", "x", "y"], options) == (
        "Saved 3 settings. Needs a restart to take effect: Some engine cache, Other.")


def test_apply_saves_and_a_new_settings_object_on_the_same_file_still_has_it(tmp_path):
    path = tmp_path / "config.json"
    settings = Settings(path)
    message, changed = settings_tab.apply_changes(
        settings, {"ui_txt2img_steps": 32, "samples_save": False, "hidden_tabs": ["Extras"],
                   "ui_theme": "system"})
    assert sorted(changed) == ["hidden_tabs", "samples_save", "ui_txt2img_steps"]
    assert message.startswith("Saved 3 settings. Needs a restart to take effect: Tabs to hide.")
    assert "reloaded" in message  # a tab default changed
    restarted = Settings(path)  # what the app reads after a restart
    assert restarted["ui_txt2img_steps"] == 32 and restarted["samples_save"] is False
    assert restarted["hidden_tabs"] == ["Extras"]
    assert json.loads(path.read_text())["ui_txt2img_steps"] == 32


def test_a_bad_value_names_the_setting_and_nothing_is_saved(tmp_path):
    path = tmp_path / "config.json"
    settings = Settings(path)
    message, changed = settings_tab.apply_changes(settings, {"samples_save": False,
                                                             "ui_steps_max": 1000})
    assert changed is None
    assert "Not saved" in message and "ui_steps_max" in message and "largest value" in message
    assert settings["samples_save"] is True and not path.exists()


def test_a_default_above_its_range_or_an_unknown_schedule_is_refused(tmp_path):
    settings = Settings(tmp_path / "config.json")
    message, changed = settings_tab.apply_changes(settings, {"ui_txt2img_steps": 90, "ui_steps_max": 60})
    assert changed is None and "txt2img: default sampling steps (ui_txt2img_steps)" in message
    assert "(90) is above" in message
    message, changed = settings_tab.apply_changes(settings, {"ui_img2img_sampler": "LCM",
                                                             "ui_img2img_scheduler": "Sideways"})
    assert changed is None and "ui_img2img_scheduler" in message and "got &#x27;Sideways&#x27;" in message
    assert settings["ui_img2img_sampler"] == "DPM++ 2M"
    # Any schedule type goes with any sampler, as in A1111.
    _, changed = settings_tab.apply_changes(settings, {"ui_img2img_sampler": "LCM", "ui_img2img_scheduler": "Karras"})
    assert changed == ["ui_img2img_sampler", "ui_img2img_scheduler"]
    settings.update({"ui_img2img_sampler": "DPM++ 2M", "ui_img2img_scheduler": "Automatic"})
    # An old conflict (written by hand or the API) does not block an unrelated change.
    settings.update({"ui_txt2img_steps": 90, "ui_steps_max": 60})
    _, changed = settings_tab.apply_changes(settings, {"samples_save": False})
    assert changed == ["samples_save"]


def test_vae_check_refuses_the_whole_change(tmp_path):
    settings = Settings(tmp_path / "config.json")

    def no_such_vae(coerced):
        from engine.errors import NotFoundError
        raise NotFoundError("VAE not found: 'x'", "sd_vae")

    message, changed = settings_tab.apply_changes(settings, {"sd_vae": "x", "samples_save": False},
                                                  no_such_vae)
    assert changed is None and "SD VAE (sd_vae)" in message and settings["samples_save"] is True


def test_only_what_was_changed_on_the_page_is_sent():
    shown = {"a": 1, "b": "x", "c": [1]}
    assert settings_tab.edited(shown, {"a": 1, "b": "y", "c": [1], "d": 5}) == {"b": "y", "d": 5}


def test_extensions_are_shown_enabled_and_saved_disabled_keeping_ones_not_loaded():
    names = ["glow", "tiling", "hires_fix"]
    assert settings_tab.enabled_names(names, ["tiling", "gone"]) == ["glow", "hires_fix"]
    assert settings_tab.disabled_names(names, ["glow"], ["gone", "tiling"]) == ["gone", "hires_fix",
                                                                                "tiling"]
    assert settings_tab.disabled_names(names, None, []) == ["glow", "hires_fix", "tiling"]


def test_ui_options_are_in_their_section_with_sane_defaults():
    assert all(o.section == "User interface" for o in UI_OPTIONS)
    for option in UI_OPTIONS:
        assert option.coerce(option.default) == option.default, option.key
    keys = {o.key for o in UI_OPTIONS}
    assert {"ui_theme", "ui_steps_max", "ui_size_max", "ui_cfg_max", "ui_txt2img_steps",
            "ui_txt2img_cfg_scale", "ui_txt2img_width", "ui_txt2img_height", "ui_txt2img_sampler",
            "ui_img2img_denoising_strength", "ui_img2img_steps"} <= keys
    assert "Settings" not in HIDEABLE_TABS and "txt2img" not in HIDEABLE_TABS


def test_tab_start_values_follow_the_settings(tmp_path):
    settings = Settings(tmp_path / "config.json")
    start = ui_defaults.start_values(settings, "txt2img")
    assert start["steps"] == {"value": 20, "maximum": 150}
    assert start["sampler_name"] == {"value": "DPM++ 2M"}
    assert "denoising_strength" not in start
    settings.update({"ui_img2img_denoising_strength": 0.5, "ui_size_max": 1024, "ui_img2img_width": 768})
    start = ui_defaults.start_values(settings, "img2img")
    assert start["denoising_strength"] == {"value": 0.5}
    assert start["width"] == {"value": 768, "maximum": 1024}
    assert ui_defaults.is_tab_default("ui_size_max") and ui_defaults.is_tab_default("ui_img2img_mask_blur")
    assert not ui_defaults.is_tab_default("ui_theme")


class _Built:
    """Stands in for a built slider: the value and maximum it was built with."""

    def __init__(self, value, maximum=None):
        self.value, self.maximum = value, maximum


@pytest.mark.parametrize("current, wanted, expected", [
    (20, {"value": 30, "maximum": 150}, {"value": 30}),          # untouched: new default
    (25, {"value": 30, "maximum": 150}, {}),                     # changed by the user: kept
    (20, {"value": 20, "maximum": 80}, {"maximum": 80}),         # new range always
    (20, {"value": 20, "maximum": 150}, {}),                     # nothing new: nothing sent
])
def test_page_load_updates_only_untouched_controls(current, wanted, expected):
    update = ui_defaults._update(_Built(20, 150), current, wanted)
    assert {k: v for k, v in update.items() if k != "__type__"} == expected
