"""The /sdapi/v1 API through a real server on 127.0.0.1 (app.py --demo --api)."""

import base64
import contextlib
import io
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from engine.output.infotext import parse

SMALL = {"prompt": "a cat", "steps": 3, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def api(demo_server):
    with httpx.Client(base_url=demo_server.url + "/sdapi/v1", timeout=120) as client:
        yield client


@contextlib.contextmanager
def file_put_back(path: Path):
    """The server is shared: whatever a test writes to `path` is undone after it, failed or not."""
    kept = path.read_bytes() if path.exists() else None
    try:
        yield path
    finally:
        if kept is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(kept)


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_txt2img_returns_a_png_with_infotext(api):
    response = api.post("/txt2img", json=SMALL)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"images", "parameters", "info"}
    image = decode(body["images"][0])
    assert image.format == "PNG" and image.size == (64, 64)
    text = image.info["parameters"]
    assert text.startswith("a cat\nSteps: 3, Sampler: Euler, ")
    info = json.loads(body["info"])
    assert info["infotexts"] == [text]
    assert info["seed"] == info["all_seeds"][0] and info["sd_model_name"] == "demo-tiny"
    assert parse(text)[2]["Seed"] == str(info["seed"])
    assert body["parameters"]["prompt"] == "a cat" and body["parameters"]["steps"] == 3


def test_same_seed_same_bytes_and_batches_over_the_api(api):
    one = api.post("/txt2img", json={**SMALL, "seed": 99}).json()
    two = api.post("/txt2img", json={**SMALL, "seed": 99}).json()
    assert one["images"] == two["images"]
    batch = api.post("/txt2img", json={**SMALL, "seed": 99, "batch_size": 2}).json()
    assert len(batch["images"]) == 2  # nothing saved by default, so no grid
    assert json.loads(batch["info"])["all_seeds"] == [99, 100]
    # The same picture; a batch of two may round a value differently on some CPUs (the
    # convolutions' arithmetic depends on the batch size), so pixels may be off by one.
    first, alone = (np.asarray(decode(b64), dtype=int) for b64 in (batch["images"][0], one["images"][0]))
    assert np.abs(first - alone).max() <= 2


def test_save_images_writes_files_and_returns_the_grid_first(api, demo_server):
    body = api.post("/txt2img", json={**SMALL, "seed": 7, "batch_size": 2, "save_images": True}).json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 3 and info["index_of_first_image"] == 1
    assert decode(body["images"][0]).size == (128, 64)
    saved = sorted((demo_server.data_dir / "outputs" / "txt2img-images").rglob("*-7.png"))
    assert saved and Image.open(saved[-1]).info["parameters"] == info["infotexts"][1]


def test_infotext_fills_the_fields_not_given(api):
    first = api.post("/txt2img", json={**SMALL, "seed": 5, "sampler_name": "DPM++ 2M"}).json()
    text = json.loads(first["info"])["infotexts"][0]
    again = api.post("/txt2img", json={"infotext": text}).json()
    assert again["images"] == first["images"]
    changed = api.post("/txt2img", json={"infotext": text, "seed": 6}).json()
    assert json.loads(changed["info"])["seed"] == 6


