"""UI bugs found by walking every tab in Chromium, each checked in a real browser against
app.py --demo (the shared demo server)."""

import pytest
from PIL import Image

from tests.test_browser import set_number
from tests.test_browser_img2img import open_tab, wait_for_infotext

GENERATION_TABS = ("txt2img", "img2img", "controlnet")
VIEWPORT = {"width": 1280, "height": 1000}


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "picture.png"
    Image.effect_noise((64, 64), 60).convert("RGB").save(path)
    return str(path)


@pytest.fixture
def server_errors(page):
    """Every response of status 500 or more the page gets, as (status, url)."""
    failed = []
    page.on("response", lambda response: failed.append((response.status, response.url))
            if response.status >= 500 else None)
    return failed


def small_job(page, tab: str, prompt: str, picture: str) -> None:
    page.locator(f"#{tab}_prompt textarea").fill(prompt)
    for name, value in (("steps", 3), ("width", 64), ("height", 64)):
        set_number(page, f"{tab}_{name}", value)
    if tab == "img2img":
        page.locator("#img2img_image input[type=file]").set_input_files(picture)
        page.locator("#img2img_image img").wait_for()


def choose_preprocessor(page, unit: str, name: str) -> None:
    page.locator(f"#{unit}_module input").click()
    page.get_by_role("option", name=name, exact=True).click()
    page.wait_for_timeout(300)  # the sliders follow the choice


@pytest.mark.parametrize("tab", GENERATION_TABS)
def test_switching_preprocessors_on_a_disabled_unit_never_blocks_generate(page, demo_server, tab,
                                                                          picture, server_errors):
    open_tab(page, demo_server.url, tab)
    if tab != "controlnet":
        page.locator(f"#{tab}_controlnet").get_by_text("ControlNet", exact=True).first.click()
    unit = f"{tab}_cn0"
    for name in ("canny", "none", "scribble", "none", "canny", "scribble"):
        choose_preprocessor(page, unit, name)
    assert not page.locator(f"#{unit}_enabled input").is_checked()
    small_job(page, tab, f"after switching preprocessors in {tab}", picture)
    page.click(f"#{tab}_generate")
    wait_for_infotext(page, tab, f"after switching preprocessors in {tab}")
    page.locator(f"#{tab}_gallery img").first.wait_for()
    assert "ControlNet" not in page.locator(f"#{tab}_infotext textarea").input_value()

    page.click(f"#{unit}_preview")
    page.locator(f"#{unit}_message").get_by_text("No control image").wait_for()
    assert server_errors == []


@pytest.mark.parametrize("tab", GENERATION_TABS)
def test_a_refused_job_says_why_in_the_first_screen_beside_the_parameters(browser, demo_server, tab,
                                                                          picture):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        open_tab(page, demo_server.url, tab)
        small_job(page, tab, "a size the engine refuses", picture)
        set_number(page, f"{tab}_width", 100)  # not a multiple of 8
        page.evaluate("window.scrollTo(0, 0)")
        page.click(f"#{tab}_generate")
        error = page.locator(f"#{tab}_message").get_by_text("width must be a multiple of 8")
        error.wait_for()
        assert page.evaluate("window.scrollY") == 0
        box = error.bounding_box()
        assert 0 <= box["y"] and box["y"] + box["height"] <= VIEWPORT["height"], box
        assert 0 <= box["x"] and box["x"] + box["width"] <= VIEWPORT["width"], box

        gallery = page.locator(f"#{tab}_gallery").bounding_box()
        prompt = page.locator(f"#{tab}_prompt").bounding_box()
        generate = page.locator(f"#{tab}_generate").bounding_box()
        assert gallery["y"] < VIEWPORT["height"] - 100, "the gallery starts in the first screen"
        assert gallery["x"] >= prompt["x"] + prompt["width"], "results to the right of the parameters"
        assert generate["y"] < box["y"] < gallery["y"], "the error sits under Generate, above the gallery"
    finally:
        context.close()


