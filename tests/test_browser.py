"""The UI in a real browser: Playwright drives Debian's Chromium against app.py on 127.0.0.1."""

import time

from engine.output.infotext import parse


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def prepare_small_job(page, url: str, prompt: str) -> None:
    page.goto(url)
    page.locator("#txt2img_prompt textarea").fill(prompt)
    set_number(page, "txt2img_steps", 3)
    set_number(page, "txt2img_width", 64)
    set_number(page, "txt2img_height", 64)
    # The model loads on the GPU lane at start; the dropdown shows it once it is there.
    page.wait_for_function(
        "() => document.querySelector('#sd_checkpoint input')?.value.startsWith('demo-tiny')")


def wait_for_infotext(page, containing: str) -> str:
    page.wait_for_function(
        "text => document.querySelector('#txt2img_infotext textarea')?.value.includes(text)",
        arg=containing)
    return page.locator("#txt2img_infotext textarea").input_value()


def test_type_a_prompt_click_generate_and_see_the_image_with_its_infotext(page, demo_server):
    prepare_small_job(page, demo_server.url, "a lighthouse at dusk")
    page.click("#txt2img_generate")
    text = wait_for_infotext(page, "Steps: 3")
    prompt, _, params = parse(text)
    assert prompt == "a lighthouse at dusk"
    assert params["Size"] == "64x64"
    assert (params["Sampler"], params["Schedule type"]) == ("DPM++ 2M", "Karras")  # the default
    image = page.locator("#txt2img_gallery img").first
    image.wait_for()
    # The gallery serves PNG (not webp), so a downloaded image keeps its metadata.
    source = image.get_attribute("src")
    fetched = page.request.get(source)
    assert fetched.headers["content-type"] == "image/png"
    assert b"parameters" in fetched.body()[:400] and b"a lighthouse at dusk" in fetched.body()[:600]


def test_ctrl_enter_generates(page, demo_server):
    prepare_small_job(page, demo_server.url, "ctrl enter works")
    page.locator("#txt2img_prompt textarea").press("Control+Enter")
    text = wait_for_infotext(page, "ctrl enter works")
    assert "Steps: 3" in text


def test_a_bad_input_shows_a_message_and_the_next_job_works(page, demo_server):
    prepare_small_job(page, demo_server.url, "x" * 20001)
    page.click("#txt2img_generate")
    message = page.locator("#txt2img_message")
    message.get_by_text("prompt is too long").wait_for()
    page.locator("#txt2img_prompt textarea").fill("after the error")
    page.click("#txt2img_generate")
    wait_for_infotext(page, "after the error")
    assert "too long" not in message.inner_text()


def test_seed_buttons(page, demo_server):
    prepare_small_job(page, demo_server.url, "seed buttons")
    seed = page.locator("#txt2img_seed input")
    seed.fill("1234")
    page.click("#txt2img_generate")
    text = wait_for_infotext(page, "seed buttons")
    assert parse(text)[2]["Seed"] == "1234"
    page.click("#txt2img_random_seed")
    page.wait_for_function("() => document.querySelector('#txt2img_seed input').value === '-1'")
    page.click("#txt2img_reuse_seed")
    page.wait_for_function("() => document.querySelector('#txt2img_seed input').value === '1234'")


def test_batch_gallery_shows_the_grid_and_each_images_infotext(page, demo_server):
    prepare_small_job(page, demo_server.url, "pick me")
    set_number(page, "txt2img_batch_size", 2)
    page.locator("#txt2img_seed input").fill("300")
    page.click("#txt2img_generate")
    wait_for_infotext(page, "pick me")
    thumbnails = page.locator("#txt2img_gallery .thumbnail-item")
    thumbnails.nth(2).wait_for()
    assert thumbnails.count() == 3  # the grid, then the two images
    thumbnails.nth(2).click()
    page.wait_for_function(
        "() => document.querySelector('#txt2img_infotext textarea').value.includes('Seed: 301')")


def test_swap_width_and_height(page, demo_server):
    page.goto(demo_server.url)
    set_number(page, "txt2img_width", 640)
    set_number(page, "txt2img_height", 256)
    page.click("#txt2img_swap_size")
    page.wait_for_function(
        "() => document.querySelector('#txt2img_width input[type=number]').value === '256'")
    assert page.locator("#txt2img_height input[type=number]").input_value() == "640"


