"""FLUX.1 and SD 3.5 through the HTTP API of a running app, with the files a user downloads
(tests/support/flow_tree.py): the checkpoint list names each family, Forge's
forge_additional_modules picks the VAE / text encoder files (remembered for the checkpoint), the
picture's infotext names them with their hashes, and the PNG Info text alone makes the same
picture again; what cannot be loaded or sampled is a 4xx naming the problem."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.support.flow_tree import write_flow_tree
from tests.support.server import InProcessServer

MODULES = ["clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"]
JOB = {"prompt": "a red fox in the snow", "negative_prompt": "", "steps": 3, "width": 64, "height": 64,
       "sampler_name": "Euler", "cfg_scale": 1.0, "seed": 11, "distilled_cfg_scale": 3.0}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    data = tmp_path_factory.mktemp("flow-api")
    _, configs = write_flow_tree(data)
    with InProcessServer(data, "--api", "--skip-load-model-at-start", config_root=configs) as server:
        yield server


@pytest.fixture(scope="module")
def api(app):
    import httpx
    with httpx.Client(base_url=app.url + "/sdapi/v1", timeout=300) as client:
        yield client


def _image(response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))))


@pytest.fixture(scope="module")
def flux_picture(api):
    """flux1-dev (transformer only) loaded with its modules picked, and one picture from it."""
    response = api.post("/options", json={"sd_model_checkpoint": "flux1-dev.safetensors",
                                          "forge_additional_modules": MODULES})
    assert response.status_code == 200, response.text
    response = api.post("/txt2img", json=JOB)
    assert response.status_code == 200, response.text
    return response


def test_the_checkpoint_list_names_each_family(api):
    families = {model["model_name"]: model.get("family") for model in api.get("/sd-models").json()}
    assert families["flux1-dev"].startswith("FLUX.1") and families["sd3.5_medium_all"].startswith("SD 3.5")


def test_modules_are_remembered_and_named_in_the_infotext(api, app, flux_picture):
    options = api.get("/options").json()
    assert options["forge_additional_modules"] == MODULES
    assert options["checkpoint_modules"]["flux1-dev.safetensors"] == ", ".join(MODULES)
    info = flux_picture.json()["info"]
    text = __import__("json").loads(info)["infotexts"][0]
    for index, stem in enumerate(("clip_l", "t5xxl_fp16", "ae"), start=1):
        assert f"Module {index}: {stem}" in text
    hashes = app.ctx.engine.addons.vaes.hashes
    assert f"ae: {hashes.sha256(app.data_dir / 'models' / 'VAE' / 'ae.safetensors')[:10]}" in text
    assert "Distilled CFG Scale: 3," in text and "Sampler: Euler" in text


def test_png_info_alone_makes_the_same_picture(api, flux_picture):
    png = flux_picture.json()["images"][0]
    parameters = api.post("/png-info", json={"image": "data:image/png;base64," + png}).json()["info"]
    assert "Module 1: clip_l" in parameters
    again = api.post("/txt2img", json={"infotext": parameters})
    assert again.status_code == 200, again.text
    assert np.array_equal(_image(again), _image(flux_picture))


def test_an_sd35_checkpoint_for_one_job_then_back(api, flux_picture):
    response = api.post("/txt2img", json={**JOB, "cfg_scale": 4.0, "sampler_name": "DPM++ 2M",
                                          "override_settings": {"sd_model_checkpoint": "sd3.5_medium_all"}})
    assert response.status_code == 200, response.text
    assert _image(response).shape == (64, 64, 3)
    assert api.get("/options").json()["sd_model_checkpoint"].startswith("flux1-dev.safetensors")


@pytest.mark.parametrize("body, words", [
    ({**JOB, "sampler_name": "DDIM"}, "DDIM cannot sample"),
    ({**JOB, "width": 72}, "multiple of 16"),
    ({**JOB, "override_settings": {"forge_additional_modules": ["/etc/passwd"]}}, "outside the module folders"),
    ({**JOB, "override_settings": {"forge_additional_modules": ["nothing-here.safetensors"]}}, "nothing-here"),
    ({**JOB, "override_settings": {"sd_model_checkpoint": "flux1-depth-dev"}}, "not supported yet"),
])
def test_what_cannot_run_is_a_4xx_naming_it(api, flux_picture, body, words):
    response = api.post("/txt2img", json=body)
    assert 400 <= response.status_code < 500, response.text
    assert words in response.text
    assert api.post("/txt2img", json=JOB).status_code == 200   # the studio keeps serving


def test_an_xyz_plot_over_forge_s_flow_axes(api, flux_picture):
    from tests.test_api_xyz_plot import args
    body = {**JOB, "script_name": "X/Y/Z plot",
            "script_args": args(42, "2, 5", 43, "0, 4", include_lone_images=True)}  # Distilled CFG Scale, Shift
    response = api.post("/txt2img", json=body)
    assert response.status_code == 200, response.text
    infotexts = __import__("json").loads(response.json()["info"])["infotexts"]
    cells = [text for text in infotexts[1:]]
    assert len(cells) == 4
    assert sum("Distilled CFG Scale: 5" in text for text in cells) == 2
    assert sum("Shift: 4" in text for text in cells) == 2   # shift 0: the model's own, not written


def test_a_distilled_cfg_scale_left_out_is_the_models_own(api, flux_picture):
    """Forge's clients may leave distilled_cfg_scale out: FLUX.1-dev then runs at its 3.5 (and
    says so in the infotext), the same picture as asking for 3.5."""
    omitted = {key: value for key, value in JOB.items() if key != "distilled_cfg_scale"}
    left_out = api.post("/txt2img", json=omitted)
    assert left_out.status_code == 200, left_out.text
    assert "Distilled CFG Scale: 3.5," in __import__("json").loads(left_out.json()["info"])["infotexts"][0]
    asked = api.post("/txt2img", json={**omitted, "distilled_cfg_scale": 3.5})
    assert np.array_equal(_image(left_out), _image(asked))
    assert not np.array_equal(_image(left_out), _image(flux_picture))   # 3.0 there
