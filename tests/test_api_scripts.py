"""The built-in scripts Prompt matrix, Prompts from file or textbox, Loopback and Outpainting mk2
through the real server's API (app.py --demo --api): script_name + positional script_args as
client programs of the mature UI send them, /scripts and /script-info."""

import json

import httpx
import pytest

from engine.output.infotext import parse
from tests.test_api_img2img import ORIGINAL, b64, decode

SMALL = {"prompt": "a cat", "steps": 3, "width": 64, "height": 64, "seed": 5}


@pytest.fixture(scope="module")
def api(demo_server):
    with httpx.Client(base_url=demo_server.url + "/sdapi/v1", timeout=180) as client:
        yield client


def infotexts(response) -> list[str]:
    return json.loads(response.json()["info"])["infotexts"]


def test_the_scripts_are_listed_per_tab_with_their_args_in_order(api):
    scripts = api.get("/scripts").json()
    for name in ("prompt matrix", "prompts from file or textbox"):
        assert name in scripts["txt2img"] and name in scripts["img2img"]
    for name in ("loopback", "outpainting mk2"):
        assert name in scripts["img2img"] and name not in scripts["txt2img"]
    info = {(item["name"], item["is_img2img"]): item for item in api.get("/script-info").json()}

    def labels(name, img2img):
        return [arg["label"] for arg in info[(name, img2img)]["args"]]

    assert labels("prompt matrix", False) == ["Set at prompt start", "Random seeds", "Prompt type",
                                              "Joining char", "Grid margins (px)"]
    assert labels("prompts from file or textbox", True) == [
        "Iterate seed every line", "Use same random seed for all lines", "Insert prompts at the",
        "List of prompt inputs"]
    assert labels("loopback", True)[:2] == ["Loops", "Final denoising strength"]
    assert len(labels("outpainting mk2", True)) == 6


def test_prompt_matrix_returns_the_grid_then_one_picture_per_combination(api):
    body = {**SMALL, "prompt": "a cat | red | small", "script_name": "Prompt matrix",
            "script_args": [False, True, "positive", "comma", 0]}
    response = api.post("/txt2img", json=body)
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert len(images) == 5 and decode(images[0]).size[0] > 128
    texts = infotexts(response)[1:]
    assert [parse(text)[0] for text in texts] == ["a cat ", "a cat , red", "a cat , small", "a cat , red, small"]
    assert [parse(text)[2]["Seed"] for text in texts] == ["5", "6", "7", "8"]


def test_prompts_from_file_runs_each_line_and_refuses_an_unknown_option(api):
    body = {**SMALL, "prompt": "", "script_name": "prompts from file or textbox",
            "script_args": [False, False, "start", 'a dog\n--prompt "a bird" --steps 2 --seed 9']}
    response = api.post("/txt2img", json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 2
    (p1, _, a), (p2, _, b) = [parse(text) for text in infotexts(response)]
    assert (p1, a["Seed"], p2, b["Seed"], b["Steps"]) == ("a dog", "5", "a bird", "9", "2")
    bad = api.post("/txt2img", json={**body, "script_args": [False, False, "start", "--prompt x --hr_scale 2"]})
    assert 400 <= bad.status_code < 500 and "--hr_scale" in bad.text


def test_loopback_returns_its_grid_and_each_loop(api):
    body = {**SMALL, "init_images": [b64(ORIGINAL)], "denoising_strength": 0.7, "script_name": "Loopback",
            "script_args": [2, 0.3, "Linear", "None"]}
    response = api.post("/img2img", json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 3
    assert [parse(text)[2]["Denoising strength"] for text in infotexts(response)[1:]] == ["0.7", "0.3"]
    refused = api.post("/img2img", json={**body, "script_args": [2, 0.3, "Linear", "DeepBooru"]})
    assert 400 <= refused.status_code < 500 and "DeepBooru" in refused.text


def test_outpainting_mk2_grows_the_picture(api):
    body = {**SMALL, "init_images": [b64(ORIGINAL)], "denoising_strength": 0.8, "script_name": "Outpainting mk2",
            "script_args": ["<p>note</p>", 64, 2, ["right"], 1.0, 0.05]}
    response = api.post("/img2img", json=body)
    assert response.status_code == 200, response.text
    (image,) = [decode(data) for data in response.json()["images"]]
    assert image.size == (128, 64)
    assert json.loads(response.json()["info"])["width"] == 128
