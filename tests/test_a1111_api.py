"""The API semantics AUTOMATIC1111's client programs rely on: settings by any name, hires fix at
denoising 0, sizes off the 8-pixel grid, unknown styles, the error body, the /internal routes."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from engine.output.infotext import parse

SMALL = {"prompt": "a cat", "steps": 3, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler a"}


@pytest.fixture(scope="module")
def api(demo_server):
    with httpx.Client(base_url=demo_server.url + "/sdapi/v1", timeout=120) as client:
        yield client


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def txt2img(api, **fields) -> tuple[dict, dict]:
    response = api.post("/txt2img", json={**SMALL, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    return body, json.loads(body["info"])


def test_get_options_has_every_a1111_setting(api):
    options = api.get("/options").json()
    for key, default in (("grid_only_if_multiple", True), ("eta_noise_seed_delta", 0),
                         ("img2img_fix_steps", False), ("upscaler_for_img2img", "None"),
                         ("always_discard_next_to_last_sigma", False), ("enable_pnginfo", True)):
        assert options[key] == default, key
    assert len(options) > 300


def test_post_options_names_what_it_ignores(api):
    response = api.post("/options", json={"grid_only_if_multiple": False, "some_extension_option": 3,
                                          "jpeg_quality": 81})
    assert response.status_code == 200
    assert response.json()["ignored"] == ["grid_only_if_multiple", "some_extension_option"]
    assert api.get("/options").json()["jpeg_quality"] == 81
    assert api.post("/options", json={"jpeg_quality": 80}).json() is None  # nothing ignored: null


@pytest.mark.parametrize("overrides, check", [
    ({"eta_noise_seed_delta": 31337}, lambda params, info: params["ENSD"] == "31337"),
    ({"eta_ancestral": 0.5}, lambda params, info: float(params["Eta"]) == 0.5),
    ({"s_noise": 0.8}, lambda params, info: "Sigma noise" not in params),  # Euler a does not take it
    ({"always_discard_next_to_last_sigma": True},
     lambda params, info: params["Discard penultimate sigma"] == "True"),
    ({"sd_model_refiner": "tiny-folder"},  # the refiner of a request that names none (SD.Next's key)
     lambda params, info: params["Refiner"].startswith("tiny-folder") and params["Refiner switch at"] == "0.8"
     and not info.get("ignored_settings")),
    ({"CLIP_stop_at_last_layers": 2, "grid_extended_filename": True},
     lambda params, info: params["Clip skip"] == "2" and info["ignored_settings"] == ["grid_extended_filename"]),
])
def test_override_settings_by_a1111_name(api, overrides, check):
    body, info = txt2img(api, override_settings=overrides)
    assert check(parse(info["infotexts"][0])[2], info)


def test_enable_pnginfo_off_leaves_the_pictures_bare(api):
    body, info = txt2img(api, override_settings={"enable_pnginfo": False})
    assert "parameters" not in decode(body["images"][0]).info
    assert "Seed: 11" in info["infotexts"][0]  # the info still says what made it


def test_restore_afterwards_false_keeps_every_overridden_setting(api):
    before = api.get("/options").json()
    try:
        txt2img(api, override_settings={"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 7},
                override_settings_restore_afterwards=False)
        after = api.get("/options").json()
        assert after["CLIP_stop_at_last_layers"] == 2 and after["eta_noise_seed_delta"] == 7
    finally:
        api.post("/options", json={key: before[key] for key in ("CLIP_stop_at_last_layers", "eta_noise_seed_delta")})


def test_sampler_parameters_in_the_body(api):
    _, plain = txt2img(api, sampler_name="Euler")
    body, churned = txt2img(api, sampler_name="Euler", s_churn=2.0, s_noise=0.9)
    params = parse(churned["infotexts"][0])[2]
    assert float(params["Sigma churn"]) == 2.0 and float(params["Sigma noise"]) == 0.9
    _, ngms = txt2img(api, s_min_uncond=50.0)
    assert float(parse(ngms["infotexts"][0])[2]["NGMS"]) == 50.0


def test_hires_fix_at_denoising_0_is_accepted(api):
    """Upscale only (tests/test_extensions.py checks the pixels against the VAE by hand)."""
    for upscaler in ("Lanczos", "Latent"):
        body, info = txt2img(api, enable_hr=True, hr_upscaler=upscaler, denoising_strength=0)
        assert decode(body["images"][0]).size == (128, 128)
        assert parse(info["infotexts"][0])[2]["Denoising strength"] == "0"


def test_hires_scheduler_and_checkpoint(api):
    body, info = txt2img(api, enable_hr=True, hr_scale=1.5, denoising_strength=0.5, hr_sampler_name="Euler",
                         hr_scheduler="Karras", hr_checkpoint_name="tiny-folder")
    params = parse(info["infotexts"][0])[2]
    assert params["Hires schedule type"] == "Karras" and params["Hires checkpoint"] == "tiny-folder"
    assert decode(body["images"][0]).size == (96, 96)
    assert info["sd_model_name"] == "demo-tiny"  # the job's own model is back
    assert api.get("/options").json()["sd_model_checkpoint"].startswith("demo-tiny")
    bad = api.post("/txt2img", json={**SMALL, "enable_hr": True, "hr_checkpoint_name": "nowhere"})
    assert bad.status_code == 400 and "Checkpoint not found" in bad.json()["detail"]


@pytest.mark.parametrize("width, height, size", [(65, 64, (64, 64)), (100, 70, (96, 64)), (127, 199, (120, 192))])
def test_sizes_off_the_grid_are_rounded_down(api, width, height, size):
    body, _ = txt2img(api, width=width, height=height)
    assert decode(body["images"][0]).size == size


def test_seed_resize_takes_any_positive_size(api):
    body, info = txt2img(api, seed_resize_from_w=100, seed_resize_from_h=130)
    assert parse(info["infotexts"][0])[2]["Seed resize from"] == "96x128"
    _, off = txt2img(api, seed_resize_from_w=5, seed_resize_from_h=5)  # less than a latent pixel: off
    assert "Seed resize from" not in parse(off["infotexts"][0])[2]


def test_unknown_styles_are_left_out(api):
    body, info = txt2img(api, styles=["No such style"])
    assert info["prompt"] == "a cat"
    assert "Style not found, left out: 'No such style'" in info["warnings"]


def test_unknown_scripts_are_named(api):
    response = api.post("/txt2img", json={**SMALL, "script_name": "x/y/z plot nope"})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("Script 'x/y/z plot nope' not found. Scripts in txt2img: ")


def test_errors_carry_the_a1111_body_and_ours(api):
    validation = api.post("/txt2img", json={**SMALL, "steps": "many"})
    assert validation.status_code == 422
    body = validation.json()
    assert {"error", "detail", "body", "errors"} <= set(body)
    assert body["error"] == "RequestValidationError" and body["detail"][0]["loc"] == ["body", "steps"]
    assert "steps" in body["errors"]
    ours = api.post("/txt2img", json={**SMALL, "sampler_name": "Nope"})
    assert ours.status_code == 400
    assert {"error", "detail", "body", "errors", "field"} <= set(ours.json())
    assert ours.json()["field"] == "sampler_name"
    assert api.get("/no-such-route").status_code == 404


def test_internal_routes(demo_server, api):
    base = demo_server.url + "/internal"
    assert httpx.get(base + "/ping").json() == {}
    progress = httpx.post(base + "/progress", json={"id_task": "nobody"}).json()
    assert progress == {"active": False, "queued": False, "completed": False, "progress": None, "eta": None,
                        "live_preview": None, "id_live_preview": -1, "textinfo": "Waiting..."}
    txt2img(api, force_task_id="task(probe-1)")
    done = httpx.post(base + "/progress", json={"id_task": "task(probe-1)"}).json()
    assert done["completed"] is True and done["active"] is False
    assert httpx.get(base + "/pending-tasks").json()["size"] == 0
    sysinfo = httpx.get(base + "/sysinfo")
    assert sysinfo.status_code == 200
    info = sysinfo.json()
    assert {"Platform", "Python", "Version", "Torch env info", "Config", "Packages", "Flags"} <= set(info)
    download = httpx.get(base + "/sysinfo-download")
    assert download.headers["content-disposition"].startswith("attachment; filename=\"sysinfo-")


def test_server_stop_routes_are_absent_without_the_flag(api):
    for route in ("/server-stop", "/server-restart", "/server-kill"):
        assert api.post(route).status_code == 404
