"""The live preview method in a real browser: chosen in Settings > Live previews, kept across a
reload, and used by the next generation, whose preview (held on screen while the job waits at
it) is TAESD's full-size decode, not the eighth-size cheap one."""

from __future__ import annotations

import pytest

from tests.support.preview_files import published_taesd_decoder_state, tiny_taesd, write
from tests.support.server import InProcessServer
from tests.test_browser import prepare_small_job, set_number, wait_for_infotext
from tests.test_browser_settings import apply_and_read, open_settings
# Holds a job at each live preview until the test lets it go (test_users.py's, for any job here).
from tests.test_users import gate  # noqa: F401


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("previews")
    write(data / "models" / "VAE-approx" / "taesd_decoder.pth", published_taesd_decoder_state(tiny_taesd(seed=4)))
    with InProcessServer(data, "--demo") as app:
        yield app


def test_choose_taesd_in_settings_and_the_next_job_previews_with_it(page, server, gate):  # noqa: F811
    gate.job_id = None  # every job
    open_settings(page, server.url)
    page.locator("#setting_show_progress_type input").click()
    page.get_by_role("option", name="TAESD", exact=True).click()
    set_number(page, "setting_show_progress_every_n_steps", 1)
    apply_and_read(page, "Saved 2 settings")
    page.reload()
    page.click("#tab_settings-button")
    page.locator("#setting_show_progress_type").wait_for()
    assert page.locator("#setting_show_progress_type input").input_value() == "TAESD"
    assert server.ctx.engine.settings["show_progress_type"] == "TAESD"

    prepare_small_job(page, server.url, "a taesd preview")
    page.click("#txt2img_generate")
    gate.wait_held()
    # The job waits at its first preview: what the gallery shows now is that preview.
    page.wait_for_function(
        "() => [...document.querySelectorAll('#txt2img_gallery img')].some(img => img.naturalWidth === 64)")
    gate.open()
    assert "Steps: 3" in wait_for_infotext(page, "a taesd preview")
