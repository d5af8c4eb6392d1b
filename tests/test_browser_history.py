"""The History tab in a real browser: a picture generated in txt2img is found among the saved
ones, shows its parameters, pages back to older pictures and goes back to txt2img."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
from PIL import Image

from engine.output.infotext import build
from engine.output.writer import png_bytes
from tests.test_browser import prepare_small_job, wait_for_infotext

OLD_DAY = "2001-02-03"


def write_old_pictures(outputs: Path, count: int) -> None:
    """Pictures saved long ago, as a previous session would have left them."""
    folder = outputs / "txt2img-images" / OLD_DAY
    folder.mkdir(parents=True, exist_ok=True)
    moment = dt.datetime(2001, 2, 3, 12).timestamp()
    for number in range(count):
        pixels = np.full((32, 32, 3), number * 8, dtype=np.uint8)
        text = build(f"an old picture {number}", "", {"Steps": 3, "Sampler": "Euler", "Seed": number,
                                                      "Size": "32x32"})
        path = folder / f"{number:05d}-{number}.png"
        path.write_bytes(png_bytes(Image.fromarray(pixels), text))
        os.utime(path, (moment + number, moment + number))


def textbox(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def test_a_generated_picture_is_found_in_history_with_its_parameters(page, demo_server, tmp_path):
    write_old_pictures(demo_server.data_dir / "outputs", 30)  # more than one page
    prepare_small_job(page, demo_server.url, "a lighthouse kept in history")
    page.locator("#txt2img_seed input").fill("4242")
    page.click("#txt2img_generate")
    wait_for_infotext(page, "a lighthouse kept in history")

    page.click("#tab_history-button")
    page.get_by_text("Page 1 of").wait_for()
    thumbnails = page.locator("#history_gallery .thumbnail-item")
    thumbnails.first.wait_for()
    assert thumbnails.count() == 24
    thumbnails.first.click()  # the newest: the one just made
    page.wait_for_function(
        "() => document.querySelector('#history_infotext textarea')?.value.includes('Seed: 4242')")
    text = textbox(page, "history_infotext").input_value()
    assert text.startswith("a lighthouse kept in history\n")
    name = textbox(page, "history_file").input_value()
    assert name.startswith(f"txt2img-images/{dt.date.today().isoformat()}/") and name.endswith("-4242.png")
    saved = demo_server.data_dir / "outputs" / name
    assert saved.is_file()
    # The page gets a copy in Gradio's cache, parameters inside; the outputs folder itself is
    # not served (no allowed_paths were added for it).
    source = page.locator("#history_gallery .thumbnail-item img").first.get_attribute("src")
    copy = page.request.get(source)
    assert copy.headers["content-type"] == "image/png" and b"Seed: 4242" in copy.body()
    assert str(saved.parent) not in source
    assert page.request.get(f"{demo_server.url}/gradio_api/file={saved}").status >= 400
    page.keyboard.press("Escape")  # back from the large view to the grid
    screenshots = Path(os.environ.get("SCREENSHOT_DIR", tmp_path))
    screenshots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshots / "history-tab.png"), full_page=True)

    # The oldest pictures are on the last page (other tests sharing the server add pictures too).
    assert page.locator("#history_newer").is_disabled()
    page.click("#history_older")
    page.get_by_text("Page 2 of").wait_for()
    assert page.locator("#history_newer").is_enabled()
    pages = int(page.get_by_text("Page 2 of").inner_text().split(" of ")[1].split()[0])
    for number in range(3, pages + 1):
        page.click("#history_older")
        page.get_by_text(f"Page {number} of").wait_for()
    assert page.locator("#history_older").is_disabled()
    page.locator("#history_gallery .thumbnail-item").last.click()
    page.wait_for_function(
        "() => document.querySelector('#history_infotext textarea')?.value.includes('an old picture 0')")
    assert textbox(page, "history_file").input_value() == f"txt2img-images/{OLD_DAY}/00000-0.png"
    page.keyboard.press("Escape")

    # Grids hold none of these; back on All, Send to txt2img fills in the picture's parameters.
    page.locator("#history_kind").get_by_label("Grids").check()
    page.wait_for_function("() => document.querySelector('#history_file textarea, #history_file input')"
                           "?.value === ''")
    page.locator("#history_kind").get_by_label("All").check()
    page.locator("#history_gallery .thumbnail-item").first.click()
    page.wait_for_function(
        "() => document.querySelector('#history_infotext textarea')?.value.includes('Seed: 4242')")
    page.click("#history_send_to_txt2img")
    page.wait_for_function(
        "() => document.querySelector('#txt2img_prompt textarea')?.value === 'a lighthouse kept in history'")
    assert page.locator("#txt2img_seed input").input_value() == "4242"
    # And to img2img: the saved file becomes the source picture.
    page.click("#tab_history-button")
    page.locator("#history_gallery .thumbnail-item").first.click()
    page.wait_for_function(
        "() => document.querySelector('#history_infotext textarea')?.value.includes('Seed: 4242')")
    page.click("#history_send_to_img2img")
    page.locator("#img2img_image img").wait_for()
    page.wait_for_function(
        "() => document.querySelector('#img2img_prompt textarea')?.value === 'a lighthouse kept in history'")
