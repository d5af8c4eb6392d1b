"""The X/Y/Z plot in a real browser: picked from txt2img's Script dropdown, its fields filled in,
the estimate line read, and the grid generated with its infotext."""

from engine.output.infotext import parse
from tests.test_browser import prepare_small_job, wait_for_infotext


def choose(page, elem_id: str, label: str) -> None:
    box = page.locator(f"#{elem_id} input")
    box.click()
    page.locator(f"#{box.get_attribute('aria-controls')}").get_by_role("option", name=label, exact=True).click()


def fill(page, elem_id: str, text: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(text)
    box.press("Tab")


def test_pick_the_plot_fill_its_axes_and_get_the_grid(page, demo_server):
    prepare_small_job(page, demo_server.url, "a plotted lighthouse")
    choose(page, "txt2img_script", "X/Y/Z plot")
    fields = "txt2img_script_xyz_plot"
    page.locator(f"#{fields}_help").get_by_text("Not available yet").wait_for()
    choose(page, f"{fields}_x_type", "Steps")
    fill(page, f"{fields}_x_values", "1-2")
    choose(page, f"{fields}_y_type", "CFG Scale")
    fill(page, f"{fields}_y_values", "3, 7")
    page.locator(f"#{fields}_estimate").get_by_text("4 images (2×2×1 cells × 1), + grid").wait_for()
    # The values lists are the API's: the page types values instead.
    assert page.locator(f"#{fields}_x_values_dropdown").count() == 0
    page.click("#txt2img_generate")
    text = wait_for_infotext(page, "X Type: Steps")
    prompt, _, params = parse(text)
    assert prompt == "a plotted lighthouse"
    assert (params["X Values"], params["Y Type"], params["Y Values"]) == ("1-2", "CFG Scale", "3, 7")
    assert page.locator("#txt2img_gallery img").count() >= 1
    # A bad value is refused with the axis named, and the page keeps working.
    fill(page, f"{fields}_y_values", "3, lots")
    page.click("#txt2img_generate")
    page.locator("#txt2img_message").get_by_text("Y axis (CFG Scale): 'lots' is not a number").wait_for()
    choose(page, "txt2img_script", "None")