def test_listing_routes(api):
    samplers = api.get("/samplers").json()
    names = [s["name"] for s in samplers]
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "UniPC", "LCM"} <= set(names)
    assert {"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}} in samplers
    schedulers = api.get("/schedulers").json()
    assert [s["label"] for s in schedulers][:3] == ["Automatic", "Uniform", "Karras"]
    models = api.get("/sd-models").json()
    assert models[0]["model_name"] == "demo-tiny" and len(models[0]["hash"]) == 10
    # A1111's keys, and the family (an SD Studio addition A1111 clients ignore).
    assert set(models[0]) == {"title", "model_name", "hash", "sha256", "filename", "config", "family"}
    assert models[0]["family"] == "SD 1.x"
    flags = api.get("/cmd-flags").json()
    assert flags["demo"] is True and flags["api"] is True
    assert api.post("/refresh-checkpoints").status_code == 200


def test_options_get_and_set_persist(api, demo_server):
    options = api.get("/options").json()
    assert options["sd_model_checkpoint"].startswith("demo-tiny")
    try:
        assert api.post("/options", json={"grid_save": False}).status_code == 200
        assert api.get("/options").json()["grid_save"] is False
        saved = json.loads((demo_server.data_dir / "config.json").read_text())
        assert saved["grid_save"] is False
    finally:  # the server is shared: a failure here must not leave grids off for later tests
        api.post("/options", json={"grid_save": True})


@pytest.mark.parametrize("body, status, words", [
    ({"sd_model_checkpoint": "no-such-model"}, 400, "Checkpoint not found"),
    ({"grid_save": "sometimes"}, 422, "grid_save"),
    ({"show_progress_every_n_steps": 0}, 422, "between 1 and 100"),
])
def test_bad_options_are_refused(api, body, status, words):
    response = api.post("/options", json=body)
    assert response.status_code == status
    assert words in response.text


def test_progress_and_interrupt(api):
    outcome = {}

    def long_job():
        outcome["response"] = api.post("/txt2img", json={**SMALL, "steps": 150, "n_iter": 3})

    worker = threading.Thread(target=long_job)
    worker.start()
    try:
        progress = {}
        deadline = time.time() + 60
        while time.time() < deadline:
            progress = api.get("/progress").json()
            if progress["state"]["sampling_step"] >= 3:
                break
            time.sleep(0.05)
        assert 0 < progress["progress"] < 1
        assert progress["state"]["sampling_steps"] == 450
        assert progress["state"]["job"]
        assert api.post("/interrupt").status_code == 200
        worker.join(60)
    finally:  # the server is shared: a failure above must not leave the long job running
        if worker.is_alive():
            api.post("/interrupt")
            worker.join(60)
    info = json.loads(outcome["response"].json()["info"])
    assert info["interrupted"] is True and len(info["all_seeds"]) == 1
    idle = api.get("/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job"] == ""
    assert api.post("/skip").status_code == 200


@pytest.mark.parametrize("body, status, field, words", [
    ({"width": 60}, 422, "width", "between 64 and 2048"),
    ({"height": 99999}, 422, "height", "between 64 and 2048"),
    ({"steps": 0}, 422, "steps", "between 1 and 150"),
    ({"batch_size": 9}, 422, "batch_size", "between 1 and 8"),
    ({"seed": 2**40}, 422, "seed", "between -1"),
    ({"cfg_scale": 1e9}, 422, "cfg_scale", "between 1 and 30"),
    ({"sampler_name": "Nope"}, 400, "sampler_name", "Sampler not found"),
    ({"scheduler": "Wobbly"}, 422, "scheduler", "Unknown schedule type"),
    ({"prompt": "x" * 20001}, 422, "prompt", "too long"),
    ({"refiner_checkpoint": "sdxl-refiner"}, 422, "refiner_checkpoint", "Checkpoint not found: 'sdxl-refiner'"),
    ({"refiner_checkpoint": "tiny-folder", "refiner_switch_at": 0}, 422, "refiner_switch_at", "between 0.01 and 1"),
    ({"enable_hr": True, "hr_scale": 9}, 422, "extensions", "between 1 and 4"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 40}}, 422, "CLIP_stop_at_last_layers", "between 1 and 12"),
])
def test_bad_input_names_the_field(api, body, status, field, words):
    response = api.post("/txt2img", json={**SMALL, **body})
    assert response.status_code == status, response.text
    error = response.json()
    assert error["field"] == field and words in error["detail"]


