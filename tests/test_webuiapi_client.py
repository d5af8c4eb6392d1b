"""The `webuiapi` package from PyPI (the most used AUTOMATIC1111 client) against the real server:
every one of its methods that applies to a server without extra extensions works unchanged."""

from __future__ import annotations

import inspect
import json
import threading
import time

import pytest
import webuiapi
from PIL import Image, ImageDraw

from engine.output.infotext import parse
from tests.test_controlnet import drawing

# Methods of webuiapi.WebUIApi that need something no A1111 install without extra extensions has,
# with the reason; every other public method is tested below.
NOT_APPLICABLE = {
    "get_artist_categories": "A1111 removed the artists route in 2022 (the client marks it deprecated)",
    "get_artists": "A1111 removed the artists route in 2022 (the client marks it deprecated)",
    "list_prompt_gen_models": "the promptgen extension",
    "prompt_gen": "the promptgen extension",
    "post_and_get_api_result": "an internal helper of the client, used by txt2img/img2img",
    "async_post": "an internal helper of the client (needs aiohttp)",
    "get_endpoint": "an internal helper of the client, used by custom_get/custom_post",
    "check_extensions": "called by the constructor (tested through has_controlnet)",
    "set_auth": "for servers with --api-auth (the login tests cover HTTP Basic)",
}


@pytest.fixture(scope="module")
def client(demo_server):
    port = int(demo_server.url.rsplit(":", 1)[1])
    return webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler a", steps=3)


def a_picture() -> Image.Image:
    image = Image.new("RGB", (64, 64), (40, 90, 160))
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=(230, 200, 40))
    return image


def test_every_method_is_either_tested_or_named_as_not_applicable():
    methods = {name for name, _ in inspect.getmembers(webuiapi.WebUIApi, inspect.isfunction)
               if not name.startswith("_")}
    tested = {name for name in methods if name not in NOT_APPLICABLE}
    source = inspect.getsource(inspect.getmodule(test_every_method_is_either_tested_or_named_as_not_applicable))
    untested = sorted(name for name in tested if f".{name}(" not in source)
    assert untested == [], f"webuiapi methods without a test: {untested}"
    assert set(NOT_APPLICABLE) <= methods
    print(f"webuiapi {webuiapi.__version__ if hasattr(webuiapi, '__version__') else ''}: "
          f"{len(tested)} of {len(methods)} methods apply and are tested")


def test_it_finds_controlnet_as_it_looks_for_it(client):
    assert client.has_controlnet  # "controlnet m2m" in /sdapi/v1/scripts
    scripts = client.get_scripts()
    assert "controlnet" in scripts["txt2img"] and "controlnet m2m" in scripts["img2img"]


def test_txt2img_and_hires_fix(client):
    result = client.txt2img(prompt="a lighthouse", seed=5, width=64, height=64, cfg_scale=6)
    assert result.image.size == (64, 64)
    assert result.info["seed"] == 5 and result.parameters["prompt"] == "a lighthouse"
    assert parse(result.image.info["parameters"])[2]["Sampler"] == "Euler a"
    hires = client.txt2img(prompt="a lighthouse", seed=5, width=64, height=64, enable_hr=True, hr_scale=2,
                           hr_upscaler=webuiapi.HiResUpscaler.Latent, denoising_strength=0.5)
    assert hires.image.size == (128, 128)
    params = parse(hires.info["infotexts"][0])[2]
    assert params["Hires upscaler"] == "Latent" and params["Denoising strength"] == "0.5"


def test_hires_fix_at_denoising_0_upscales_only(client):
    result = client.txt2img(prompt="a lighthouse", seed=5, width=64, height=64, enable_hr=True,
                            hr_upscaler=webuiapi.HiResUpscaler.Lanczos, denoising_strength=0)
    assert result.image.size == (128, 128)


def test_img2img_and_inpainting(client):
    picture = a_picture()
    result = client.img2img(images=[picture], prompt="a sun", seed=7, width=64, height=64,
                            denoising_strength=0.6, include_init_images=True)
    assert result.image.size == (64, 64) and len(result.images) == 1
    assert result.parameters["init_images"]  # echoed, as asked
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)
    inpainted = client.img2img(images=[picture], mask_image=mask, prompt="a sun", seed=7, width=64,
                               height=64, denoising_strength=0.9, inpaint_full_res=False)
    # Well outside the (blurred) mask the picture is kept.
    kept, original = inpainted.image.crop((48, 0, 64, 64)), picture.crop((48, 0, 64, 64))
    assert max(abs(a - b) for a, b in zip(kept.tobytes(), original.tobytes())) <= 2
    repainted = inpainted.image.crop((0, 0, 24, 64))
    assert repainted.tobytes() != picture.crop((0, 0, 24, 64)).tobytes()


