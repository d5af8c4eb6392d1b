"""IP-Adapter units through the HTTP API: the ControlNet extension's routes list the modules and
models, `alwayson_scripts.controlnet` units with one or several reference pictures generate, and
bad units get a 4xx naming the problem."""

import json
import shutil

import httpx
import pytest
from PIL import Image

from tests.support.ip_adapter_files import write_encoder_folder, write_ip_adapter
from tests.test_ip_adapter import picture


@pytest.fixture(scope="module")
def server(demo_server):
    from engine.models.loading import CONFIG_ROOT
    from engine.models.tiny_models import build_demo_pipeline

    models = demo_server.data_dir / "models"
    unet = build_demo_pipeline(CONFIG_ROOT / "sd1" / "tokenizer").unet
    write_ip_adapter(unet, models / "ControlNet" / "ip-adapter_sd15.safetensors")
    encoder = models / "ControlNet" / "annotators" / "clip_vision" / "clip_h"
    write_encoder_folder(encoder)
    with httpx.Client(base_url=demo_server.url, timeout=120) as client:
        yield client
    (models / "ControlNet" / "ip-adapter_sd15.safetensors").unlink()
    shutil.rmtree(encoder)


def b64(image: Image.Image) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


SMALL = {"prompt": "a house", "steps": 3, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler"}


def txt2img(server, *units):
    return server.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"controlnet": {"args": list(units)}}})


def test_api_units_round_trip_and_list(server):
    assert "ip-adapter_sd15" in server.get("/controlnet/model_list").json()["model_list"]
    modules = server.get("/controlnet/module_list").json()
    assert {"ip-adapter_clip_sd15", "ip-adapter_clip_sdxl", "ip-adapter_clip_sdxl_plus_vith", "ip-adapter-auto",
            "ip-adapter_face_id", "ip-adapter_face_id_plus"} <= set(modules["module_list"])
    face = modules["module_detail"]["ip-adapter_face_id"]
    assert not face["available"] and "insightface" in face["reason"]
    plain = server.post("/sdapi/v1/txt2img", json=SMALL).json()
    ip = {"enabled": True, "module": "ip-adapter_clip_h", "model": "ip-adapter_sd15 [abcdef12]",
          "image": b64(picture())}
    response = txt2img(server, ip)
    assert response.status_code == 200, response.text
    assert response.json()["images"][0] != plain["images"][0]
    info = json.loads(response.json()["info"])
    assert "Module: ip-adapter_clip_sd15, Model: ip-adapter_sd15" in info["infotexts"][0]
    listed = txt2img(server, {**ip, "image": [b64(picture()), b64(picture("blue", "oval"))]})
    assert listed.status_code == 200, listed.text
    assert listed.json()["images"][0] != response.json()["images"][0]
    batch = txt2img(server, {**ip, "image": b64(picture()), "batch_images": [b64(picture("blue", "oval"))]})
    assert batch.json()["images"][0] == listed.json()["images"][0]


@pytest.mark.parametrize("fields, status, words", [
    ({"module": "ip-adapter_face_id"}, 422, ["insightface"]),
    ({"module": "ip-adapter_clip_sdxl"}, 422, ["clip_g", "clip_vision"]),
    ({"module": "ip-adapter_sparkles"}, 422, ["ip-adapter_sparkles"]),
    ({"image": ["not base64!"]}, 422, ["image"]),
    ({"batch_images": "somewhere/on/disk"}, 422, ["batch_images"]),
])
def test_api_bad_ip_units_get_a_4xx_naming_the_problem(server, fields, status, words):
    ip = {"enabled": True, "module": "ip-adapter_clip_sd15", "model": "ip-adapter_sd15", "image": b64(picture()),
          **fields}
    response = txt2img(server, ip)
    assert response.status_code == status, response.text
    assert all(word in response.text for word in words), response.text
