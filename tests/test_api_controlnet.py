"""ControlNet through the HTTP API as the ecosystem's client programs use it: units in
alwayson_scripts on txt2img/img2img, and the /controlnet routes."""

import json

import httpx
import numpy as np
import pytest

from tests.test_api_img2img import ORIGINAL, b64, decode
from tests.test_controlnet import drawing

SMALL = {"prompt": "a house", "steps": 3, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def server(demo_server):
    with httpx.Client(base_url=demo_server.url, timeout=120) as client:
        yield client


def unit(**fields) -> dict:
    return {"enabled": True, "module": "canny", "model": "demo-controlnet", "image": b64(drawing()), **fields}


def txt2img(server, *units, **fields):
    body = {**SMALL, **fields, "alwayson_scripts": {"controlnet": {"args": list(units)}}}
    return server.post("/sdapi/v1/txt2img", json=body)


def test_routes_list_models_modules_and_version(server):
    assert "demo-controlnet" in server.get("/controlnet/model_list").json()["model_list"]
    modules = server.get("/controlnet/module_list").json()
    assert {"none", "canny", "scribble", "inpaint_only", "depth_midas"} <= set(modules["module_list"])
    canny = modules["module_detail"]["canny"]
    assert canny["model_free"] and [s["name"] for s in canny["sliders"]][0] == "Preprocessor Resolution"
    depth = modules["module_detail"]["depth_midas"]
    assert not depth["available"] and "controlnet_aux" in depth["reason"]
    assert server.get("/controlnet/version").json() == {"version": 2}


def test_detect_returns_the_map(server):
    response = server.post("/controlnet/detect", json={
        "controlnet_module": "canny", "controlnet_input_images": [b64(drawing((96, 64)))],
        "controlnet_processor_res": 64, "controlnet_threshold_a": 50, "controlnet_threshold_b": 150})
    assert response.status_code == 200, response.text
    [image] = response.json()["images"]
    edges = np.asarray(decode(image).convert("L"))
    assert edges.shape == (64, 96) and set(np.unique(edges)) == {0, 255}
    bad = server.post("/controlnet/detect", json={"controlnet_module": "sparkles", "controlnet_input_images": [b64(drawing())]})
    assert bad.status_code == 422 and "sparkles" in bad.text


def test_a_unit_round_trips_and_changes_the_picture(server):
    plain = server.post("/sdapi/v1/txt2img", json=SMALL).json()
    controlled = txt2img(server, unit(weight=1.5, resize_mode=0, control_mode=2))
    assert controlled.status_code == 200, controlled.text
    info = json.loads(controlled.json()["info"])
    assert ('ControlNet 0: "Module: canny, Model: demo-controlnet, Weight: 1.5, Resize Mode: Just Resize'
            in info["infotexts"][0]) and "Control Mode: ControlNet is more important" in info["infotexts"][0]
    assert controlled.json()["images"][0] != plain["images"][0]
    disabled = txt2img(server, unit(enabled=False))
    assert disabled.json()["images"][0] == plain["images"][0]


def test_img2img_with_a_unit_and_hash_suffixed_model_name(server):
    body = {**SMALL, "init_images": [b64(ORIGINAL)], "denoising_strength": 0.6,
            "alwayson_scripts": {"ControlNet": {"args": [unit(image=None, model="demo-controlnet [0123abcd]")]}}}
    response = server.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    assert "Model: demo-controlnet," in json.loads(response.json()["info"])["infotexts"][0]


@pytest.mark.parametrize("fields, words", [
    ({"image": None}, "ControlNet unit 0 is enabled but has no control image"),
    ({"module": "sparkles"}, "Unknown preprocessor"),
    ({"model": "nowhere"}, "model 'nowhere' not found. Available: demo-controlnet"),
    ({"weight": "heavy"}, "weight must be a number"),
    ({"resize_mode": "Squash"}, "Unknown ControlNet resize mode 'Squash'"),
    ({"image": "bm90IGFuIGltYWdl"}, "not an image"),
    ({"processor_res": 5000}, "processor_res (-1 for the default) must be between 64 and 2048"),
    ({"enabled": "maybe"}, "enabled must be true or false"),
])
def test_bad_units_get_a_4xx_naming_the_problem(server, fields, words):
    response = txt2img(server, unit(**fields))
    assert response.status_code in (400, 422) and words in response.text, response.text
    assert server.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200


def test_non_finite_numbers_and_string_flags_in_units(server):
    # NaN is not JSON, but Python's and many clients' encoders write it: it must be a 4xx.
    body = json.dumps({**SMALL, "alwayson_scripts": {"controlnet": {"args": [unit(processor_res=float("nan"))]}}})
    response = server.post("/sdapi/v1/txt2img", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "processor_res must be a number" in response.text
    off = txt2img(server, unit(enabled="false"))
    assert off.status_code == 200 and "ControlNet 0" not in json.loads(off.json()["info"])["infotexts"][0]
