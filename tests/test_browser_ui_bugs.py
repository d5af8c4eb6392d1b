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