def back_to_the_demo_model(page) -> None:
    """Pick the demo model in the checkpoint list and wait until it is loaded."""
    page.locator("#sd_checkpoint input").click()
    page.get_by_role("option", name="demo-tiny (built-in demo)").click()
    page.wait_for_function(
        "() => document.querySelector('#sd_checkpoint input').value.startsWith('demo-tiny')")


def test_switch_checkpoint_from_the_dropdown(page, demo_server):
    prepare_small_job(page, demo_server.url, "which model")
    try:
        page.locator("#sd_checkpoint input").click()
        page.get_by_role("option", name="tiny-folder").click()
        page.wait_for_function(
            "() => document.querySelector('#sd_checkpoint input').value.startsWith('tiny-folder [')")
        page.click("#txt2img_generate")
        assert "Model: tiny-folder," in wait_for_infotext(page, "which model")
    finally:
        back_to_the_demo_model(page)


def test_token_counter_follows_the_typing(page, demo_server):
    page.goto(demo_server.url)
    box = page.locator("#txt2img_prompt textarea")
    box.fill("a photo of a cat")
    counter = page.locator("#txt2img_prompt_token_counter")
    counter.get_by_text("5/75").wait_for()
    box.fill(", ".join(["a red cat"] * 30))
    counter.get_by_text("/150").wait_for()


def test_a_lora_card_inserts_the_tag_and_the_lora_is_used(page, demo_server):
    prepare_small_job(page, demo_server.url, "a cat")
    page.click("#txt2img_extra_networks_toggle")
    page.locator("#txt2img_lora_cards .en-search").fill("glow")
    page.locator("#txt2img_lora_cards .en-card[data-name='glowing-edges']").click()
    page.wait_for_function(
        "() => document.querySelector('#txt2img_prompt textarea').value === 'a cat <lora:glowing-edges:1>'")
    page.click("#txt2img_generate")
    assert 'Lora hashes: "glowing-edges: ' in wait_for_infotext(page, "Lora hashes")


def test_save_a_style_then_use_it(page, demo_server):
    prepare_small_job(page, demo_server.url, "{prompt}, in the rain")
    page.locator("#txt2img_style_save_box").get_by_text("Save prompts as a style").click()
    page.locator("#txt2img_style_name input, #txt2img_style_name textarea").fill("Rainy")
    page.click("#txt2img_style_save")
    page.locator("#txt2img_style_note").get_by_text("Saved style").wait_for()
    assert "Rainy" in (demo_server.data_dir / "styles.csv").read_text()
    page.locator("#txt2img_prompt textarea").fill("a lamp post")
    page.locator("#txt2img_styles input").click()
    page.get_by_role("option", name="Rainy").click()
    page.click("#txt2img_generate")
    assert wait_for_infotext(page, "in the rain").startswith("a lamp post, in the rain\n")


def test_settings_tab_applies_and_persists(page, demo_server):
    page.goto(demo_server.url)
    page.get_by_role("tab", name="Settings").click()
    emphasis = page.locator("#setting_emphasis input")
    emphasis.click()
    page.get_by_role("option", name="No norm").click()
    page.click("#settings_apply")
    page.locator("#settings_result").get_by_text("Saved 1 setting").wait_for()
    import httpx
    options = httpx.get(demo_server.url + "/sdapi/v1/options").json()
    try:
        assert options["emphasis"] == "No norm"
    finally:
        httpx.post(demo_server.url + "/sdapi/v1/options", json={"emphasis": "Original"})


def test_extension_fields_are_rendered_and_reach_the_extension(page, demo_server):
    prepare_small_job(page, demo_server.url, "with glow")
    page.locator("#txt2img_ext_glow").get_by_text("Glow", exact=True).first.click()
    page.locator("#txt2img_ext_glow_enabled input").check()
    page.click("#txt2img_generate")
    text = wait_for_infotext(page, "with glow")
    assert "Glow: 40" in text
    page.click("#tab_extensions-button")
    table = page.locator("#extensions_table")
    table.get_by_text("broken_import", exact=True).wait_for()
    assert "failed" in table.inner_text() and "broken on purpose" in table.inner_text()
    assert "tiling" in table.inner_text()


