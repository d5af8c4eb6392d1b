"""FLUX.1 in a real browser, with the files a user downloads (tests/support/flow_tree.py): pick the
transformer-only checkpoint, pick its text encoders and VAE in the "VAE / Text Encoder" picker,
generate, then PNG Info -> Send to txt2img -> Generate makes the same picture."""

from __future__ import annotations

import pytest

from engine.output.infotext import parse
from tests.support.flow_tree import write_flow_tree
from tests.support.server import InProcessServer
from tests.test_browser import set_number
from tests.test_browser_img2img import gallery_png, wait_for_infotext

MODULES = ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors")


@pytest.fixture(scope="module")
def flow_app(tmp_path_factory):
    data = tmp_path_factory.mktemp("browser-flow")
    _, configs = write_flow_tree(data)
    # Two T5 files (as users keep fp16 and fp8 side by side): the missing parts must be picked.
    encoders = data / "models" / "text_encoder"
    (encoders / "t5xxl_fp8_e4m3fn.safetensors").write_bytes((encoders / "t5xxl_fp16.safetensors").read_bytes())
    with InProcessServer(data, "--skip-load-model-at-start", config_root=configs) as server:
        yield server


def _pick(page, elem_id: str, option: str) -> None:
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill("")
    box.press_sequentially(option[:6])   # typing filters the list and opens it again after a pick
    page.get_by_role("option", name=option, exact=True).first.click(timeout=15_000)


def test_flux_with_picked_modules_generates_and_round_trips(page, flow_app, tmp_path):
    page.goto(flow_app.url)
    _pick(page, "sd_checkpoint", "flux1-dev.safetensors")
    # With two T5 files in the folder, the transformer alone cannot load: the message names what
    # is missing and the files that could be picked for it.
    page.locator("#sd_checkpoint_status").get_by_text("t5xxl_fp8_e4m3fn").wait_for()
    for name in MODULES:
        _pick(page, "sd_modules", name)
        page.keyboard.press("Escape")
    # The choice is kept; picking the checkpoint again loads it with these files.
    _pick(page, "sd_checkpoint", "flux1-dev.safetensors")
    models = flow_app.engine.models
    for _ in range(1200):   # the load runs on the lane; the page's status clears when it ends
        if models.current is not None and models.current.module_files == MODULES:
            break
        page.wait_for_timeout(100)
    assert models.current is not None and models.current.module_files == MODULES
    page.wait_for_function("() => document.querySelector('#sd_checkpoint input')?.value"
                           ".startsWith('flux1-dev.safetensors')", timeout=120_000)

    # Forge's FLUX.1-dev preset came with the model: Euler, Simple, 20 steps, CFG 1, 1024x1024.
    page.click("#tab_txt2img-button")
    page.wait_for_function("() => document.querySelector('#txt2img_cfg_scale input[type=number]')?.value === '1'")
    assert page.locator("#txt2img_sampling input").input_value() == "Euler"
    assert page.locator("#txt2img_scheduler input").input_value() == "Simple"
    assert page.locator("#txt2img_width input[type=number]").input_value() == "1024"
    assert page.locator("#txt2img_distilled_cfg_scale input[type=number]").input_value() == "3.5"
    page.locator("#txt2img_prompt textarea").fill("a fox in the browser, (snow:1.2)")
    for name, value in (("txt2img_steps", 3), ("txt2img_width", 64), ("txt2img_height", 64)):
        set_number(page, name, value)
    page.click("#txt2img_generate")
    text = wait_for_infotext(page, "txt2img", "a fox in the browser")
    params = parse(text)[2]
    assert params["Module 1"] == "clip_l" and params["Module 3"] == "ae" and params["Distilled CFG Scale"] == "3.5"
    first = gallery_png(page, "txt2img")
    (tmp_path / "made.png").write_bytes(first)

    page.click("#tab_pnginfo-button")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(tmp_path / "made.png"))
    page.locator("#pnginfo_html table").get_by_text("Module 1").wait_for()
    page.click("#pnginfo_send_to_txt2img")
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea')?.value === "
                           "'a fox in the browser, (snow:1.2)'")
    saved = set((flow_app.data_dir / "outputs").rglob("*.png"))
    page.click("#txt2img_generate")
    new = []
    for _ in range(600):
        new = sorted(set((flow_app.data_dir / "outputs").rglob("*.png")) - saved)
        if new:
            break
        page.wait_for_timeout(100)
    assert len(new) == 1 and new[0].read_bytes() == first
