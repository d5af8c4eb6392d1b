"""The Refiner accordion in a real browser against app.py --demo: the demo model refined by the
tiny diffusers-folder model (same latent space), the infotext says so, and "Send to img2img"
carries the refiner into img2img's accordion."""

from __future__ import annotations

import httpx

from tests.test_browser import set_number
from tests.test_browser_img2img import open_tab, wait_for_infotext


def _open_refiner(page, tab: str) -> None:
    page.locator(f"#{tab}_refiner_accordion").get_by_text("Refiner", exact=True).first.click()
    page.locator(f"#{tab}_refiner_enable input").wait_for()


def test_refiner_accordion_refines_and_travels_with_the_parameters(page, demo_server):
    open_tab(page, demo_server.url, "txt2img")
    _open_refiner(page, "txt2img")
    page.locator("#txt2img_refiner_enable input").check()
    page.locator("#txt2img_refiner_checkpoint input").click()
    page.get_by_role("option", name="tiny-folder").first.click()
    set_number(page, "txt2img_refiner_switch_at", 0.5)
    page.locator("#txt2img_prompt textarea").fill("refined in the browser")
    for name, value in (("txt2img_steps", 4), ("txt2img_width", 64), ("txt2img_height", 64)):
        set_number(page, name, value)
    page.click("#txt2img_generate")
    text = wait_for_infotext(page, "txt2img", "refined in the browser")
    assert "Refiner: tiny-folder" in text and "Refiner switch at: 0.5" in text

    page.click("#txt2img_send_to_img2img")
    page.wait_for_function("() => document.querySelector('#img2img_prompt textarea')?.value === "
                           "'refined in the browser'")
    _open_refiner(page, "img2img")
    assert page.locator("#img2img_refiner_enable input").is_checked()
    assert page.locator("#img2img_refiner_checkpoint input").input_value().startswith("tiny-folder")
    assert page.locator("#img2img_refiner_switch_at input[type=number]").input_value() == "0.5"


def test_enabled_without_a_checkpoint_is_named(page, demo_server):
    open_tab(page, demo_server.url, "txt2img")
    _open_refiner(page, "txt2img")
    page.locator("#txt2img_refiner_enable input").check()
    page.locator("#txt2img_prompt textarea").fill("no refiner chosen")
    page.click("#txt2img_generate")
    page.locator("#txt2img_message").get_by_text("Refiner is enabled but no refiner checkpoint is chosen").wait_for()


def test_the_accordion_starts_from_the_sd_model_refiner_setting(page, demo_server):
    api = f"{demo_server.url}/sdapi/v1/options"
    assert httpx.post(api, json={"sd_model_refiner": "tiny-folder"}).status_code == 200
    try:
        open_tab(page, demo_server.url, "txt2img")
        _open_refiner(page, "txt2img")
        page.wait_for_function(
            "() => document.querySelector('#txt2img_refiner_checkpoint input')?.value.startsWith('tiny-folder')")
    finally:
        httpx.post(api, json={"sd_model_refiner": "None"})
