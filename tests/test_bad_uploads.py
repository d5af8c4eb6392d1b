"""Bad picture uploads, in every API field that takes a picture and in the UI's picture inputs:
each gets a 4xx (API) or a message (UI) that names the field and the problem, and the server
goes on serving."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import gradio as gr
import httpx
import pytest
from gradio.data_classes import FileData
from gradio.utils import get_upload_folder
from PIL import Image

from engine.settings.store import Settings
from tests.support.bad_images import BAD_FILES, png
from tests.test_controlnet import drawing
from ui import checked_images

SMALL = {"prompt": "upload", "steps": 2, "width": 64, "height": 64, "seed": 5}


def good_b64() -> str:
    return base64.b64encode(png(drawing())).decode()


def bodies(picture: str) -> dict[str, tuple[str, dict]]:
    """Each API field that takes a picture: (route, body with `picture` in that field)."""
    good = good_b64()
    unit = {"enabled": True, "module": "canny", "model": "demo-controlnet", "image": picture}
    return {
        "init_images[0]": ("/sdapi/v1/img2img", {**SMALL, "init_images": [picture]}),
        "mask": ("/sdapi/v1/img2img", {**SMALL, "init_images": [good], "mask": picture}),
        "extras image": ("/sdapi/v1/extra-single-image", {"image": picture, "upscaling_resize": 1}),
        "imageList[0]": ("/sdapi/v1/extra-batch-images",
                         {"imageList": [{"data": picture, "name": "a.png"}], "upscaling_resize": 1}),
        "png-info image": ("/sdapi/v1/png-info", {"image": picture}),
        "interrogate image": ("/sdapi/v1/interrogate", {"image": picture, "model": "clip"}),
        "controlnet_input_images[0]": ("/controlnet/detect",
                                       {"controlnet_module": "canny", "controlnet_input_images": [picture]}),
        "ControlNet unit image": ("/sdapi/v1/txt2img",
                                  {**SMALL, "alwayson_scripts": {"controlnet": {"args": [unit]}}}),
    }


FIELDS = list(bodies(""))
# An empty unit image means "no image", which a unit needs.
EMPTY_MEANS_MISSING = {"ControlNet unit image": "has no control image"}


@pytest.fixture(scope="module")
def server(demo_server):
    with httpx.Client(base_url=demo_server.url, timeout=120) as client:
        yield client


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("name, data, words", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_a_bad_picture_in_any_api_field_is_a_4xx_naming_it(server, field, name, data, words):
    route, body = bodies(base64.b64encode(data).decode())[field]
    response = server.post(route, json=body)
    if field == "mask" and name == "empty":  # as in the ecosystem's API: "" means no mask
        assert response.status_code == 200, response.text[:300]
        return
    assert 400 <= response.status_code < 500, (field, name, response.status_code, response.text[:300])
    words = EMPTY_MEANS_MISSING.get(field, words) if name == "empty" else words
    assert words in response.text, (field, name, response.text[:300])


@pytest.mark.parametrize("field", FIELDS)
def test_the_same_fields_take_a_good_picture_afterwards(server, field):
    route, body = bodies(good_b64())[field]
    response = server.post(route, json=body)
    if field == "interrogate image":  # the demo server's BLIP answers; others must succeed
        assert response.status_code in (200, 400), response.text
    else:
        assert response.status_code == 200, (field, response.text[:300])


def _file_data(tmp_path, name: str, data: bytes) -> FileData:
    # Uploads are read only from Gradio's upload folder (a forged path elsewhere is never read),
    # so the file goes where Gradio puts uploads.
    path = Path(get_upload_folder()) / "sd-studio-tests" / tmp_path.name / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return FileData(path=str(path), orig_name=path.name)


@pytest.mark.parametrize("name, data, words", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_ui_picture_inputs_refuse_a_bad_upload_with_its_label(tmp_path, name, data, words):
    settings = Settings(tmp_path / "config.json")
    with gr.Blocks():
        image = checked_images.image(settings, label="Image for img2img", type="pil")
        editor = checked_images.image_editor(settings, label="Paint the part to change", type="pil")
    upload = _file_data(tmp_path, name, data)
    problem = checked_images.upload_problem(upload, image.label, image.limit_megapixels())
    assert words in problem and "Image for img2img" in problem
    assert image.preprocess(upload) is None, "a refused upload counts as no picture, without an error"
    with pytest.raises(gr.Error) as refused:
        editor.preprocess(editor.data_model(background=upload, layers=[], composite=upload))
    assert words in refused.value.message and "Paint the part to change" in refused.value.message


def test_ui_picture_inputs_follow_the_upload_limit_setting(tmp_path):
    settings = Settings(tmp_path / "config.json")
    with gr.Blocks():
        image = checked_images.image(settings, label="Source", type="pil")
    upload = _file_data(tmp_path, "ok", png(Image.new("RGB", (1500, 1000))))
    assert image.preprocess(upload).size == (1500, 1000)
    settings.update({"upload_max_megapixels": 1})
    assert re.search("1.5 megapixels.*limited to 1 megapixels",
                     checked_images.upload_problem(upload, image.label, image.limit_megapixels()))
    assert image.preprocess(upload) is None


def test_ui_picture_inputs_are_drawn_by_gradios_own_front_end(tmp_path):
    settings = Settings(tmp_path / "config.json")
    with gr.Blocks():
        image = checked_images.image(settings, label="Source")
        editor = checked_images.image_editor(settings, label="Paint")
    assert image.get_block_name() == "image" and editor.get_block_name() == "imageeditor"
    assert "limit_megapixels" not in image.get_config()
