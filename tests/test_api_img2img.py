"""POST /sdapi/v1/img2img and /png-info through the real server (app.py --demo --api)."""

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from engine.output.infotext import parse
from engine.output.writer import png_bytes
from tests.support.bad_images import bomb_png, truncated_png
from tests.test_img2img import noise_image, square_mask

SMALL = {"prompt": "a cat", "steps": 4, "width": 64, "height": 64, "seed": 5}


@pytest.fixture(scope="module")
def api(demo_server):
    with httpx.Client(base_url=demo_server.url + "/sdapi/v1", timeout=120) as client:
        yield client


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


ORIGINAL = noise_image(seed=2)


def test_img2img_returns_an_image_and_infotext(api):
    response = api.post("/img2img", json={**SMALL, "init_images": [b64(ORIGINAL)],
                                          "denoising_strength": 0.5})
    assert response.status_code == 200, response.text
    body = response.json()
    image = decode(body["images"][0])
    assert image.size == (64, 64)
    _, _, params = parse(image.info["parameters"])
    assert params["Denoising strength"] == "0.5"
    info = json.loads(body["info"])
    assert info["denoising_strength"] == 0.5
    # Init images are not echoed back unless asked for.
    assert body["parameters"]["init_images"] is None


def test_inpaint_with_a_data_url_mask_keeps_the_outside(api):
    mask = "data:image/png;base64," + b64(square_mask())
    body = {**SMALL, "init_images": [b64(ORIGINAL)], "mask": mask, "mask_blur": 2,
            "inpainting_fill": 1, "inpaint_full_res": False, "include_init_images": True}
    response = api.post("/img2img", json=body)
    assert response.status_code == 200, response.text
    result = decode(response.json()["images"][0]).convert("RGB")
    diff = np.abs(np.asarray(result, dtype=np.int16) - np.asarray(ORIGINAL, dtype=np.int16)).max(-1)
    assert diff[:12].max() <= 1 and diff[28:36, 28:36].mean() > 20
    _, _, params = parse(decode(response.json()["images"][0]).info["parameters"])
    assert params["Mask blur"] == "2" and params["Masked content"] == "original"
    assert response.json()["parameters"]["mask"] == mask


def test_outpainting_script_grows_the_canvas(api):
    body = {**SMALL, "init_images": [b64(ORIGINAL)], "script_name": "Outpainting",
            "script_args": [32, 4, "fill", ["right"]]}
    response = api.post("/img2img", json=body)
    assert response.status_code == 200, response.text
    assert decode(response.json()["images"][0]).size == (96, 64)


def _truncated_png() -> str:
    return base64.b64encode(truncated_png()).decode()


def _bomb_png() -> str:
    return base64.b64encode(bomb_png()).decode()


@pytest.mark.parametrize("init, words", [
    ([], "init image"),
    (["bm90IGFuIGltYWdl"], "init_images[0] is not an image"),
    ([""], "init_images[0] is empty"),
    (["%%%"], "init_images[0]"),
    ([_truncated_png()], "damaged or truncated"),
    ([_bomb_png()], "limited to 16 megapixels"),
])
def test_bad_init_images_get_a_4xx_naming_the_problem(api, init, words):
    response = api.post("/img2img", json={**SMALL, "init_images": init})
    assert 400 <= response.status_code < 500, response.text
    assert words in response.text
    assert api.post("/img2img", json={**SMALL, "init_images": [b64(ORIGINAL)]}).status_code == 200


@pytest.mark.parametrize("extra, words", [
    ({"mask": b64(Image.new("L", (64, 64), 0))}, "mask is empty"),
    ({"resize_mode": 7}, "resize_mode"),
    ({"script_name": "outpainting", "script_args": [16, 4, "sideways"]}, "masked content"),
    ({"script_name": "img2img alternative test"}, "Script 'img2img alternative test' not found"),
    ({"script_name": "outpainting", "script_args": [16, 4, "fill", ["sideways"]]}, "unknown 'sideways'"),
])
def test_bad_img2img_options_are_refused(api, extra, words):
    response = api.post("/img2img", json={**SMALL, "init_images": [b64(ORIGINAL)], **extra})
    assert 400 <= response.status_code < 500, response.text
    assert words in response.text


