"""What a caller may store or send has limits, each refused with a status and a message that names
it, against the real demo server; the server keeps serving afterwards."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from PIL import Image

from engine.output.writer import png_bytes
from engine.request import MAX_PROMPT_CHARS
from ui.api.models import MAX_INFOTEXT_CHARS, MAX_LIST_ITEMS, MAX_NAME_CHARS
from ui.body_limits import OPTIONS_BODY_BYTES, upload_file_bytes

SMALL = {"prompt": "a cube", "steps": 2, "width": 64, "height": 64, "seed": 1}


@pytest.fixture(scope="module")
def api(demo_server):
    with httpx.Client(base_url=demo_server.url + "/sdapi/v1", timeout=120) as client:
        yield client


def picture_b64() -> str:
    return base64.b64encode(png_bytes(Image.new("RGB", (64, 64), (20, 200, 30)), None)).decode()


def detail(response: httpx.Response) -> str:
    return json.dumps(response.json()["detail"])


def test_options_take_a_bounded_number_of_bounded_values(api, demo_server):
    config = demo_server.data_dir / "config.json"
    size_before = config.stat().st_size if config.exists() else 0
    many = api.post("/options", json={f"someone_elses_setting_{i}": 1 for i in range(1001)})
    assert many.status_code == 413 and "At most 1000 settings" in detail(many)
    long_name = api.post("/options", json={"x" * 201: 1})
    assert long_name.status_code == 422 and "at most 200 characters" in detail(long_name)
    long_value = api.post("/options", json={"samples_filename_pattern": "y" * 10_001})
    assert long_value.status_code == 422
    assert "samples_filename_pattern is too long: 10001 characters (at most 10000)" in detail(long_value)
    assert "yyyyyyyyyy" * 20 not in long_value.text  # the value is not echoed back whole
    huge = api.post("/options", content=json.dumps({"someone_elses": "z" * OPTIONS_BODY_BYTES}),
                    headers={"Content-Type": "application/json"})
    assert huge.status_code == 413 and "at most 1.0 MiB" in detail(huge)
    # Unknown keys of other web UIs are still accepted (and ignored), as client programs send them.
    fine = api.post("/options", json={"someone_elses_setting": "v", "samples_filename_pattern": "[seed]"})
    assert fine.status_code == 200 and fine.json()["ignored"] == ["someone_elses_setting"]
    assert config.stat().st_size < size_before + 1000
    assert len(api.get("/options").content) < 200_000
    api.post("/options", json={"samples_filename_pattern": ""})


def test_override_settings_have_the_same_limits(api):
    response = api.post("/txt2img", json={**SMALL, "override_settings": {f"k{i}": 1 for i in range(1001)}})
    assert response.status_code == 422 and "override_settings" in detail(response)
    response = api.post("/txt2img", json={**SMALL, "override_settings": {"samples_filename_pattern": "p" * 10_001}})
    assert response.status_code == 422 and "at most 10000" in detail(response)


@pytest.mark.parametrize("field, value, limit", [
    ("force_task_id", "t" * (MAX_NAME_CHARS + 1), MAX_NAME_CHARS),
    ("sampler_name", "s" * (MAX_NAME_CHARS + 1), MAX_NAME_CHARS),
    ("hr_prompt", "h" * (MAX_PROMPT_CHARS + 1), MAX_PROMPT_CHARS),
    ("prompt", "p" * (MAX_PROMPT_CHARS + 1), MAX_PROMPT_CHARS),
    ("infotext", "i" * (MAX_INFOTEXT_CHARS + 1), MAX_INFOTEXT_CHARS),
    ("styles", ["style"] * (MAX_LIST_ITEMS + 1), MAX_LIST_ITEMS),
    ("script_args", [0] * (MAX_LIST_ITEMS + 1), MAX_LIST_ITEMS),
])
def test_free_text_and_lists_are_capped(api, field, value, limit):
    response = api.post("/txt2img", json={**SMALL, field: value})
    assert response.status_code == 422, response.text[:300]
    assert field in detail(response) and str(limit) in detail(response)


def test_progress_takes_only_a_task_id_of_sane_length(demo_server):
    response = httpx.post(demo_server.url + "/internal/progress", json={"id_task": "t" * (MAX_NAME_CHARS + 1)})
    assert response.status_code == 422 and str(MAX_NAME_CHARS) in response.text


def unit(model: str) -> dict:
    return {"enabled": True, "module": "none", "model": model, "image": picture_b64(), "weight": 0.5}


def test_controlnet_units_are_capped_by_the_unit_count_setting(api, demo_server):
    model = httpx.get(demo_server.url + "/controlnet/model_list").json()["model_list"][0]
    body = {**SMALL, "alwayson_scripts": {"controlnet": {"args": [unit(model)] * 11}}}
    too_many = api.post("/txt2img", json=body)
    assert too_many.status_code == 422 and "At most 10 ControlNet units" in detail(too_many)
    body["alwayson_scripts"]["controlnet"]["args"] = [unit(model)] * 4
    over_setting = api.post("/txt2img", json=body)
    assert over_setting.status_code == 422
    assert "At most 3 ControlNet units" in detail(over_setting) and "control_net_unit_count" in detail(over_setting)
    body["alwayson_scripts"]["controlnet"]["args"] = [unit(model)] * 3 + [{**unit(model), "enabled": False}]
    assert api.post("/txt2img", json=body).status_code == 200  # three that act, one switched off


def test_the_upload_route_follows_upload_max_megapixels(api, demo_server):
    upload = demo_server.url + "/gradio_api/upload"
    small = httpx.post(upload, files={"files": ("a.png", png_bytes(Image.new("RGB", (8, 8)), None), "image/png")})
    assert small.status_code == 200
    limit = upload_file_bytes(16.0)  # the default setting
    big = httpx.post(upload, files={"files": ("big.png", b"\0" * (limit + 1), "image/png")})
    assert big.status_code == 413
    assert api.post("/options", json={"upload_max_megapixels": 32.0}).status_code == 200
    try:
        assert httpx.post(upload, files={"files": ("big.png", b"\0" * (limit + 1), "image/png")}).status_code == 200
    finally:
        api.post("/options", json={"upload_max_megapixels": 16.0})
    assert httpx.post(upload, files={"files": ("big.png", b"\0" * (limit + 1), "image/png")}).status_code == 413