def _number_boxes_typed(page, tab: str, values: tuple[str, ...]) -> set[str]:
    """Type each value into every number box of the tab (opening its accordions, sub-tabs and
    the seed's extra options on the way); returns the ids of the boxes typed into."""
    root = page.locator(f"#tab_{tab}")
    typed: set[str] = set()
    opened: set[str] = set()
    while True:
        for box in root.locator("input[type=number]").all():
            owner = box.evaluate("e => e.closest('[id]').id")
            if owner in typed or not box.is_visible():
                continue
            typed.add(owner)
            for value in values:
                box.click()
                box.press("Control+a")
                box.press_sequentially(value, delay=40)  # one change per keystroke, as a user types
                page.wait_for_timeout(150)
            box.press("Tab")
        closed = [e for e in root.locator(".label-wrap:not(.open), button[role=tab][aria-selected=false], "
                                          f"#{tab}_subseed_show input").all()
                  if e.is_visible() and e.evaluate("e => e.closest('[id]').id") not in opened]
        if not closed:
            return typed
        opened.add(closed[0].evaluate("e => e.closest('[id]').id"))
        closed[0].click()
        page.wait_for_timeout(300)


@pytest.mark.parametrize("tab", ("txt2img", "img2img", "controlnet", "extras"))
def test_typing_out_of_range_numbers_never_gets_a_server_error(page, demo_server, tab, server_errors):
    open_tab(page, demo_server.url, tab)
    typed = _number_boxes_typed(page, tab, ("-5", "99999", "0"))
    page.wait_for_timeout(1000)  # the last events answer
    assert len(typed) >= 5, typed
    assert server_errors == [], f"{len(server_errors)} server errors while typing into {sorted(typed)}"
    assert page.locator(".toast-body").count() == 0, page.locator(".toast-body").all_inner_texts()
    # The boxes clamp what was typed once left, and the tab still generates.
    if tab == "txt2img":
        assert page.locator("#txt2img_steps input[type=number]").input_value() == "1"
        small_job(page, tab, "after typing out of range", "")
        page.locator("#txt2img_seed input").fill("-1")
        page.click("#txt2img_generate")
        wait_for_infotext(page, tab, "after typing out of range")


NOT_A_PICTURE = "not an image this app can read"


@pytest.mark.parametrize("tab, field, label", [("img2img", "img2img_image", "Image for img2img"),
                                               ("extras", "extras_image", "Source"),
                                               ("pnginfo", "pnginfo_image", "Source")])
def test_a_text_file_named_png_gets_one_message_naming_the_field(page, demo_server, tmp_path, tab, field,
                                                                 label):
    notes = tmp_path / "notes.png"
    notes.write_text("shopping list: milk, eggs\n" * 20)
    open_tab(page, demo_server.url, tab)
    page.locator(f"#{field} input[type=file]").set_input_files(str(notes))
    message = page.locator(f"#{field}_upload_message")
    message.get_by_text(f"{label} is {NOT_A_PICTURE}").wait_for()
    page.locator(f"#{field} img").wait_for(state="detached")  # no broken preview left
    generate = {"img2img": "#img2img_generate", "extras": "#extras_generate"}.get(tab)
    if generate:
        for _ in range(2):  # the same mistake twice: still one message, no toasts piling up
            page.click(generate)
            page.wait_for_timeout(1500)
    texts = page.evaluate("""(words) => {
        const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
        const found = [];
        while (walker.nextNode()) if (walker.currentNode.textContent.includes(words)) found.push(walker.currentNode.textContent);
        return found;
    }""", NOT_A_PICTURE)
    assert len(texts) == 1, texts
    assert page.locator(".toast-body").count() == 0, page.locator(".toast-body").all_inner_texts()
    assert page.locator(f"#tab_{tab}").get_by_text("Error", exact=True).count() == 0

    good = tmp_path / "good.png"
    Image.effect_noise((64, 64), 60).convert("RGB").save(good)
    page.locator(f"#{field} input[type=file]").set_input_files(str(good))
    page.locator(f"#{field} img").wait_for()
    message.get_by_text(NOT_A_PICTURE).wait_for(state="detached")


