"""In the browser: picking a standard model that is not downloaded yet offers its download with
the file, its size and its folder; with no host to reach, Download says so and writes nothing.
(The test server's GitHub endpoint points at a closed port: see conftest.py.)"""


def test_choosing_a_missing_standard_upscaler_offers_its_download(page, demo_server):
    page.goto(demo_server.url)
    page.get_by_role("tab", name="Extras").click()
    page.locator("#extras_upscaler_1 input").click()
    page.get_by_role("option", name="R-ESRGAN 4x+", exact=True).click()
    offer = page.locator("#extras_model_offer_text")
    offer.get_by_text("RealESRGAN_x4plus.pth", exact=True).wait_for()
    text = offer.inner_text()
    assert "R-ESRGAN 4x+" in text and "67 MB" in text and "models/RealESRGAN" in text
    page.click("#extras_model_download")
    page.locator("#extras_model_download_progress").get_by_text("Could not reach").wait_for()
    assert "Download failed" in page.locator("#extras_model_download_progress").inner_text()
    folder = demo_server.data_dir / "models" / "RealESRGAN"
    assert not folder.exists() or not any(folder.iterdir())
    # Back to a resampling upscaler: the offer goes away.
    page.locator("#extras_upscaler_1 input").click()
    page.get_by_role("option", name="Lanczos", exact=True).click()
    page.wait_for_function("() => !document.querySelector('#extras_model_offer')?.checkVisibility()")


def test_a_job_needing_a_missing_model_offers_it_and_the_next_job_works(page, demo_server):
    from tests.test_browser import prepare_small_job, wait_for_infotext

    prepare_small_job(page, demo_server.url, "hires with a standard upscaler")
    page.locator("#txt2img_ext_hires_fix").get_by_text("Hires. fix", exact=True).first.click()
    page.locator("#txt2img_ext_hires_fix_upscaler input").click()
    page.get_by_role("option", name="SwinIR 4x", exact=True).click()
    page.locator("#txt2img_ext_hires_fix_enabled input").check()
    page.click("#txt2img_generate")
    page.locator("#txt2img_model_offer_text").get_by_text("SwinIR_4x.pth", exact=True).wait_for()
    assert "models/SwinIR" in page.locator("#txt2img_model_offer_text").inner_text()
    assert "not downloaded yet" in page.locator("#txt2img_message").inner_text()
    page.locator("#txt2img_ext_hires_fix_enabled input").uncheck()
    page.click("#txt2img_generate")
    wait_for_infotext(page, "hires with a standard upscaler")
    page.wait_for_function("() => !document.querySelector('#txt2img_model_offer')?.checkVisibility()")
