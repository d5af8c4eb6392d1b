"""ControlNet in a real browser against app.py --demo: draw a scribble on a unit's blank canvas,
preview the detected map, then generate with the demo ControlNet."""

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from tests.test_browser import set_number
from tests.test_browser_img2img import gallery_png, open_tab, wait_for_infotext


def draw_scribble(page, editor) -> None:
    editor.locator("canvas").first.wait_for()
    page.wait_for_timeout(1500)  # the editor mounts its blank canvas before it takes strokes
    editor.locator("button[aria-label='Brush']").click()
    box = editor.locator("canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 60, y - 40)
    page.mouse.down()
    for step in range(13):  # a zigzag across the middle
        page.mouse.move(x - 60 + step * 10, y - 40 + (step % 2) * 60, steps=3)
    page.mouse.up()


def generate_small(page, tab: str, prompt: str) -> str:
    """Generate `prompt` in `tab` at 3 steps and 64 x 64; the infotext once it shows."""
    page.locator(f"#{tab}_prompt textarea").fill(prompt)
    for name, value in (("steps", 3), ("width", 64), ("height", 64)):
        set_number(page, f"{tab}_{name}", value)
    page.click(f"#{tab}_generate")
    return wait_for_infotext(page, tab, prompt)


def test_scribble_preview_and_generate_in_the_controlnet_tab(page, demo_server, tmp_path):
    open_tab(page, demo_server.url, "controlnet")
    editor = page.locator("#controlnet_cn0_image")
    draw_scribble(page, editor)
    page.locator("#controlnet_cn0_module input").click()
    page.get_by_role("option", name="scribble", exact=True).click()
    page.click("#controlnet_cn0_preview")
    detected = page.locator("#controlnet_cn0_detected img")
    detected.wait_for()
    mapped = Image.open(io.BytesIO(page.request.get(detected.get_attribute("src")).body())).convert("L")
    lines = np.asarray(mapped) > 127
    assert 0.002 < lines.mean() < 0.3, "the zigzag shows as white lines on black"

    page.locator("#controlnet_cn0_enabled input").check()
    page.locator("#controlnet_cn0_model input").click()
    page.get_by_role("option", name="demo-controlnet").click()
    text = generate_small(page, "controlnet", "a scribbled zigzag")
    assert 'ControlNet 0: "Module: scribble, Model: demo-controlnet, Weight: 1' in text
    result = Image.open(io.BytesIO(gallery_png(page, "controlnet")))
    assert result.size == (64, 64)
    screenshots = Path(os.environ.get("SCREENSHOT_DIR", tmp_path))
    screenshots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshots / "controlnet-after-generation.png"), full_page=True)


def test_a_unit_in_the_txt2img_accordion_without_an_image_says_so(page, demo_server):
    open_tab(page, demo_server.url, "txt2img")
    page.locator("#txt2img_controlnet").get_by_text("ControlNet", exact=True).first.click()
    page.locator("#txt2img_cn0_enabled input").check()
    page.locator("#txt2img_cn0_model input").click()
    page.get_by_role("option", name="demo-controlnet").click()
    page.locator("#txt2img_prompt textarea").fill("no control image")
    page.click("#txt2img_generate")
    page.locator("#txt2img_message").get_by_text("ControlNet unit 0 is enabled but has no control image").wait_for()


def test_a_reference_adain_unit_generates_without_a_model(page, demo_server, tmp_path):
    """reference_adain needs no model: picked with the model left at None, the unit steers the job
    and its infotext names it."""
    open_tab(page, demo_server.url, "controlnet")
    draw_scribble(page, page.locator("#controlnet_cn0_image"))
    page.locator("#controlnet_cn0_module input").click()
    page.get_by_role("option", name="reference_adain", exact=True).click()
    page.locator("#controlnet_cn0_threshold_a").get_by_text("Style Fidelity").first.wait_for()
    page.locator("#controlnet_cn0_enabled input").check()
    text = generate_small(page, "controlnet", "a house after the reference")
    assert 'ControlNet 0: "Module: reference_adain, Model: None, Weight: 1' in text
    screenshots = Path(os.environ.get("SCREENSHOT_DIR", tmp_path))
    screenshots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshots / "controlnet-reference-adain.png"), full_page=True)
