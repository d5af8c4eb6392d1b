"""img2img, inpainting, PNG Info and "send to" in a real browser against app.py --demo."""

import base64
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from engine.image_prep import JUST_RESIZE, resize_image
from engine.output.infotext import parse
from engine.output.writer import png_bytes
from tests.support.bad_images import truncated_png
from tests.test_browser import set_number


def open_tab(page, url: str, tab: str) -> None:
    page.goto(url)
    page.wait_for_function(
        "() => document.querySelector('#sd_checkpoint input')?.value.startsWith('demo-tiny')")
    page.click(f"#tab_{tab}-button")


def gallery_png(page, tab: str) -> bytes:
    source = page.locator(f"#{tab}_gallery img").first.get_attribute("src")
    return page.request.get(source).body()


def wait_for_infotext(page, tab: str, containing: str) -> str:
    page.wait_for_function(
        "([tab, text]) => document.querySelector(`#${tab}_infotext textarea`)?.value.includes(text)",
        arg=[tab, containing])
    return page.locator(f"#{tab}_infotext textarea").input_value()


def generate_small_txt2img(page, url: str, prompt: str, negative: str = "") -> str:
    """A 3-step 64x64 txt2img job from a fresh page; returns its infotext."""
    open_tab(page, url, "txt2img")
    page.locator("#txt2img_prompt textarea").fill(prompt)
    if negative:
        page.locator("#txt2img_neg_prompt textarea").fill(negative)
    for name, value in (("txt2img_steps", 3), ("txt2img_width", 64), ("txt2img_height", 64)):
        set_number(page, name, value)
    page.click("#txt2img_generate")
    return wait_for_infotext(page, "txt2img", prompt)


def test_paint_a_mask_and_only_the_stroke_changes(page, demo_server, tmp_path):
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    picture = picture.resize((256, 256), Image.Resampling.NEAREST)
    picture.save(tmp_path / "picture.png")
    open_tab(page, demo_server.url, "img2img")
    page.click("#img2img_tab_inpaint-button")
    editor = page.locator("#img2img_inpaint")
    editor.locator("canvas").first.wait_for()
    page.wait_for_timeout(2000)  # the editor mounts its canvas before it takes an upload
    editor.locator("input[type=file]").first.set_input_files(str(tmp_path / "picture.png"))
    page.wait_for_timeout(3000)  # and draws the upload before it takes strokes
    for name, value in (("img2img_steps", 4), ("img2img_width", 64), ("img2img_height", 64)):
        set_number(page, name, value)
    page.locator("#img2img_prompt textarea").fill("a painted stroke")
    editor.locator("button[aria-label='Brush']").click()
    box = editor.locator("canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 40, y)
    page.mouse.down()
    for step in range(9):
        page.mouse.move(x - 40 + step * 10, y, steps=2)
    page.mouse.up()
    page.click("#img2img_generate")
    text = wait_for_infotext(page, "img2img", "Mask blur")
    assert parse(text)[2]["Inpaint area"] == "Whole picture"
    result = Image.open(io.BytesIO(gallery_png(page, "img2img"))).convert("RGB")
    screenshots = Path(os.environ.get("SCREENSHOT_DIR", tmp_path))
    screenshots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshots / "inpaint-after-generation.png"), full_page=True)

    expected = resize_image(picture, JUST_RESIZE, 64, 64)
    changed = np.abs(np.asarray(result, dtype=np.int16) - np.asarray(expected, dtype=np.int16)).max(-1) > 2
    rows, cols = np.nonzero(changed)
    assert changed.sum() > 20, "the stroke's area was repainted"
    # The stroke is a short horizontal band through the middle: nothing far from it changed.
    assert rows.min() >= 16 and rows.max() <= 48 and cols.min() >= 8 and cols.max() <= 56
    assert not changed[:12].any() and not changed[-12:].any()


