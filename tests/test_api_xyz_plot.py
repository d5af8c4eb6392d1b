"""The X/Y/Z plot over the A1111 API (script_name + positional script_args) on the demo server."""

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from engine.output.infotext import parse

SMALL = {"prompt": "a red cat", "negative_prompt": "blurry", "steps": 2, "width": 64, "height": 64,
         "seed": 5, "sampler_name": "Euler"}


def args(x_type=0, x_values="", y_type=0, y_values="", z_type=0, z_values="", draw_legend=True,
         include_lone_images=False, include_sub_grids=False, **rest):
    """A1111 1.10.1's 18 script_args."""
    return [x_type, x_values, "", y_type, y_values, "", z_type, z_values, "", draw_legend, include_lone_images,
            include_sub_grids, rest.get("no_fixed_seeds", False), rest.get("vary_seeds_x", False),
            rest.get("vary_seeds_y", False), rest.get("vary_seeds_z", False), rest.get("margin_size", 0),
            rest.get("csv_mode", False)]


@pytest.fixture(scope="module")
def api(demo_server):
    with httpx.Client(base_url=demo_server.url + "/sdapi/v1", timeout=300) as client:
        yield client


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_steps_by_cfg_plot_returns_the_grid_then_each_cell(api):
    body = {**SMALL, "script_name": "X/Y/Z plot",
            "script_args": args(4, "1-2", 6, "3, 7", include_lone_images=True)}  # 4: Steps, 6: CFG Scale
    response = api.post("/txt2img", json=body)
    assert response.status_code == 200, response.text
    images = [decode(b64) for b64 in response.json()["images"]]
    info = json.loads(response.json()["info"])
    assert len(images) == 5 and info["index_of_first_image"] == 1
    grid = images[0]
    assert grid.width > 128 and grid.height > 128  # two by two cells and the legends
    params = parse(grid.info["parameters"])[2]
    assert (params["X Type"], params["X Values"], params["Y Type"], params["Y Values"]) == \
        ("Steps", "1-2", "CFG Scale", "3, 7")
    assert info["infotexts"][0] == grid.info["parameters"]
    cells = [parse(image.info["parameters"])[2] for image in images[1:]]
    assert [(int(c["Steps"]), float(c["CFG scale"])) for c in cells] == [(1, 3), (2, 3), (1, 7), (2, 7)]
    assert info["all_seeds"] == [5, 5, 5, 5]
    # The same cell as an ordinary request gives the same picture.
    alone = api.post("/txt2img", json={**SMALL, "steps": 2, "cfg_scale": 7}).json()
    difference = np.abs(np.asarray(decode(alone["images"][0]), dtype=int) - np.asarray(images[4], dtype=int))
    assert difference.max() <= 2


def test_only_the_grid_without_sub_images(api):
    response = api.post("/txt2img", json={**SMALL, "script_name": "x/y/z plot",
                                           "script_args": args(1, "1, 2", 0, "", 8, "")})  # 8: Prompt order
    assert response.status_code == 422 and "Prompt order" in response.text  # no values given
    response = api.post("/txt2img", json={**SMALL, "script_name": "x/y/z plot",
                                           "script_args": args(1, "1, 2")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 1
    info = json.loads(body["info"])
    assert info["infotexts"] == [decode(body["images"][0]).info["parameters"]]
    assert "Fixed X Values: \"1, 2\"" in info["infotexts"][0]


def test_img2img_indices_are_img2img_list(api):
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(picture, format="PNG")
    body = {**SMALL, "init_images": [base64.b64encode(picture.getvalue()).decode()], "denoising_strength": 0.6,
            "script_name": "X/Y/Z plot", "script_args": args(5, "4, 9", include_lone_images=True)}  # 5: CFG Scale
    response = api.post("/img2img", json=body)
    assert response.status_code == 200, response.text
    texts = json.loads(response.json()["info"])["infotexts"]
    assert "X Type: CFG Scale" in texts[0]
    assert [float(parse(text)[2]["CFG scale"]) for text in texts[1:]] == [4.0, 9.0]


@pytest.mark.parametrize("script_args, status, message", [
    (args(33, "0.5"), 422, "'Token merging ratio' is not available here"),   # txt2img index 33
    (args(37, "tiny-nothing"), 400, "Checkpoint not found: 'tiny-nothing'"),   # 37: Refiner checkpoint
    (args(9, "Euler, Eulr"), 400, "unknown sampler 'Eulr'"),
    (args(7, "green, blue"), 422, "Prompt S/R did not find 'green'"),
    (args(44, "1"), 422, "X type 44 is not an axis of txt2img"),   # 42, 43: Forge's Distilled CFG Scale, Shift
    (args(4, "1-1000000"), 422, "an axis takes at most 1000"),
])
def test_bad_plots_are_refused_before_running(api, script_args, status, message):
    response = api.post("/txt2img", json={**SMALL, "script_name": "x/y/z plot", "script_args": script_args})
    assert response.status_code == status, response.text
    assert message in response.text


def test_listed_in_scripts_and_script_info(api):
    scripts = api.get("/scripts").json()
    assert "x/y/z plot" in scripts["txt2img"] and "x/y/z plot" in scripts["img2img"]
    info = {(item["name"], item["is_img2img"]): item for item in api.get("/script-info").json()}
    for mode, img2img, steps, cfg in (("txt2img", False, 4, 6), ("img2img", True, 4, 5)):
        plot = info[("x/y/z plot", img2img)]
        assert not plot["is_alwayson"] and len(plot["args"]) == 18
        axes = plot["args"][0]["choices"]
        assert axes[steps] == "Steps" and axes[cfg] == "CFG Scale"
        assert plot["args"][16]["label"] == "Grid margins (px)" and plot["args"][16]["maximum"] == 500
