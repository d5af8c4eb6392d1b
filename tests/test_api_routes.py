"""Every /sdapi/v1 route COMPAT.md lists answers with the documented shape on the demo model;
override_settings holds for one request only."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from engine.output.writer import png_bytes

SMALL = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def api(demo_server):
    with httpx.Client(base_url=demo_server.url + "/sdapi/v1", timeout=120) as client:
        yield client


def picture_b64(text: str | None = None) -> str:
    return base64.b64encode(png_bytes(Image.new("RGB", (48, 40), (200, 30, 30)), text)).decode()


LISTS = {
    # route: keys every item has (the ecosystem's names)
    "/samplers": {"name", "aliases", "options"},
    "/schedulers": {"name", "label"},
    "/upscalers": {"name", "model_name", "model_path", "model_url", "scale"},
    "/latent-upscale-modes": {"name"},
    "/sd-models": {"title", "model_name", "hash", "sha256", "filename", "config"},
    "/sd-vae": {"model_name", "filename"},
    "/face-restorers": {"name", "cmd_dir"},
    "/realesrgan-models": {"name", "path", "scale"},
    "/prompt-styles": {"name", "prompt", "negative_prompt"},
    "/loras": {"name", "alias", "path", "metadata"},
    "/script-info": {"name", "is_alwayson", "is_img2img", "args"},
    "/extensions": {"name", "remote", "branch", "commit_hash", "commit_date", "version", "enabled"},
}


@pytest.mark.parametrize("route, keys", LISTS.items())
def test_listing_routes_have_the_documented_keys(api, route, keys):
    response = api.get(route)
    assert response.status_code == 200, response.text
    items = response.json()
    assert isinstance(items, list)
    if route not in ("/sd-vae", "/prompt-styles", "/realesrgan-models"):  # none of these on the demo server
        assert items, f"{route} listed nothing on the demo server"
    for item in items:
        assert keys <= set(item), f"{route}: {item} lacks {keys - set(item)}"


def test_object_routes_have_the_documented_keys(api):
    assert api.get("/hypernetworks").json() == []
    embeddings = api.get("/embeddings").json()
    assert {"loaded", "skipped"} <= set(embeddings)
    scripts = api.get("/scripts").json()
    assert set(scripts) == {"txt2img", "img2img"}
    flags = api.get("/cmd-flags").json()
    assert flags["api"] is True and flags["queue_size"] >= 1 and "gradio_auth" in flags
    memory = api.get("/memory").json()
    assert memory["ram"]["total"] >= memory["ram"]["used"] > 0 and memory["ram"]["process"] > 0
    assert "cuda" in memory
    options = api.get("/options").json()
    for key in ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers", "samples_format",
                "samples_save", "grid_save", "send_seed", "send_size", "face_restoration_model"):
        assert key in options, key
    progress = api.get("/progress").json()
    assert {"progress", "eta_relative", "state", "current_image", "textinfo"} <= set(progress)
    extensions = {e["name"]: e for e in api.get("/extensions").json()}
    assert extensions["hires_fix"]["enabled"] and not extensions["broken_import"]["enabled"]


def test_post_routes_answer(api):
    for route in ("/refresh-checkpoints", "/refresh-vae", "/refresh-loras", "/interrupt", "/skip"):
        assert api.post(route).status_code == 200, route
    info = api.post("/png-info", json={"image": picture_b64("a cat\nSteps: 3, Seed: 7")}).json()
    assert info["info"].startswith("a cat") and "parameters" in info and "items" in info
    single = api.post("/extra-single-image", json={"image": picture_b64(), "upscaling_resize": 2,
                                                      "upscaler_1": "Lanczos"}).json()
    assert Image.open(io.BytesIO(base64.b64decode(single["image"]))).size == (96, 80)
    batch = api.post("/extra-batch-images", json={"imageList": [{"data": picture_b64(), "name": "a.png"}] * 2,
                                                  "upscaling_resize": 1}).json()
    assert len(batch["images"]) == 2 and "html_info" in batch


def test_after_unload_the_next_job_loads_the_checkpoint_again(api):
    loaded = api.get("/options").json()["sd_model_checkpoint"]
    before = api.post("/txt2img", json={**SMALL, "seed": 11}).json()["images"]
    assert api.post("/unload-checkpoint").status_code == 200
    made = api.post("/txt2img", json={**SMALL, "seed": 11})
    assert made.status_code == 200, made.text
    assert made.json()["images"] == before  # the same model, loaded again
    assert api.get("/options").json()["sd_model_checkpoint"] == loaded
    # Reload after unload still works (and is a no-op when the model is loaded).
    assert api.post("/unload-checkpoint").status_code == 200
    assert api.post("/reload-checkpoint").status_code == 200
    assert api.post("/reload-checkpoint").status_code == 200
    assert api.post("/txt2img", json=SMALL).status_code == 200


def test_interrogate_captions_with_the_installed_model_and_names_what_is_missing(api, tmp_path):
    from engine.devices import DeviceConfig
    from engine.postprocess.interrogate import Captioner
    from engine.jobs import JobQueue

    response = api.post("/interrogate", json={"image": picture_b64(), "model": "clip"})
    assert response.status_code == 200, response.text
    caption = response.json()["caption"]
    assert caption and set(caption.split()) <= {"a", "cat", "dog", "on", "the", "red", "blue", "photo",
                                                 "of", "sitting", "mat"}
    assert api.post("/interrogate", json={"image": picture_b64(), "model": "clip"}).json()["caption"] == caption
    refused = api.post("/interrogate", json={"image": picture_b64(), "model": "deepdanbooru"})
    assert refused.status_code == 400 and "DeepDanbooru" in refused.json()["detail"]
    unknown = api.post("/interrogate", json={"image": picture_b64(), "model": "nope"})
    assert unknown.status_code == 422 and "Unknown interrogator" in unknown.json()["detail"]
    # With no captioning model installed, the answer says what to install and where.
    lane = JobQueue()
    try:
        empty = Captioner(tmp_path / "models", DeviceConfig.choose(use_cpu=True, no_half=True))
        with pytest.raises(Exception) as missing:
            empty.caption(Image.new("RGB", (8, 8)), "clip", lane)
        assert missing.value.status == 400 and str(tmp_path / "models" / "BLIP") in missing.value.message
        assert "blip-image-captioning" in missing.value.message
    finally:
        lane.shutdown()


def test_override_settings_hold_for_one_request_only(api, demo_server):
    config = demo_server.data_dir / "config.json"
    before_options, before_file = api.get("/options").json(), config.read_text()
    body = {**SMALL, "seed": 3, "save_images": True,
            "override_settings": {"CLIP_stop_at_last_layers": 2, "samples_save": False, "emphasis": "None"}}
    saved_before = sorted(demo_server.data_dir.glob("outputs/txt2img-images/*/*.png"))
    result = api.post("/txt2img", json=body)
    assert result.status_code == 200, result.text
    infotext = json.loads(result.json()["info"])["infotexts"][0]
    assert "Clip skip: 2" in infotext and "Emphasis: None" in infotext
    assert sorted(demo_server.data_dir.glob("outputs/txt2img-images/*/*.png")) == saved_before  # not saved
    assert api.get("/options").json() == before_options and config.read_text() == before_file
    plain = json.loads(api.post("/txt2img", json={**SMALL, "seed": 3}).json()["info"])["infotexts"][0]
    assert "Clip skip: 2" not in plain


def test_override_checkpoint_for_one_request_then_back(api):
    before = api.get("/options").json()["sd_model_checkpoint"]
    result = api.post("/txt2img", json={**SMALL, "override_settings": {"sd_model_checkpoint": "tiny-folder"}})
    assert result.status_code == 200, result.text
    assert json.loads(result.json()["info"])["sd_model_name"] == "tiny-folder"
    after = api.post("/txt2img", json=SMALL).json()
    assert json.loads(after["info"])["sd_model_name"] == "demo-tiny"
    assert api.get("/options").json()["sd_model_checkpoint"] == before


@pytest.mark.parametrize("overrides, words", [
    ({"CLIP_stop_at_last_layers": 40}, "between 1 and 12"),
    ({"sd_model_checkpoint": "nope"}, "Checkpoint not found"),
])
def test_bad_override_settings_are_refused(api, overrides, words):
    response = api.post("/txt2img", json={**SMALL, "override_settings": overrides})
    assert 400 <= response.status_code < 500
    assert words in response.json()["detail"]


def test_openapi_documents_every_sdapi_route(demo_server):
    schema = httpx.get(demo_server.url + "/openapi.json").json()
    documented = {path.removeprefix("/sdapi/v1") for path in schema["paths"] if path.startswith("/sdapi/v1")}
    compat = {"/txt2img", "/img2img", "/progress", "/interrupt", "/skip", "/options", "/cmd-flags",
              "/samplers", "/schedulers", "/upscalers", "/latent-upscale-modes", "/sd-models", "/sd-vae",
              "/hypernetworks", "/face-restorers", "/realesrgan-models", "/prompt-styles", "/embeddings",
              "/loras", "/memory", "/scripts", "/script-info", "/extensions", "/refresh-checkpoints",
              "/refresh-vae", "/png-info", "/interrogate", "/extra-single-image", "/extra-batch-images",
              "/unload-checkpoint", "/reload-checkpoint", "/merge-checkpoints"}
    assert compat <= documented, compat - documented
    assert httpx.get(demo_server.url + "/docs").status_code == 200


def test_api_calls_are_logged_when_the_setting_asks(api, demo_server):
    api.get("/sd-vae")
    assert "API GET /sdapi/v1/sd-vae" not in demo_server.log()
    assert api.post("/options", json={"api_log_requests": True}).status_code == 200
    try:
        api.get("/sd-vae")
    finally:
        api.post("/options", json={"api_log_requests": False})
    assert "API GET /sdapi/v1/sd-vae by 127.0.0.1 -> 200" in demo_server.log()


def test_settings_that_change_the_app_for_everyone_are_not_overridden_for_one_request(api):
    before = api.get("/options").json()["disabled_extensions"]
    response = api.post("/txt2img", json={**SMALL, "override_settings": {"disabled_extensions": ["hires_fix"],
                                                                        "no_such_setting": 1}})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    # Accepted, left alone, and named: a client's whole job never fails over one setting.
    assert info["ignored_settings"] == ["no_such_setting", "disabled_extensions"]
    assert any("no_such_setting" in warning for warning in info["warnings"])
    assert api.get("/options").json()["disabled_extensions"] == before


def test_huge_numbers_in_options_are_a_clear_4xx(api):
    for body in ({"jpeg_quality": 10**400}, {"CLIP_stop_at_last_layers": 10**400}):
        response = api.post("/options", json=body)
        assert response.status_code == 422, response.text
    response = api.post("/txt2img", json={**SMALL, "override_settings": {"jpeg_quality": 10**400}})
    assert response.status_code == 422
