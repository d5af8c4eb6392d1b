"""The Settings tab in a real browser, against its own app server (settings persist, so the shared
demo server is left alone): search, apply, persistence across reloads and restarts, the tabs'
defaults, the theme, extensions, and refusals."""

import pytest

from tests.support.server import AppServer
from tests.test_browser import set_number


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with AppServer(tmp_path_factory.mktemp("settings-server"), "--demo") as running:
        yield running


def open_settings(page, url: str) -> None:
    page.goto(url)
    page.click("#tab_settings-button")
    page.locator("#setting_ui_txt2img_steps").wait_for()


def apply_and_read(page, expected: str) -> str:
    page.click("#settings_apply")
    result = page.locator("#settings_result")
    try:
        result.get_by_text(expected).wait_for(timeout=20_000)
    except Exception:
        raise AssertionError(f"expected {expected!r}, the tab says {result.inner_text()!r}") from None
    return result.inner_text()


def test_search_shows_only_matching_settings_and_sections(page, server):
    open_settings(page, server.url)
    search = page.locator("#settings_search textarea, #settings_search input").first
    search.fill("theme")
    page.locator("#setting_samples_save").wait_for(state="hidden")
    assert page.locator("#setting_ui_theme").is_visible()
    assert not page.locator("#setting_ui_txt2img_steps").is_visible()
    assert not page.locator("#settings_section_saving_images").is_visible()
    assert page.locator("#settings_section_user_interface").is_visible()
    search.fill("UI_CFG_max")  # by key, whatever the case
    page.locator("#setting_ui_cfg_max").wait_for()
    assert not page.locator("#setting_ui_theme").is_visible()
    search.fill("img2img default steps")  # every word, in any order
    page.locator("#setting_ui_img2img_steps").wait_for()
    assert not page.locator("#setting_ui_txt2img_steps").is_visible()
    search.fill("")
    page.locator("#setting_samples_save").wait_for()
    assert page.locator("#setting_ui_txt2img_steps").is_visible()
    assert not page.locator("#settings_no_match").is_visible()


def test_a_search_that_matches_nothing_says_so(page, server):
    open_settings(page, server.url)
    search = page.locator("#settings_search textarea, #settings_search input").first
    search.fill("zebra crossing")
    nothing = page.locator("#settings_no_match")
    nothing.wait_for()
    assert "No settings match" in nothing.inner_text() and "zebra crossing" in nothing.inner_text()
    assert not page.locator("#setting_ui_txt2img_steps").is_visible()
    search.fill("theme")
    nothing.wait_for(state="hidden")
    assert page.locator("#setting_ui_theme").is_visible()


def test_change_apply_reload_and_the_new_defaults_are_used(page, server):
    open_settings(page, server.url)
    set_number(page, "setting_ui_txt2img_steps", 33)
    set_number(page, "setting_ui_steps_max", 100)
    page.locator("#setting_samples_save input").uncheck()
    text = apply_and_read(page, "Saved 3 settings")
    assert "restart" not in text and "reloaded" in text
    page.reload()
    page.click("#tab_settings-button")
    steps = page.locator("#setting_ui_txt2img_steps input[type=number]")
    steps.wait_for()
    assert steps.input_value() == "33"
    assert not page.locator("#setting_samples_save input").is_checked()
    page.click("#tab_txt2img-button")
    slider = page.locator("#txt2img_steps input[type=range]")
    page.wait_for_function(
        "() => document.querySelector('#txt2img_steps input[type=number]')?.value === '33'")
    assert slider.get_attribute("max") == "100"
    # The other tab has its own default, unchanged.
    page.click("#tab_img2img-button")
    assert page.locator("#img2img_steps input[type=number]").input_value() == "20"


def test_a_setting_that_needs_a_restart_is_reported_by_name(page, server):
    open_settings(page, server.url)
    page.locator("#setting_hidden_tabs").get_by_label("PNG Info").check()
    text = apply_and_read(page, "Saved 1 setting")
    assert "Needs a restart to take effect: Tabs to hide." in text
    assert page.locator("#tab_pnginfo-button").is_visible()  # until the restart


def test_a_bad_value_is_refused_with_the_setting_named(page, server):
    open_settings(page, server.url)
    set_number(page, "setting_ui_img2img_steps", 140)
    set_number(page, "setting_ui_steps_max", 120)
    text = apply_and_read(page, "Not saved")
    assert "img2img: default sampling steps" in text and "above" in text
    page.reload()
    page.click("#tab_settings-button")
    page.locator("#setting_ui_img2img_steps").wait_for()
    assert page.locator("#setting_ui_img2img_steps input[type=number]").input_value() == "20"


def test_theme_applies_at_once_and_on_the_next_page(page, server):
    open_settings(page, server.url)
    page.locator("#setting_ui_theme").get_by_label("dark").check()
    apply_and_read(page, "Saved 1 setting")
    page.wait_for_function("() => document.body.classList.contains('dark')")
    page.reload()
    page.wait_for_function("() => document.body.classList.contains('dark')")
    page.click("#tab_settings-button")
    page.locator("#setting_ui_theme").get_by_label("light").check()
    apply_and_read(page, "Saved 1 setting")
    page.wait_for_function("() => !document.body.classList.contains('dark')")


def test_extensions_can_be_switched_off_and_on_in_settings(page, server):
    open_settings(page, server.url)
    tiling = page.locator("#txt2img_ext_tiling")
    page.locator("#setting_disabled_extensions").get_by_label("tiling").uncheck()
    apply_and_read(page, "Saved 1 setting")
    page.click("#tab_txt2img-button")
    tiling.wait_for(state="hidden")
    page.click("#tab_extensions-button")
    assert not page.locator("#extensions_enabled").get_by_label("tiling").is_checked()
    page.click("#tab_settings-button")
    page.locator("#setting_disabled_extensions").get_by_label("tiling").check()
    apply_and_read(page, "Saved 1 setting")
    page.click("#tab_txt2img-button")
    tiling.get_by_text("Tiling", exact=True).first.wait_for()


def test_settings_survive_a_restart(page, tmp_path):
    with AppServer(tmp_path, "--demo") as first:
        open_settings(page, first.url)
        page.locator("#setting_hidden_tabs").get_by_label("Extras").check()
        set_number(page, "setting_ui_img2img_denoising_strength", 0.4)
        apply_and_read(page, "Saved 2 settings")
    with AppServer(tmp_path, "--demo") as again:
        open_settings(page, again.url)
        assert page.locator("#setting_hidden_tabs").get_by_label("Extras").is_checked()
        assert page.locator("#tab_extras-button").count() == 0 or \
            not page.locator("#tab_extras-button").is_visible()
        page.click("#tab_img2img-button")
        assert page.locator("#img2img_denoising_strength input[type=number]").input_value() == "0.4"