@pytest.mark.parametrize("content", [b"{not json", b'{"steps": "many"}', b'{"seed": [1]}', b"[]"])
def test_malformed_bodies_are_422_and_name_the_problem(api, content):
    response = api.post("/txt2img", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "detail" in response.json()


def test_server_keeps_serving_after_bad_input(api):
    api.post("/txt2img", json={**SMALL, "width": 60})
    api.post("/txt2img", content=b"garbage", headers={"Content-Type": "application/json"})
    assert api.post("/txt2img", json=SMALL).status_code == 200


def test_openapi_lists_the_routes_and_the_ui_is_served(demo_server):
    spec = httpx.get(demo_server.url + "/openapi.json").json()
    for route in ("/sdapi/v1/txt2img", "/sdapi/v1/progress", "/sdapi/v1/options",
                  "/sdapi/v1/samplers", "/sdapi/v1/schedulers", "/sdapi/v1/sd-models",
                  "/sdapi/v1/interrupt", "/sdapi/v1/skip"):
        assert route in spec["paths"], route
    assert httpx.get(demo_server.url + "/docs").status_code == 200
    page = httpx.get(demo_server.url + "/")
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_switching_checkpoints_through_options(api):
    titles = [model["title"] for model in api.get("/sd-models").json()]
    assert any(title.startswith("tiny-folder") for title in titles)
    try:
        assert api.post("/options", json={"sd_model_checkpoint": "tiny-folder"}).status_code == 200
        assert api.get("/options").json()["sd_model_checkpoint"].startswith("tiny-folder [")
        text = json.loads(api.post("/txt2img", json=SMALL).json()["info"])["infotexts"][0]
        assert "Model: tiny-folder," in text
    finally:
        api.post("/options", json={"sd_model_checkpoint": "demo-tiny"})
    assert api.get("/options").json()["sd_model_checkpoint"].startswith("demo-tiny")


def test_loras_embeddings_styles_and_vaes_are_listed(api, demo_server):
    loras = api.get("/loras").json()
    assert [lora["name"] for lora in loras] == ["glowing-edges"]
    assert set(loras[0]) >= {"name", "alias", "path", "metadata"}
    assert api.post("/refresh-loras").status_code == 200
    assert api.get("/embeddings").json() == {"loaded": {}, "skipped": {}}
    assert api.get("/sd-vae").json() == []
    assert api.post("/refresh-vae").status_code == 200
    with file_put_back(demo_server.data_dir / "styles.csv") as styles:
        styles.write_text("name,prompt,negative_prompt\nNoir,\"{prompt}, black and white\",color\n")
        assert api.get("/prompt-styles").json() == [
            {"name": "Noir", "prompt": "{prompt}, black and white", "negative_prompt": "color"}]


def test_prompt_styles_lists_a_long_style_and_the_styles_around_a_damaged_row(api, demo_server):
    huge = ("long, \"quoted\"\n" * 15_000)[:200_000]  # past the csv module's 131,072 characters
    with file_put_back(demo_server.data_dir / "styles.csv") as path:
        path.write_bytes(b'name,prompt,negative_prompt\r\nbefore,b,\r\nbroken,"never closed\r\n'
                         + b'huge,"' + huge.replace('"', '""').encode() + b'",-lowres\r\nafter,a,n\r\n')
        assert api.get("/prompt-styles").json() == [
            {"name": "before", "prompt": "b", "negative_prompt": ""},
            {"name": "huge", "prompt": huge, "negative_prompt": "-lowres"},
            {"name": "after", "prompt": "a", "negative_prompt": "n"}]


def test_styles_loras_and_override_settings_in_txt2img(api, demo_server):
    with file_put_back(demo_server.data_dir / "styles.csv") as styles:
        styles.write_text("name,prompt,negative_prompt\nNoir,\"{prompt}, black and white\",color\n")
        styled = api.post("/txt2img", json={**SMALL, "seed": 4, "styles": ["Noir"]}).json()
    info = json.loads(styled["info"])
    assert info["prompt"] == "a cat, black and white" and info["negative_prompt"] == "color"
    assert info["styles"] == ["Noir"]

    plain = api.post("/txt2img", json={**SMALL, "seed": 4}).json()
    lora = api.post("/txt2img", json={**SMALL, "seed": 4,
                                      "prompt": "a cat <lora:glowing-edges:1>"}).json()
    assert lora["images"] != plain["images"]
    assert "Lora hashes: \"glowing-edges: " in json.loads(lora["info"])["infotexts"][0]
    missing = api.post("/txt2img", json={**SMALL, "seed": 4, "prompt": "a cat <lora:nope:1>"}).json()
    assert json.loads(missing["info"])["warnings"] == ["LoRA not found: nope"]
    assert decode(missing["images"][0]).tobytes() == decode(plain["images"][0]).tobytes()

    skipped = api.post("/txt2img", json={**SMALL, "seed": 4,
                                         "override_settings": {"CLIP_stop_at_last_layers": 2}}).json()
    text = json.loads(skipped["info"])["infotexts"][0]
    assert "Clip skip: 2" in text and skipped["images"] != plain["images"]
    assert api.get("/options").json()["CLIP_stop_at_last_layers"] == 1, "only for that request"
    again = api.post("/txt2img", json={"infotext": text}).json()
    assert again["images"] == skipped["images"], "the infotext carries the clip skip"


def test_tiling_and_always_on_extensions_by_title(api):
    tiled = api.post("/txt2img", json={**SMALL, "seed": 3, "tiling": True})
    assert tiled.status_code == 200, tiled.text
    assert "Tiling: True" in json.loads(tiled.json()["info"])["infotexts"][0]
    glow = api.post("/txt2img", json={**SMALL, "seed": 3, "alwayson_scripts": {"Glow": {"args": [True, 20]}}})
    assert glow.status_code == 200, glow.text
    assert "Glow: 20" in json.loads(glow.json()["info"])["infotexts"][0]
    by_name = api.post("/txt2img", json={**SMALL, "alwayson_scripts": {"glow": {"args": {"enabled": True}}}})
    assert "Glow: 40" in json.loads(by_name.json()["info"])["infotexts"][0]
    unknown = api.post("/txt2img", json={**SMALL, "alwayson_scripts": {"adetailer": {"args": []}}})
    assert unknown.status_code == 422 and "no extension called 'adetailer'" in unknown.text
    bad = api.post("/txt2img", json={**SMALL, "alwayson_scripts": {"Glow": {"args": [True, 900]}}})
    assert bad.status_code == 422 and "Glow amount" in bad.text


def test_hires_fix_fields(api):
    response = api.post("/txt2img", json={**SMALL, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos",
                                          "hr_second_pass_steps": 4, "denoising_strength": 0.5})
    assert response.status_code == 200, response.text
    image = decode(response.json()["images"][0])
    assert image.size == (96, 96)
    params = parse(image.info["parameters"])[2]
    assert params["Hires upscale"] == "1.5" and params["Hires steps"] == "4" and params["Denoising strength"] == "0.5"
    old_style = api.post("/txt2img", json={**SMALL, "width": 128, "height": 96, "enable_hr": True,
                                           "firstphase_width": 64, "firstphase_height": 64})
    assert decode(old_style.json()["images"][0]).size == (128, 96)
    bad = api.post("/txt2img", json={**SMALL, "enable_hr": True, "hr_upscaler": "4x-Nothing"})
    assert bad.status_code == 422 and "Upscaler must be one of" in bad.text


def test_scripts_and_script_info_list_scripts_and_extensions(api):
    scripts = api.get("/scripts").json()
    for tab in ("txt2img", "img2img"):
        # What clients look for before sending ControlNet units (webuiapi checks "controlnet m2m").
        assert scripts[tab][-2:] == ["controlnet", "controlnet m2m"]
        assert all(name == name.lower() for name in scripts[tab])  # titles in lower case, as A1111
    assert "hires. fix" in scripts["txt2img"] and "hires. fix" not in scripts["img2img"]
    # Selectable scripts first, then the always-on extensions, as the mature API lists them.
    assert scripts["img2img"].index("sd upscale") < scripts["img2img"].index("tiling")
    assert "outpainting" in scripts["img2img"] and "outpainting" not in scripts["txt2img"]
    info = api.get("/script-info").json()
    by_key = {(item["name"], item["is_img2img"]): item for item in info}
    assert not by_key[("outpainting", True)]["is_alwayson"] and not by_key[("sd upscale", True)]["is_alwayson"]
    assert [a["label"] for a in by_key[("sd upscale", True)]["args"]] == ["(unused)", "Tile overlap", "Upscaler",
                                                                          "Scale factor"]
    hires = by_key[("hires. fix", False)]
    assert hires["is_alwayson"] and [a["label"] for a in hires["args"]][:2] == ["Hires. fix", "Upscaler"]
    assert ("tiling", True) in by_key and ("glow", False) in by_key
    assert ("hires. fix", True) not in by_key  # hires fix is txt2img only


def test_restore_faces_and_face_restorers(api):
    response = api.post("/txt2img", json={**SMALL, "restore_faces": True})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["restore_faces"] is True and "Face restoration: Face detailer" in info["infotexts"][0]
    listed = {r["name"]: r for r in api.get("/face-restorers").json()}
    assert listed["Face detailer"]["available"] and listed["GFPGAN"]["available"]
    assert listed["GFPGAN"]["cmd_dir"].endswith("models/GFPGAN")
    assert listed["CodeFormer"]["available"] and listed["CodeFormer"]["cmd_dir"].endswith("models/Codeformer")


@pytest.mark.parametrize("content", [b'{"steps": NaN}', b'{"width": Infinity}', b'{"seed": -Infinity}',
                                     b'{"steps": "' + b"x" * 100000 + b'"}'])
def test_unprintable_bad_values_are_still_a_422(api, content):
    response = api.post("/txt2img", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"] and len(response.content) < 5000