SEND_BUTTONS = {"txt2img": ("img2img", "inpaint", "extras"), "img2img": ("img2img", "inpaint", "extras"),
                "pnginfo": ("txt2img", "img2img", "inpaint", "extras"),
                "history": ("txt2img", "img2img", "inpaint", "extras")}
NOTHING_TO_SEND = {"txt2img": "generate a picture first", "img2img": "generate a picture first",
                   "pnginfo": "upload a picture first", "history": "click a picture first"}


@pytest.mark.parametrize("tab", list(SEND_BUTTONS))
def test_send_to_with_nothing_to_send_says_so_instead_of_failing(page, demo_server, tab, server_errors):
    # A handler that sent nothing returned an empty dict, which Gradio counts as one value for
    # many outputs: every such click was an HTTP 500 and an "Error" toast.
    open_tab(page, demo_server.url, tab)
    message = page.locator(f"#{tab}_message")
    for target in SEND_BUTTONS[tab]:
        with page.expect_response(lambda r: "/run/predict" in r.url) as answer:
            page.click(f"#{tab}_send_to_{target}")
        assert answer.value.status == 200, target
        message.get_by_text(NOTHING_TO_SEND[tab]).wait_for()
        assert "Nothing to send" in message.inner_text()
        assert page.locator(f"#tab_{tab}-button").get_attribute("aria-selected") == "true"
    assert server_errors == []
    assert page.locator(".toast-body").count() == 0, page.locator(".toast-body").all_inner_texts()


def _pick_checkpoint(page, starting: str) -> None:
    box = page.locator("#sd_checkpoint input")
    box.click()
    options = page.locator(f"#{box.get_attribute('aria-controls')}").get_by_role("option")
    options.filter(has_text=starting).first.click()


def test_picking_a_checkpoint_whose_title_gains_its_hash_keeps_it_shown(page, demo_server, server_errors):
    # The page sends "input" twice for one pick. The repeat used to fail in Gradio (its name
    # without the hash was no longer a choice: "Error" beside the box), or, once the hash was
    # known, to end without an answer, which emptied the box.
    import shutil

    import httpx

    models = demo_server.data_dir / "models" / "Stable-diffusion"
    copy = models / "tiny-folder-fresh"
    shutil.copytree(models / "tiny-folder", copy)
    status = page.locator("#sd_checkpoint_status")
    try:
        page.goto(demo_server.url)
        page.click("#sd_checkpoint_refresh")
        for _ in range(2):  # unhashed the first time, hashed the second
            _pick_checkpoint(page, "tiny-folder-fresh")
            page.wait_for_function("() => /^tiny-folder-fresh \\[[0-9a-f]{10}\\]$/.test("
                                   "document.querySelector('#sd_checkpoint input').value)")
            page.wait_for_timeout(1500)  # the repeated event has answered
            assert page.locator("#sd_checkpoint input").input_value().startswith("tiny-folder-fresh [")
            assert "Error" not in status.inner_text()
            _pick_checkpoint(page, "demo-tiny")
            page.wait_for_function(
                "() => document.querySelector('#sd_checkpoint input').value.startsWith('demo-tiny')")
            page.wait_for_timeout(1500)
            assert page.locator("#sd_checkpoint input").input_value().startswith("demo-tiny")
        # A name that is not there (typed, or from an older list) is named, and the box goes back.
        page.locator("#sd_checkpoint input").fill("no-such-model")
        page.locator("#sd_checkpoint input").press("Enter")
        status.get_by_text("Checkpoint not found: 'no-such-model'").wait_for()
        page.wait_for_function(
            "() => document.querySelector('#sd_checkpoint input').value.startsWith('demo-tiny')")
        assert server_errors == []
        assert page.locator(".toast-body").count() == 0, page.locator(".toast-body").all_inner_texts()
    finally:
        httpx.post(demo_server.url + "/sdapi/v1/options", json={"sd_model_checkpoint": "demo-tiny"}, timeout=60)
        shutil.rmtree(copy)
        httpx.post(demo_server.url + "/sdapi/v1/refresh-checkpoints", timeout=60)


