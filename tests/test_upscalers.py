"""Model upscalers (ESRGAN / Real-ESRGAN files) built as users download them, read back and used."""

import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from engine.addons import AddOns
from engine.engine import Engine
from engine.postprocess.esrgan import build_from_state, read_state
from engine.postprocess.extras import ExtrasRequest
from engine.files import HashCache
from engine.request import GenerationRequest, ScriptChoice
from engine.postprocess.upscalers import UpscalerLibrary
from tests.conftest import make_engine
from tests.support.esrgan_files import tiny_rrdbnet
from tests.support.requests import img2img_request


def old_layout(state: dict) -> dict:
    """The original ESRGAN key names for a Real-ESRGAN-layout state dict."""
    top = {"conv_first": "model.0", "conv_up1": "model.3", "conv_up2": "model.6", "conv_hr": "model.8",
           "conv_last": "model.10"}
    blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("body."))
    out = {}
    for key, value in state.items():
        if match := re.match(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)", key):
            b, r, c, kind = match.groups()
            out[f"model.1.sub.{b}.RDB{r}.conv{c}.0.{kind}"] = value
        elif key.startswith("conv_body."):
            out[f"model.1.sub.{blocks}.{key.split('.')[1]}"] = value
        else:
            name, kind = key.split(".")
            out[f"{top[name]}.{kind}"] = value
    return out


@pytest.fixture(scope="module")
def esrgan_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "models" / "ESRGAN"
    folder.mkdir(parents=True)
    x4 = tiny_rrdbnet(4)
    save_file({k: v.contiguous() for k, v in x4.state_dict().items()}, str(folder / "tiny-x4.safetensors"))
    torch.save({"params_ema": old_layout(x4.state_dict())}, folder / "tiny-x4-old.pth")
    save_file({k: v.contiguous() for k, v in tiny_rrdbnet(2, seed=1).state_dict().items()},
              str(folder / "tiny-x2.safetensors"))
    return folder


def picture(width=20, height=16) -> Image.Image:
    return Image.fromarray(np.random.default_rng(5).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_both_key_layouts_load_to_the_same_network(esrgan_dir):
    new = build_from_state(read_state(esrgan_dir / "tiny-x4.safetensors"), "new")
    old = build_from_state(read_state(esrgan_dir / "tiny-x4-old.pth"), "old")
    x = torch.rand(1, 3, 12, 10)
    assert new.scale == old.scale == 4
    with torch.no_grad():
        assert torch.equal(new(x), old(x)) and new(x).shape == (1, 3, 48, 40)
    x2 = build_from_state(read_state(esrgan_dir / "tiny-x2.safetensors"), "x2")
    assert x2.scale == 2 and x2(x).shape == (1, 3, 24, 20)


def test_the_library_lists_files_and_upscales_to_the_exact_size(esrgan_dir):
    library = UpscalerLibrary([esrgan_dir])
    assert library.names() == ["tiny-x2", "tiny-x4", "tiny-x4-old"]
    image = picture()
    assert library.upscale(image, "tiny-x4", 80, 64).size == (80, 64)
    assert library.upscale(image, "tiny-x4", 50, 30).size == (50, 30)
    # Pictures bigger than a tile go through in tiles and still come out whole.
    assert library.upscale(picture(200, 210), "tiny-x2", 400, 420).size == (400, 420)


def test_not_a_model_gets_a_message(tmp_path):
    from engine.errors import RequestError
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "junk.safetensors"))
    with pytest.raises(RequestError, match="not an ESRGAN"):
        UpscalerLibrary([tmp_path]).upscale(picture(), "junk", 40, 40)


@pytest.fixture(scope="module")
def upscaling_engine(tiny_models, esrgan_dir, tmp_path_factory):
    engine = make_engine(tiny_models, tmp_path_factory.mktemp("upscaling"))
    data = esrgan_dir.parent.parent
    engine = Engine(engine.models, engine.writer, engine.settings,
                    AddOns.in_data_dir(data, HashCache(data / "cache.json")), queue=engine.queue)
    yield engine
    engine.shutdown()


def test_extras_and_hires_fix_use_model_upscalers(upscaling_engine):
    assert "tiny-x4" in upscaling_engine.upscaler_names()
    result = upscaling_engine.extras(ExtrasRequest(picture(), upscaler="tiny-x4", width=64, height=32),
                                     save=False).outcome()
    assert result.image.size == (64, 32)
    request = GenerationRequest(prompt="x", steps=3, width=64, height=64, sampler_name="Euler", seed=1,
                                save_images=False, save_grid=False,
                                extensions={"hires_fix": {"enabled": True, "upscaler": "tiny-x4", "scale": 1.5}})
    hires = upscaling_engine.generate(request)
    assert hires.images[0].size == (96, 96) and "Hires upscaler: tiny-x4" in hires.infotexts[0]


def test_sd_upscale_with_a_model_upscaler(upscaling_engine):
    from engine.errors import RequestError
    request = img2img_request(prompt="x", steps=4, width=64, height=64, sampler_name="Euler",
                              seed=2, init_images=(picture(64, 64),), denoising_strength=0.5,
                              script=ScriptChoice("sd_upscale", {"scale": 2.0, "overlap": 16,
                                                                 "upscaler": "tiny-x4"}),
                              save_images=False, save_grid=False)
    result = upscaling_engine.generate(request)
    assert result.images[0].size == (128, 128) and "SD upscale upscaler: tiny-x4" in result.infotexts[0]
    with pytest.raises(RequestError, match="Upscaler not found: 'tiny-x9'"):
        upscaling_engine.submit(request.replace(script=ScriptChoice("sd_upscale", {"scale": 2.0, "overlap": 16,
                                                                                   "upscaler": "tiny-x9"})))