def test_png_info_then_send_to_txt2img_reproduces_the_image(page, demo_server, tmp_path):
    first_text = generate_small_txt2img(page, demo_server.url, "round trip, (red:1.2)", "blurry")
    first = gallery_png(page, "txt2img")
    (tmp_path / "made.png").write_bytes(first)

    page.click("#tab_pnginfo-button")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(tmp_path / "made.png"))
    page.locator("#pnginfo_html table").get_by_text("Negative prompt").wait_for()
    assert "blurry" in page.locator("#pnginfo_html").inner_text()
    page.click("#pnginfo_send_to_txt2img")
    page.wait_for_function(
        "() => document.querySelector('#txt2img_prompt textarea')?.value === 'round trip, (red:1.2)'")
    assert page.locator("#txt2img_seed input").input_value() == parse(first_text)[2]["Seed"]
    saved = set((demo_server.data_dir / "outputs").rglob("*.png"))
    page.click("#txt2img_generate")
    new = []
    for _ in range(600):
        new = sorted(set((demo_server.data_dir / "outputs").rglob("*.png")) - saved)
        if new:
            break
        page.wait_for_timeout(100)
    assert len(new) == 1, "the second generation saved one image"
    assert new[0].read_bytes() == first
    assert wait_for_infotext(page, "txt2img", "round trip") == first_text


def test_dropping_a_png_on_the_prompt_fills_the_fields(page, demo_server):
    text = ("a dropped picture\nNegative prompt: dull\nSteps: 7, Sampler: Euler a, CFG scale: 4.5, "
            "Seed: 4242, Size: 128x96, Denoising strength: 0.4, Model: other")
    data = base64.b64encode(png_bytes(Image.new("RGB", (8, 8)), text)).decode()
    open_tab(page, demo_server.url, "img2img")
    page.evaluate("""(data) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
        const box = document.querySelector("#img2img_neg_prompt textarea");
        box.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
    }""", data)
    page.wait_for_function(
        "() => document.querySelector('#img2img_prompt textarea')?.value === 'a dropped picture'")
    assert page.locator("#img2img_neg_prompt textarea").input_value() == "dull"
    assert page.locator("#img2img_steps input[type=number]").input_value() == "7"
    assert page.locator("#img2img_seed input").input_value() == "4242"
    assert page.locator("#img2img_width input[type=number]").input_value() == "128"
    assert page.locator("#img2img_denoising_strength input[type=number]").input_value() == "0.4"


def test_send_a_result_to_inpaint(page, demo_server):
    generate_small_txt2img(page, demo_server.url, "to be inpainted")
    page.click("#txt2img_send_to_inpaint")
    page.locator("#img2img_inpaint canvas").first.wait_for()
    page.wait_for_function(
        "() => document.querySelector('#img2img_prompt textarea')?.value === 'to be inpainted'")
    assert page.locator("#img2img_tab_inpaint-button").get_attribute("aria-selected") == "true"
    assert page.locator("#img2img_mask_blur").is_visible()


def test_send_a_result_to_extras_and_upscale_it(page, demo_server):
    generate_small_txt2img(page, demo_server.url, "to be upscaled")
    page.click("#txt2img_send_to_extras")
    page.locator("#extras_image img").wait_for()
    page.click("#extras_generate")
    page.wait_for_function("() => document.querySelector('#extras_info textarea')?.value.includes('128x128')")
    source = page.locator("#extras_result img").first.get_attribute("src")
    upscaled = Image.open(io.BytesIO(page.request.get(source).body()))
    assert upscaled.size == (128, 128)
    saved = sorted((demo_server.data_dir / "outputs" / "extras-images").rglob("*.png"))[-1]
    assert "to be upscaled" in Image.open(saved).info["parameters"]


def test_a_truncated_upload_shows_what_is_wrong_and_a_good_one_then_works(page, demo_server, tmp_path):
    (tmp_path / "broken.png").write_bytes(truncated_png())
    Image.effect_noise((64, 64), 60).convert("RGB").save(tmp_path / "good.png")
    open_tab(page, demo_server.url, "img2img")
    for name, value in (("img2img_steps", 3), ("img2img_width", 64), ("img2img_height", 64)):
        set_number(page, name, value)
    page.locator("#img2img_prompt textarea").fill("after a broken upload")
    upload = page.locator("#img2img_image input[type=file]")
    upload.set_input_files(str(tmp_path / "broken.png"))
    # Said under the field as soon as it arrives, and the broken file leaves the field again.
    note = page.locator("#img2img_image_upload_message")
    note.get_by_text("Image for img2img could not be read: the file is damaged or truncated").wait_for()
    page.locator("#img2img_image img").wait_for(state="detached")
    upload.set_input_files(str(tmp_path / "good.png"))
    note.get_by_text("could not be read").wait_for(state="detached")
    page.wait_for_timeout(1000)
    page.click("#img2img_generate")
    assert "Denoising strength" in wait_for_infotext(page, "img2img", "after a broken upload")
