"""A curious new user's walk through every tab, in Chromium against app.py --demo --api.

On each tab the walk opens every accordion and sub-tab, changes every dropdown to a few of its
choices, toggles every checkbox, picks every radio option, moves every slider (and resets it),
types valid, empty and out-of-range values into every number box, uploads a good picture and a
file that is not one wherever there is an image input, and clicks the buttons that are safe to
click (Generate with small sizes, Interrupt, Skip, refreshes, Read parameters, Send to, Preview,
settings search and Apply). Every response the page gets is recorded; none may be a server error
(5xx), the page must throw no uncaught error, and at the end each tab must still do its job
(a generation still comes back), so no control leaves the UI stuck.

One test per tab (and per img2img sub-tab), so a failure names the tab. The walk changes nothing
it does not put back: the settings it touches are restored afterwards.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.support.walk import (
    Seen,
    Walk,
    choose,
    close_toast,
    cycle_preprocessors,
    generate,
    interrupt_and_skip,
    preview_maps,
    refused,
    small_job,
    stroke,
    upload_image,
    upload_to_editor,
    walk_files,
)
from tests.test_browser import set_number
from tests.test_browser_img2img import open_tab

SHOTS = Path("/tmp/walk-shots")


# --- what the page saw ---------------------------------------------------------------------------

@pytest.fixture
def seen(page) -> Seen:
    record = Seen()
    page.on("response", lambda r: record.responses.append((r.status, r.request.method, r.url)))
    page.on("console", lambda m: record.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: record.page_errors.append(str(e)))
    return record


@pytest.fixture
def restored_options(demo_server):
    """The walk saves nothing on purpose; whatever it changed anyway is put back (the shared demo
    server's settings are other tests' starting point). Yields the options as they were."""
    before = httpx.get(demo_server.url + "/sdapi/v1/options", timeout=30).json()
    yield before
    after = httpx.get(demo_server.url + "/sdapi/v1/options", timeout=30).json()
    changed = {key: value for key, value in before.items() if after.get(key) != value}
    if changed:
        httpx.post(demo_server.url + "/sdapi/v1/options", json=changed, timeout=60)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    return walk_files(tmp_path_factory.mktemp("walk-files"))


# --- finding controls ----------------------------------------------------------------------------

def walk_generation_tab(page, tab: str, files: dict, skip: str = "") -> Walk:
    # Units 1 and 2 are unit 0 again; the ControlNet tab walks all three.
    others = "" if tab == "controlnet" else f", #{tab}_controlnet_units button[role=tab]"
    walk = Walk(page, f"#tab_{tab}", skip=(skip + others).strip(", "))
    page.locator(f"#{tab}_subseed_show input").check()
    walk.everything()
    # The ControlNet units: back to unit 0, switch preprocessors on it and on unit 1.
    if tab != "controlnet":
        page.locator(f"#{tab}_controlnet_unit_0_tab-button").click()
    for unit in (0, 1):
        page.locator(f"#{tab}_controlnet_unit_{unit}_tab-button").click()
        cycle_preprocessors(page, f"{tab}_cn{unit}")
    page.locator(f"#{tab}_controlnet_unit_0_tab-button").click()
    page.locator(f"#{tab}_subseed_show input").uncheck()
    return walk


def walk_txt2img(page, files: dict) -> None:
    tab = "txt2img"
    # A saved style first, so the Styles list has something to pick.
    page.locator("#txt2img_prompt textarea").fill("{prompt}, walked")
    page.locator("#txt2img_style_save_box").get_by_text("Save prompts as a style").click()
    page.locator("#txt2img_style_name input, #txt2img_style_name textarea").fill("Walked")
    page.click("#txt2img_style_save")
    page.locator("#txt2img_style_note").get_by_text("Saved style").wait_for()
    page.locator("#txt2img_prompt textarea").fill("")
    walk = walk_generation_tab(page, tab, files)
    walk.buttons(r"_(swap_size|random_seed|reuse_seed|random_subseed|reuse_subseed|styles_refresh|"
                 r"lora_refresh|refresh_models|paste|interrupt|skip)$")
    # Read parameters with nothing to read, then with an infotext in the prompt box.
    page.click("#txt2img_paste")
    page.locator("#txt2img_message").get_by_text("Nothing to read").wait_for()
    page.locator("#txt2img_prompt textarea").fill(
        "pasted in\nNegative prompt: ugly\nSteps: 4, Sampler: Euler a, CFG scale: 6, Seed: 5, Size: 64x64")
    page.click("#txt2img_paste")
    page.wait_for_function("() => document.querySelector('#txt2img_seed input').value === '5'")
    # Bad values say what is wrong: a seed out of range, a half-typed size, an empty style name.
    small_job(page, tab, "a seed too large")
    page.locator("#txt2img_seed input").fill("99999999999")
    refused(page, tab, "seed")
    page.locator("#txt2img_seed input").fill("-1")
    set_number(page, "txt2img_width", 100)
    refused(page, tab, "width must be a multiple of 8")
    page.locator("#txt2img_style_name input, #txt2img_style_name textarea").fill("  ")
    page.click("#txt2img_style_save")
    page.locator("#txt2img_style_note").get_by_text("Give the style a name first").wait_for()
    # A prompt a newcomer might write: unbalanced brackets, a LoRA that is not there.
    text = generate(page, tab, "((a cat [in:the rain <lora:no-such-lora:1>")
    assert "Steps: 3" in text
    interrupt_and_skip(page, tab)
    generate(page, tab, "after the walk, txt2img")
    page.locator("#txt2img_seed input").fill("-1")
    page.click("#txt2img_reuse_seed")
    page.wait_for_function("() => document.querySelector('#txt2img_seed input').value !== '-1'")
    page.click("#txt2img_send_to_img2img")
    page.locator("#img2img_image img").wait_for()
    page.click("#tab_txt2img-button")
    page.click("#txt2img_send_to_inpaint")
    page.locator("#img2img_inpaint canvas").first.wait_for()
    page.click("#tab_txt2img-button")
    page.click("#txt2img_send_to_extras")
    page.locator("#extras_image img").wait_for()


def walk_checkpoint_bar(page, files: dict) -> None:
    walk = Walk(page, "#checkpoint_bar", skip="#sd_checkpoint")
    walk.everything()
    walk.buttons(r"^sd_checkpoint_refresh$")
    # A checkpoint's title gains its hash once it is known (earlier tests may have hashed it).
    choose(page, "sd_checkpoint", re.compile(r"^tiny-folder( \[[0-9a-f]{10}\])?$"))
    page.wait_for_function(
        "() => document.querySelector('#sd_checkpoint input').value.startsWith('tiny-folder')")
    page.locator("#sd_checkpoint_status").get_by_text("Loading").wait_for(state="detached", timeout=60_000)
    generate(page, "txt2img", "on another checkpoint")
    choose(page, "sd_checkpoint", re.compile(r"^demo-tiny \(built-in demo\)"))
    page.wait_for_function(
        "() => document.querySelector('#sd_checkpoint input').value.startsWith('demo-tiny')")
    page.locator("#sd_checkpoint_status").get_by_text("Loading").wait_for(state="detached", timeout=60_000)
    generate(page, "txt2img", "back on the demo model")


IMG2IMG_SUBTABS = {"img2img": "img2img_tab_img2img", "sketch": "img2img_tab_sketch",
                   "inpaint": "img2img_tab_inpaint", "inpaint sketch": "img2img_tab_inpaint_sketch",
                   "inpaint upload": "img2img_tab_inpaint_upload", "batch": "img2img_tab_batch"}


def walk_img2img(page, files: dict) -> None:
    tab = "img2img"
    refused(page, tab, "No image for img2img")
    upload_image(page, "img2img_image", files, "Image for img2img")
    # The common controls, with the sub-tabs (walked one by one below) left alone.
    walk = walk_generation_tab(page, tab, files, skip="#img2img_modes")
    walk.buttons(r"_(swap_size|random_seed|reuse_seed|random_subseed|reuse_subseed|styles_refresh|"
                 r"lora_refresh|refresh_models|paste|interrupt|skip)$")
    for script in ("Outpainting", "SD upscale", "None"):
        choose(page, "img2img_script", script)
        Walk(page, "#tab_img2img", skip="#img2img_modes").controls()
    page.click("#img2img_tab_resize_by-button")
    page.locator("#img2img_scale_label").get_by_text("Resize from 64x64").wait_for()
    page.click("#img2img_tab_resize_to-button")
    interrupt_and_skip(page, tab)
    generate(page, tab, "after the walk, img2img")
    for target, shows in (("img2img", "#img2img_image img"), ("inpaint", "#img2img_inpaint canvas"),
                          ("extras", "#extras_image img")):
        page.click("#tab_img2img-button")
        page.click(f"#img2img_send_to_{target}")
        page.locator(shows).first.wait_for()


def batch_with_text_files(page, field: str, files: dict) -> None:
    """A text file is refused by the upload itself; one named .png stays for the job to refuse."""
    page.locator(f"#{field} input[type=file]").set_input_files([files["picture.png"], files["notes.txt"]])
    close_toast(page, "Invalid file type: notes.txt")
    page.locator(f"#{field} input[type=file]").set_input_files([files["picture.png"], files["notes.png"]])
    page.wait_for_timeout(800)


def walk_img2img_subtab(page, files: dict, subtab: str) -> None:
    tab = "img2img"
    page.click(f"#{IMG2IMG_SUBTABS[subtab]}-button")
    root = f"#{IMG2IMG_SUBTABS[subtab]}"
    editors = {"sketch": "No sketch", "inpaint": "No picture to inpaint",
               "inpaint sketch": "No picture to inpaint"}
    if subtab in editors:  # refused while empty, then a picture and a stroke
        field = "img2img_" + subtab.replace(" ", "_")
        refused(page, tab, editors[subtab])
        upload_to_editor(page, field, files)
        stroke(page, field)
    elif subtab == "inpaint upload":
        refused(page, tab, "No picture to inpaint")
        upload_image(page, "img2img_upload_image", files, "Image")
        refused(page, tab, "No mask")
        upload_image(page, "img2img_upload_mask", files, "Mask (white = change)")
        page.locator("#img2img_upload_mask input[type=file]").set_input_files(files["mask.png"])
        page.wait_for_timeout(500)
    elif subtab == "batch":
        refused(page, tab, "Batch: upload some pictures or give an input folder")
        page.locator("#img2img_batch_input_dir input, #img2img_batch_input_dir textarea").first.fill(
            "/no/such/folder")
        refused(page, tab, "Batch input folder not found: /no/such/folder")
        page.locator("#img2img_batch_input_dir input, #img2img_batch_input_dir textarea").first.fill("")
        batch_with_text_files(page, "img2img_batch_files", files)
        small_job(page, tab, "a batch with a text file in it")
        refused(page, tab, "notes.png is not an image this app can read")
        # Gradio's file list adds to what it holds; emptied first so the text file goes.
        page.locator("#img2img_batch_files button[aria-label='Clear']").click()
        page.locator("#img2img_batch_files input[type=file]").set_input_files(
            [files["picture.png"], files["second.png"]])
        page.wait_for_timeout(800)
        page.locator("#img2img_batch_mask_files input[type=file]").set_input_files([files["mask.png"]])
        page.wait_for_timeout(800)
    walk = Walk(page, root)
    walk.everything()
    if subtab in ("inpaint", "inpaint sketch", "inpaint upload", "batch"):
        Walk(page, "#img2img_inpaint_controls").everything()
    generate(page, tab, f"after the walk, img2img {subtab}")


def walk_controlnet(page, files: dict) -> None:
    tab = "controlnet"
    walk = walk_generation_tab(page, tab, files)
    walk.buttons(r"_(swap_size|random_seed|reuse_seed|random_subseed|reuse_subseed|styles_refresh|"
                 r"lora_refresh|refresh_models|interrupt|skip)$")
    preview_maps(page, "controlnet_cn0", files)
    # A unit enabled with its picture and the demo model; then from a picture without one.
    page.locator("#controlnet_cn0_enabled input").check()
    choose(page, "controlnet_cn0_model", "demo-controlnet")
    choose(page, "controlnet_cn0_module", "canny")
    text = generate(page, tab, "controlled by canny")
    assert "ControlNet 0" in text
    page.locator("#controlnet_start_from").get_by_label("Picture (img2img)").check()
    small_job(page, tab, "from no picture")
    refused(page, tab, "No picture")
    upload_to_editor(page, "controlnet_picture", files)
    Walk(page, "#tab_controlnet").controls()  # the picture's denoising strength
    generate(page, tab, "from a picture, controlled")
    page.locator("#controlnet_start_from").get_by_label("Picture with a painted mask (inpaint)").check()
    refused(page, tab, "Nothing is painted")
    page.wait_for_timeout(1000)  # the editor takes its brush for the new mode
    stroke(page, "controlnet_picture")
    generate(page, tab, "inpainted, controlled")
    page.locator("#controlnet_cn0_enabled input").uncheck()
    page.locator("#controlnet_start_from").get_by_label("Noise (txt2img)").check()
    interrupt_and_skip(page, tab)
    generate(page, tab, "after the walk, ControlNet")


def walk_extras(page, files: dict) -> None:
    message = page.locator("#extras_message")
    page.click("#extras_generate")
    message.get_by_text("No image").wait_for()
    upload_image(page, "extras_image", files, "Source")
    walk = Walk(page, "#tab_extras", dropdown_picks=4)
    walk.everything()  # the Batch and "Scale to" tabs are left open by the walk
    # Batch: a picture and a text file, then good pictures only.
    page.click("#extras_batch_tab-button")
    page.click("#extras_generate")
    message.get_by_text("No image").wait_for()
    batch_with_text_files(page, "extras_batch_files", files)
    page.click("#extras_generate")
    message.get_by_text("notes.png is not an image this app can read").wait_for()
    page.locator("#extras_batch_files button[aria-label='Clear']").click()
    page.locator("#extras_batch_files input[type=file]").set_input_files(
        [files["picture.png"], files["second.png"]])
    page.wait_for_timeout(800)
    page.click("#extras_generate")
    page.wait_for_function("() => document.querySelector('#extras_info textarea')?.value.includes('x')")
    # Scale to, with a size that cannot be: said by name.
    page.click("#extras_single_tab-button")
    page.click("#extras_scale_to_tab-button")
    page.locator("#extras_upscaling_resize_w input").fill("0")
    page.click("#extras_generate")
    message.get_by_text("width must be a whole number").wait_for()
    page.locator("#extras_upscaling_resize_w input").fill("")
    page.click("#extras_generate")
    message.get_by_text("Width is empty").wait_for()
    page.locator("#extras_upscaling_resize_w input").fill("96")
    page.locator("#extras_upscaling_resize_h input").fill("80")
    page.click("#extras_generate")
    page.wait_for_function("() => document.querySelector('#extras_info textarea')?.value.includes('96x80')")
    # A standard upscaler that is not downloaded: offered; the download fails here (no network).
    page.click("#extras_scale_by_tab-button")
    set_number(page, "extras_upscaling_resize", 2)
    choose(page, "extras_upscaler_1", "R-ESRGAN 4x+")
    page.click("#extras_generate")
    page.locator("#extras_model_offer").get_by_text("Not downloaded yet").wait_for()
    page.click("#extras_model_download")
    page.locator("#extras_model_download_progress").get_by_text("Download failed").wait_for(timeout=60_000)
    for name in ("tiny-x4", "Lanczos"):
        choose(page, "extras_upscaler_1", name)
        page.click("#extras_generate")
        page.wait_for_function(
            "(name) => document.querySelector('#extras_info textarea')?.value.includes(name)", arg=name)


def walk_pnginfo(page, files: dict) -> None:
    table = page.locator("#pnginfo_html")
    # Send to, with nothing loaded: nothing happens, nothing breaks.
    Walk(page, "#tab_pnginfo").buttons(r"^pnginfo_send_to_")
    page.click("#tab_pnginfo-button")
    upload_image(page, "pnginfo_image", files, "Source")
    table.get_by_text("holds no generation parameters").wait_for()
    upload = page.locator("#pnginfo_image input[type=file]")
    upload.set_input_files(files["with-parameters.png"])
    table.get_by_text("Negative prompt").wait_for()
    Walk(page, "#tab_pnginfo").everything()
    for target, shows in (("txt2img", "#txt2img_prompt"), ("img2img", "#img2img_image img"),
                          ("inpaint", "#img2img_inpaint canvas"), ("extras", "#extras_image img")):
        page.click("#tab_pnginfo-button")
        page.click(f"#pnginfo_send_to_{target}")
        page.locator(shows).first.wait_for()
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea')?.value === 'a walked picture'")
    page.click("#tab_txt2img-button")
    generate(page, "txt2img", "a walked picture")


def walk_merger(page, files: dict) -> None:
    Walk(page, "#tab_modelmerger").everything()
    page.click("#modelmerger_merge")   # no model chosen (the demo server has no single-file one)
    page.locator("#modelmerger_result").get_by_text("choose the primary model").wait_for()


def walk_history(page, files: dict) -> None:
    page.click("#tab_txt2img-button")
    generate(page, "txt2img", "a picture for history")
    page.click("#tab_history-button")
    page.get_by_text("Page 1 of").wait_for()
    walk = Walk(page, "#tab_history")
    walk.everything()
    walk.buttons(r"^history_(refresh|newer|older)$")
    # A change of kind goes back to the first page (the buttons may have left another one shown).
    page.locator("#history_kind").get_by_label("txt2img", exact=True).check()
    page.locator("#history_kind").get_by_label("All").check()
    page.get_by_text("Page 1 of").wait_for()
    # Send to with nothing chosen, then with the newest picture.
    Walk(page, "#tab_history").buttons(r"^history_send_to_")
    page.locator("#history_gallery .thumbnail-item").first.click()
    page.keyboard.press("Escape")
    for target, shows in (("txt2img", "#txt2img_prompt"), ("img2img", "#img2img_image img"),
                          ("inpaint", "#img2img_inpaint canvas"), ("extras", "#extras_image img")):
        page.click("#tab_history-button")
        # Chosen once, the picture stays chosen when the tab is shown again.
        page.wait_for_function("() => document.querySelector('#history_infotext textarea')?.value")
        page.click(f"#history_send_to_{target}")
        page.locator(shows).first.wait_for()
    page.click("#tab_history-button")
    for kind in ("Grids", "Extras", "img2img", "txt2img", "All"):
        page.locator("#history_kind").get_by_label(kind, exact=True).check()
        page.wait_for_timeout(300)
    page.click("#history_refresh")
    page.get_by_text("Page 1 of").wait_for()


def walk_extensions(page, files: dict) -> None:
    walk = Walk(page, "#tab_extensions")
    walk.everything()
    page.click("#extensions_apply")  # nothing changed (each box was toggled back)
    page.locator("#extensions_message").get_by_text("Saved").wait_for()
    walk.buttons(r"^extensions_refresh$")
    result = page.locator("#extension_install_result")
    url = page.locator("#extension_install_url textarea, #extension_install_url input").first
    for typed, words in (("", "Enter the URL"), ("not a url", "Not a repository URL"),
                         ("-oProxyCommand=evil", "Not a repository URL"),
                         ("/no/such/repository", "the folder does not exist"),
                         ("https://127.0.0.1:9/someone/ext.git", "Could not clone")):
        url.fill(typed)
        page.click("#extension_install")
        try:
            result.get_by_text(words).wait_for(timeout=30_000)
        except PlaywrightTimeout:
            raise AssertionError(f"installing {typed!r}: expected {words!r}, got {result.inner_text()!r}") from None
    url.fill("https://example.invalid/ext.git")
    page.locator("#extension_install_name textarea, #extension_install_name input").first.fill("glow")
    page.click("#extension_install")
    result.get_by_text("already installed").wait_for(timeout=30_000)
    page.click("#extension_update")
    page.locator("#extension_update_result").get_by_text("Choose the extension").wait_for()


def walk_settings(page, files: dict) -> None:
    search = page.locator("#settings_search textarea, #settings_search input").first
    result = page.locator("#settings_result")
    page.click("#settings_apply")
    result.get_by_text("Nothing changed").wait_for()
    search.fill("zebra crossing")
    page.locator("#settings_no_match").wait_for()
    search.fill("steps")
    page.locator("#setting_ui_txt2img_steps").wait_for()
    search.fill("")
    page.locator("#setting_samples_save").wait_for()
    walk = Walk(page, "#tab_settings", dropdown_picks=2)
    walk.everything()
    page.click("#settings_apply")
    try:
        result.get_by_text("Nothing changed").wait_for(timeout=20_000)
    except PlaywrightTimeout:
        raise AssertionError(f"every change was undone, yet Apply says {result.inner_text()!r}") from None
    # A value out of its range, typed and applied: refused by name, nothing saved.
    box = page.locator("#setting_ui_img2img_steps input[type=number]")
    original = box.input_value()
    set_number(page, "setting_ui_steps_max", 10)
    page.click("#settings_apply")
    result.get_by_text("Not saved").wait_for()
    set_number(page, "setting_ui_steps_max", 150)
    box.fill(original)
    page.click("#settings_apply")
    page.wait_for_timeout(500)


WALKS = {
    "txt2img": ("txt2img", walk_txt2img),
    "checkpoint bar": ("txt2img", walk_checkpoint_bar),
    "img2img": ("img2img", walk_img2img),
    **{f"img2img: {name}": ("img2img", lambda page, files, name=name: walk_img2img_subtab(page, files, name))
       for name in IMG2IMG_SUBTABS if name != "img2img"},
    "ControlNet": ("controlnet", walk_controlnet),
    "Extras": ("extras", walk_extras),
    "PNG Info": ("pnginfo", walk_pnginfo),
    "Checkpoint Merger": ("modelmerger", walk_merger),
    "History": ("history", walk_history),
    "Extensions": ("extensions", walk_extensions),
    "Settings": ("settings", walk_settings),
}


@pytest.mark.parametrize("name", list(WALKS))
def test_walk_every_control_of_the_tab_without_a_server_error(page, demo_server, seen, files,
                                                              restored_options, name):
    tab, walk = WALKS[name]
    page.set_default_timeout(20_000)
    log_start = len(demo_server.log())
    open_tab(page, demo_server.url, tab)
    try:
        walk(page, files)
        # Nothing left running by itself: the page goes quiet (1.5 s without a request) within
        # 15 s. A finite burst is fine (an image editor uploads its layers once it has drawn a
        # picture sent to it, later under load); an event loop never stops.
        looping = []
        for _ in range(10):
            before = len(seen.responses)
            page.wait_for_timeout(1500)
            looping = seen.responses[before:]
            if not looping:
                break
    finally:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{re.sub(r'[^a-z0-9]+', '-', name.lower())}.png"), full_page=True)
        log = demo_server.log()[log_start:]
        tracebacks = log.count("Traceback")
        print(f"\n{name}: {len(seen.responses)} responses, {len(seen.server_errors)} with status >= 500, "
              f"{len(seen.page_errors)} page errors, {len(seen.console_errors)} console errors, "
              f"{tracebacks} tracebacks in the server log")
    assert seen.server_errors == [], f"{name}: {seen.server_errors}"
    assert looping == [], f"{name}: the page kept sending requests while idle: {looping[:6]}"
    assert seen.page_errors == [], f"{name}: {seen.page_errors}"
    assert page.locator(".toast-body").count() == 0, page.locator(".toast-body").all_inner_texts()
    # A failure the browser could not see as a status (the answer had begun) is in the log.
    assert tracebacks == 0, log


@pytest.mark.parametrize("tab", ("txt2img", "img2img", "controlnet"))
def test_two_quick_moves_of_the_steps_slider_leave_the_page_quiet(page, demo_server, seen, tab):
    """Each move updates both token counters once; nothing keeps running afterwards (two
    always_last handlers on the slider used to re-run each other for ever)."""
    open_tab(page, demo_server.url, tab)
    page.locator(f"#{tab}_prompt textarea").fill("a cat")
    page.locator(f"#{tab}_prompt_token_counter").get_by_text("2/75").wait_for()
    slider = page.locator(f"#{tab}_steps input[type=range]")
    box = slider.bounding_box()
    for fraction in (0.25, 0.7):
        page.mouse.click(box["x"] + box["width"] * fraction, box["y"] + box["height"] / 2)
    page.wait_for_timeout(1500)
    before = len(seen.responses)
    page.wait_for_timeout(2000)
    assert seen.responses[before:] == []
    assert page.locator(f"#{tab}_prompt_token_counter").inner_text() == "2/75"