@pytest.mark.parametrize("tab, subtab, editor, label", [
    ("img2img", "img2img_tab_sketch", "img2img_sketch", "Sketch"),
    ("img2img", "img2img_tab_inpaint", "img2img_inpaint", "Paint the part to change"),
    ("controlnet", None, "controlnet_cn0_image", "Control image")])
def test_an_image_editor_refuses_a_file_that_is_no_picture_in_words(page, demo_server, tmp_path, tab, subtab,
                                                                     editor, label, server_errors):
    # Gradio's editor threw an uncaught error ("The source image could not be decoded") and
    # stayed empty without a word.
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    notes = tmp_path / "notes.png"
    notes.write_text("shopping list: milk, eggs\n" * 20)
    good = tmp_path / "good.png"
    Image.effect_noise((64, 64), 60).convert("RGB").save(good)
    open_tab(page, demo_server.url, tab)
    if subtab:
        page.click(f"#{subtab}-button")
    field = page.locator(f"#{editor}")
    field.locator("canvas").first.wait_for()
    page.wait_for_timeout(1500)  # the editor mounts its canvas before it takes an upload
    note = page.locator(f"#{editor}_upload_message")
    field.locator("input[type=file]").first.set_input_files(str(notes))
    note.get_by_text(f"{label} is {NOT_A_PICTURE} (PNG, JPEG, WEBP, ...): notes.png").wait_for()
    # Dropped on it: the same.
    page.evaluate("""([selector, text]) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([text], "dropped.png", { type: "image/png" }));
        document.querySelector(selector).dispatchEvent(
            new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
    }""", [f"#{editor} [data-testid=image]", "not a picture"])
    note.get_by_text("dropped.png").wait_for()
    field.locator("input[type=file]").first.set_input_files(str(good))
    note.get_by_text(NOT_A_PICTURE).wait_for(state="detached")
    page.wait_for_function("""(selector) => {  // the picture reached the editor: its zoom changed
        const zoom = document.querySelector(`${selector} .zoom-number`);
        return zoom && zoom.textContent.trim() !== '70%';
    }""", arg=f"#{editor}")
    assert errors == []
    assert server_errors == []


@pytest.mark.parametrize("source", ("pnginfo", "history"))
def test_a_picture_sent_to_inpaint_after_one_sent_to_img2img_is_drawn(page, demo_server, picture,
                                                                        source, server_errors):
    """PNG Info -> Send to img2img, back, -> Send to inpaint: the editor, first shown by that send,
    kept a canvas of no size and showed nothing. From History, coming back to the tab forgot the
    chosen picture while still showing it large, so Send to said to click one."""
    canvases = "() => [...document.querySelectorAll('#img2img_inpaint canvas')].map(c => c.width * c.height)"
    open_tab(page, demo_server.url, "txt2img")
    if source == "history":
        small_job(page, "txt2img", "a picture for history", picture)
        page.click("#txt2img_generate")
        wait_for_infotext(page, "txt2img", "a picture for history")
        page.click("#tab_history-button")
        page.locator("#history_gallery img").first.click()
        page.wait_for_function("() => document.querySelector('#history_infotext textarea')"
                               "?.value.includes('a picture for history')")
    else:
        page.click("#tab_pnginfo-button")
        page.locator("#pnginfo_image input[type=file]").set_input_files(picture)
        page.locator("#pnginfo_html").get_by_text("holds no generation parameters").wait_for()
    page.click(f"#{source}_send_to_img2img")
    page.locator("#img2img_image img").wait_for()
    page.click(f"#tab_{source}-button")
    if source == "history":  # coming back keeps the chosen picture chosen
        page.wait_for_timeout(1000)
        assert "a picture for history" in page.locator("#history_infotext textarea").input_value()
    page.click(f"#{source}_send_to_inpaint")
    page.wait_for_function(f"() => ({canvases})().length > 0 && ({canvases})().every(area => area > 0)")
    page.locator("#img2img_inpaint canvas").first.wait_for()
    assert page.locator("#img2img_tab_inpaint-button").get_attribute("aria-selected") == "true"
    assert server_errors == []