def test_png_info_reads_our_infotext_and_other_tools(api):
    text = "a dog\nNegative prompt: ugly\nSteps: 7, Sampler: DPM++ 2M, CFG scale: 5, Seed: 4, Size: 64x64"
    response = api.post("/png-info", json={"image": base64.b64encode(png_bytes(ORIGINAL, text)).decode()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["info"] == text
    assert body["parameters"]["Prompt"] == "a dog" and body["parameters"]["Negative prompt"] == "ugly"
    assert body["parameters"]["Steps"] == "7" and body["parameters"]["Seed"] == "4"
    # A JPEG from the wider ecosystem keeps its infotext in EXIF UserComment (UTF-16).
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + text.encode("utf-16-be")
    buffer = io.BytesIO()
    ORIGINAL.save(buffer, format="JPEG", exif=exif)
    jpeg = api.post("/png-info", json={"image": base64.b64encode(buffer.getvalue()).decode()}).json()
    assert jpeg["info"] == text
    plain = api.post("/png-info", json={"image": b64(ORIGINAL)}).json()
    assert plain["info"] == "" and plain["parameters"] == {}
    bad = api.post("/png-info", json={"image": "bm90IGFuIGltYWdl"})
    assert bad.status_code == 422 and "not an image" in bad.text


def test_extras_routes(api):
    text = "a dog\nSteps: 7, Sampler: Euler, CFG scale: 5, Seed: 4, Size: 64x64"
    picture = base64.b64encode(png_bytes(ORIGINAL, text)).decode()
    single = api.post("/extra-single-image", json={"image": picture, "upscaler_1": "Lanczos",
                                                    "upscaling_resize": 1.5})
    assert single.status_code == 200, single.text
    image = decode(single.json()["image"])
    assert image.size == (96, 96) and image.info["parameters"] == text
    assert "Postprocess upscale by: 1.5" in single.json()["html_info"]
    batch = api.post("/extra-batch-images", json={
        "imageList": [{"data": picture, "name": "a.png"}, {"data": b64(noise_image(32, 32)), "name": "b.png"}],
        "resize_mode": 1, "upscaling_resize_w": 80, "upscaling_resize_h": 48, "upscaler_1": "Nearest"})
    assert batch.status_code == 200, batch.text
    assert [decode(i).size for i in batch.json()["images"]] == [(80, 48), (80, 48)]
    names = [u["name"] for u in api.get("/upscalers").json()]
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    assert {"name": "Latent (bicubic antialiased)"} in api.get("/latent-upscale-modes").json()
    assert "R-ESRGAN 4x+" in [m["name"] for m in api.get("/realesrgan-models").json()]
    for body, words in (({"image": picture, "upscaler_1": "4x-Magic"}, "Upscaler not found"),
                        ({"image": picture, "codeformer_visibility": 2}, "codeformer_visibility must be between 0 and 1"),
                        ({"image": "bm90IGFuIGltYWdl"}, "not an image")):
        response = api.post("/extra-single-image", json=body)
        assert response.status_code == 422 and words in response.text
    assert api.post("/extra-batch-images", json={"imageList": []}).status_code == 422


def test_sd_upscale_script(api):
    body = {**SMALL, "init_images": [b64(ORIGINAL)], "denoising_strength": 0.5,
            "script_name": "SD upscale", "script_args": [None, 32, 1, 1.5]}  # upscaler 1: Lanczos
    response = api.post("/img2img", json=body)
    assert response.status_code == 200, response.text
    image = decode(response.json()["images"][0])
    assert image.size == (96, 96)
    assert "SD upscale upscaler: Lanczos" in image.info["parameters"]
    bad = api.post("/img2img", json={**body, "script_args": [None, 32, 99, 2]})
    assert bad.status_code == 422 and "out of range" in bad.text


def test_model_upscalers_are_listed_and_used(api):
    listed = [u for u in api.get("/upscalers").json() if u["name"] == "tiny-x4"]
    assert listed and listed[0]["model_path"] == "tiny-x4.safetensors"
    response = api.post("/extra-single-image", json={"image": b64(ORIGINAL), "upscaler_1": "tiny-x4",
                                                      "upscaling_resize": 2})
    assert response.status_code == 200, response.text
    assert decode(response.json()["image"]).size == (128, 128)


@pytest.mark.parametrize("fields, words", [
    ({"gfpgan_visibility": 1}, "GFPGAN visibility: 1"),
    ({"codeformer_visibility": 0.8, "codeformer_weight": 0.3}, "CodeFormer visibility: 0.8, CodeFormer weight: 0.3"),
])
def test_extras_restores_faces_with_gfpgan_and_codeformer(api, fields, words):
    from tests.support.face_image import picture_with_a_face
    picture = picture_with_a_face()
    response = api.post("/extra-single-image", json={"image": b64(picture), "upscaler_1": "None",
                                                      "upscaling_resize": 1, **fields})
    assert response.status_code == 200, response.text
    restored = decode(response.json()["image"])
    assert restored.size == picture.size and restored.tobytes() != picture.tobytes()
    assert words in response.json()["html_info"]
