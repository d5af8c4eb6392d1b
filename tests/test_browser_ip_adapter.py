"""An IP-Adapter unit in a real browser against app.py --demo: in the txt2img ControlNet
accordion, upload a reference picture, pick the IP-Adapter preprocessor and model, generate."""

import io

from PIL import Image

from tests.support.ip_adapter_files import write_encoder_folder, write_ip_adapter
from tests.test_browser_controlnet import generate_small
from tests.test_browser_img2img import gallery_png, open_tab
from tests.test_ip_adapter import picture


def test_an_ip_adapter_unit_with_a_reference_picture_generates(page, demo_server, tmp_path):
    from engine.models.loading import CONFIG_ROOT
    from engine.models.tiny_models import build_demo_pipeline

    models = demo_server.data_dir / "models"
    adapter = models / "ControlNet" / "ip-adapter_demo_sd15.safetensors"
    write_ip_adapter(build_demo_pipeline(CONFIG_ROOT / "sd1" / "tokenizer").unet, adapter)
    encoder = models / "ControlNet" / "annotators" / "clip_vision" / "clip_h"
    if not encoder.exists():
        write_encoder_folder(encoder)
    picture("red", "oval").resize((128, 128)).save(tmp_path / "reference.png")

    open_tab(page, demo_server.url, "txt2img")
    page.locator("#txt2img_controlnet").get_by_text("ControlNet", exact=True).first.click()
    editor = page.locator("#txt2img_cn0_image")
    editor.locator("canvas").first.wait_for()
    page.wait_for_timeout(2000)  # the editor mounts its canvas before it takes an upload
    editor.locator("input[type=file]").first.set_input_files(str(tmp_path / "reference.png"))
    page.wait_for_timeout(2000)
    page.locator("#txt2img_cn0_enabled input").check()
    page.locator("#txt2img_cn0_module input").click()
    page.get_by_role("option", name="ip-adapter_clip_sd15", exact=True).click()
    page.click("#txt2img_cn0_refresh_models")  # the adapter was added after the page was built
    page.wait_for_timeout(1500)
    page.locator("#txt2img_cn0_model input").click()
    page.get_by_role("option", name="ip-adapter_demo_sd15").click()
    text = generate_small(page, "txt2img", "a picture prompted by a picture")
    assert 'Module: ip-adapter_clip_sd15, Model: ip-adapter_demo_sd15, Weight: 1' in text
    assert Image.open(io.BytesIO(gallery_png(page, "txt2img"))).size == (64, 64)
    adapter.unlink()