def test_disabling_an_extension_hides_its_fields_at_once_and_on_new_pages(page, demo_server):
    page.goto(demo_server.url)
    glow = page.locator("#txt2img_ext_glow").get_by_text("Glow", exact=True).first
    glow.wait_for()
    page.click("#tab_extensions-button")
    page.locator("#extensions_enabled").get_by_label("glow").uncheck()
    try:
        page.click("#extensions_apply")
        page.locator("#extensions_message").get_by_text("Saved").wait_for()
        page.click("#tab_txt2img-button")
        glow.wait_for(state="hidden")
        assert page.locator("#txt2img_ext_tiling").get_by_text("Tiling", exact=True).first.is_visible()
        page.reload()  # a new page gets the current state, not the one at start
        page.locator("#txt2img_ext_tiling").get_by_text("Tiling", exact=True).first.wait_for()
        glow.wait_for(state="hidden")
        page.click("#tab_extensions-button")
        page.locator("#extensions_enabled").get_by_label("glow").check()
        page.click("#extensions_apply")
        page.click("#tab_txt2img-button")
        glow.wait_for()
    finally:
        import httpx
        httpx.post(demo_server.url + "/sdapi/v1/options", json={"disabled_extensions": []})


def test_hires_fix_shows_the_target_size_live_and_upscales(page, demo_server):
    prepare_small_job(page, demo_server.url, "hires in the browser")
    page.locator("#txt2img_ext_hires_fix").get_by_text("Hires. fix", exact=True).first.click()
    summary = page.locator("#txt2img_ext_hires_fix_summary")
    summary.get_by_text("128x128").wait_for()
    assert "from 64x64 to" in summary.inner_text()
    set_number(page, "txt2img_ext_hires_fix_scale", 1.5)
    summary.get_by_text("96x96").wait_for()
    page.locator("#txt2img_ext_hires_fix_enabled input").check()
    page.click("#txt2img_generate")
    text = wait_for_infotext(page, "hires in the browser")
    assert "Hires upscale: 1.5" in text and "Size: 64x64" in text


def test_checkpoint_chosen_in_settings_is_loaded(page, demo_server):
    import httpx

    page.goto(demo_server.url)
    page.get_by_role("tab", name="Settings").click()
    try:
        page.locator("#setting_sd_model_checkpoint input").click()
        page.get_by_role("option", name="tiny-folder").click()
        page.click("#settings_apply")
        page.locator("#settings_result").get_by_text("Loading checkpoint tiny-folder").wait_for()
        deadline = time.time() + 60
        while not httpx.get(demo_server.url + "/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-folder"):
            assert time.time() < deadline, "the checkpoint chosen in Settings was not loaded"
            time.sleep(0.2)
        page.reload()
        page.wait_for_function(
            "() => (document.querySelector('#sd_checkpoint input') || {value: ''}).value.startsWith('tiny-folder')")
    finally:
        httpx.post(demo_server.url + "/sdapi/v1/options", json={"sd_model_checkpoint": "demo-tiny"}, timeout=60)


def test_a_pasted_infotexts_rng_shows_as_an_override_and_makes_the_picture_with_it(page, demo_server):
    prepare_small_job(page, demo_server.url, "")
    page.locator("#txt2img_prompt textarea").fill(
        "an NV picture\nSteps: 3, Sampler: Euler a, CFG scale: 6, Seed: 8, Size: 64x64, RNG: NV, Clip skip: 2")
    page.click("#txt2img_paste")
    overrides = page.locator("#txt2img_override_settings")
    overrides.wait_for(state="visible")
    assert "RNG: NV" in overrides.inner_text() and "Clip skip: 2" in overrides.inner_text()
    page.click("#txt2img_generate")
    params = parse(wait_for_infotext(page, "an NV picture"))[2]
    assert (params["RNG"], params["Clip skip"], params["Seed"]) == ("NV", "2", "8")
    # An infotext without them clears the entries (A1111's default GPU noise is this UI's too).
    page.locator("#txt2img_prompt textarea").fill(
        "a GPU picture\nSteps: 3, Sampler: Euler a, CFG scale: 6, Seed: 8, Size: 64x64")
    page.click("#txt2img_paste")
    overrides.wait_for(state="hidden")
    page.click("#txt2img_generate")
    assert "RNG" not in parse(wait_for_infotext(page, "a GPU picture"))[2]