def test_a_plain_call_after_a_controlnet_call_runs_no_controlnet(client):
    unit = webuiapi.ControlNetUnit(image=drawing(), module="canny", model="demo-controlnet", weight=1.2)
    controlled = client.txt2img(prompt="a house", seed=3, width=64, height=64, controlnet_units=[unit])
    assert "ControlNet 0" in controlled.info["infotexts"][0]
    plain = client.txt2img(prompt="a house", seed=3, width=64, height=64)
    assert "ControlNet" not in plain.info["infotexts"][0]
    assert plain.image.tobytes() != controlled.image.tobytes()


def test_extras(client):
    single = client.extra_single_image(image=a_picture(), upscaler_1=webuiapi.Upscaler.Lanczos, upscaling_resize=2)
    assert single.image.size == (128, 128)
    batch = client.extra_batch_images(images=[a_picture(), a_picture()], upscaler_1="Nearest", upscaling_resize=1.5)
    assert [image.size for image in batch.images] == [(96, 96), (96, 96)]


def test_png_info_and_interrogate(client):
    made = client.txt2img(prompt="a boat", seed=9, width=64, height=64)
    info = client.png_info(made.image)
    assert info.info == made.image.info["parameters"]  # "info" is the infotext string
    caption = client.interrogate(a_picture())
    assert isinstance(caption.info, str) and caption.info


def test_options_and_models(client, demo_server):
    options = client.get_options()
    assert options["sd_model_checkpoint"] and options["samples_format"] == "png"
    assert client.set_options({"samples_format": "jpg"}) is None
    assert client.get_options()["samples_format"] == "jpg"
    client.set_options({"samples_format": "png"})
    names = client.util_get_model_names()
    # Titles carry the hash once it is known ("tiny-folder [c639aa0291]").
    assert any(name.startswith("tiny-folder") for name in names)
    assert any(name.startswith("demo-tiny") for name in names)
    current = client.util_get_current_model()
    client.util_set_model("tiny-folder")  # lower-cased and matched to the closest, as it does
    assert client.util_get_current_model().startswith("tiny-folder")
    client.util_set_model(current)
    assert client.util_get_current_model() == current
    assert client.refresh_checkpoints() is None
    assert any(m["model_name"] == "tiny-folder" for m in client.get_sd_models())


def test_listings(client):
    assert "Euler a" in client.util_get_sampler_names() and client.get_samplers()[0]["name"]
    assert "karras" in client.util_get_scheduler_names() and client.get_schedulers()[0]["label"]
    upscalers = [u["name"] for u in client.get_upscalers()]
    assert {"None", "Lanczos", "Nearest", "R-ESRGAN 4x+", "tiny-x4"} <= set(upscalers)
    assert "Latent" in [m["name"] for m in client.get_latent_upscale_modes()]
    assert "R-ESRGAN 4x+" in [m["name"] for m in client.get_realesrgan_models()]
    assert {"GFPGAN", "CodeFormer"} <= {f["name"] for f in client.get_face_restorers()}
    assert any(lora["name"] == "glowing-edges" for lora in client.get_loras())
    assert client.get_hypernetworks() == []
    assert isinstance(client.get_sd_vae(), list) and isinstance(client.get_prompt_styles(), list)
    assert {"loaded", "skipped"} <= set(client.get_embeddings())
    assert client.get_memory()["ram"]["total"] > 0
    flags = client.get_cmd_flags()
    assert flags["api"] is True and "lora_dir" in flags and "xformers" in flags


def test_progress_interrupt_skip_and_waiting(client):
    assert client.get_progress()["state"]["job_count"] >= 0
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(r=client.txt2img(
        prompt="a long one", seed=1, width=64, height=64, steps=150, n_iter=3)))
    worker.start()
    deadline = time.time() + 60
    while time.time() < deadline and client.get_progress()["state"]["sampling_step"] == 0:
        time.sleep(0.1)
    client.skip()
    client.interrupt()
    worker.join(120)
    assert outcome["r"].info["interrupted"] is True
    client.util_wait_for_ready(check_interval=0.2)
    assert client.get_progress()["state"]["job_count"] == 0


def test_controlnet_routes(client):
    assert client.controlnet_version() >= 2
    assert "demo-controlnet" in client.controlnet_model_list()
    assert "canny" in client.controlnet_module_list()
    # The client sends its images as controlnet_images (not the extension's own name): both work.
    detected = client.controlnet_detect([drawing()], module="canny", processor_res=64,
                                        threshold_a=100, threshold_b=200)
    assert len(detected.images) == 1 and detected.images[0].size[0] > 0


def test_custom_routes(client):
    assert client.custom_get("internal/ping") == {}
    assert "sd_model_checkpoint" in client.custom_get("options", baseurl=True)
    posted = client.custom_post("png-info", payload={"image": webuiapi.b64_img(a_picture())}, baseurl=True)
    assert posted.json["info"] == ""
    assert json.loads(json.dumps(posted.json))  # a plain JSON answer
