"""The upscaler names the ecosystem's web UI ships ("R-ESRGAN 4x+", "SwinIR 4x", "ScuNET GAN", ...)
resolve to their weight files under the ecosystem's own file names and folders, are listed
before they are downloaded, and say which file to put where when it is missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.addons import AddOns
from engine.engine import Engine
from engine.postprocess.extras import ExtrasRequest
from engine.models.model_catalogue import STANDARD, ModelCatalogue, ModelNotDownloaded
from engine.files import HashCache
from engine.request import GenerationRequest, ScriptChoice
from engine.postprocess.upscalers import UpscalerLibrary
from tests.conftest import make_engine
from tests.support.esrgan_files import tiny_rrdbnet
from tests.support.upscaler_files import (
    save_published_way,
    tiny_compact,
    tiny_scunet,
    tiny_swinir,
)
from tests.test_upscalers import old_layout
from tests.support.requests import img2img_request

# The ecosystem's v1.10 names, folders and download names (modules/realesrgan_model.py,
# esrgan_model.py, extensions-builtin/SwinIR and ScuNET, gfpgan_model.py, codeformer_model.py).
ECOSYSTEM = {
    "R-ESRGAN 4x+": ("RealESRGAN", "RealESRGAN_x4plus.pth", 4),
    "R-ESRGAN 4x+ Anime6B": ("RealESRGAN", "RealESRGAN_x4plus_anime_6B.pth", 4),
    "R-ESRGAN General 4xV3": ("RealESRGAN", "realesr-general-x4v3.pth", 4),
    "R-ESRGAN General WDN 4xV3": ("RealESRGAN", "realesr-general-wdn-x4v3.pth", 4),
    "R-ESRGAN AnimeVideo": ("RealESRGAN", "realesr-animevideov3.pth", 4),
    "R-ESRGAN 2x+": ("RealESRGAN", "RealESRGAN_x2plus.pth", 2),
    "ESRGAN_4x": ("ESRGAN", "ESRGAN_4x.pth", 4),
    "SwinIR 4x": ("SwinIR", "SwinIR_4x.pth", 4),
    "ScuNET GAN": ("ScuNET", "ScuNET.pth", 4),
    "ScuNET PSNR": ("ScuNET", "scunet_color_real_psnr.pth", 4),
    "GFPGAN": ("GFPGAN", "GFPGANv1.4.pth", 4),
    "CodeFormer": ("Codeformer", "codeformer-v0.1.0.pth", 4),
}


def test_the_catalogue_holds_the_ecosystem_names_files_and_folders():
    catalogue = ModelCatalogue()
    for name, (folder, filename, scale) in ECOSYSTEM.items():
        entry = catalogue.get(name)
        assert (entry.folder, entry.filename, entry.scale) == (folder, filename, scale), name
        assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0
        assert catalogue.url(entry).startswith("https://github.com/")
    assert catalogue.url(catalogue.get("R-ESRGAN 4x+")) == \
        "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth"
    assert catalogue.url(catalogue.get("SwinIR 4x")).endswith("003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth")
    assert len({entry.sha256 for entry in STANDARD}) == len(STANDARD)
    mirror = ModelCatalogue.from_environment({"SD_STUDIO_GITHUB_ENDPOINT": "http://mirror.lan:8080/"})
    assert mirror.url(mirror.get("GFPGAN")) == \
        "http://mirror.lan:8080/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth"


def picture(width=20, height=16) -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture
def models(tmp_path):
    for folder in ("ESRGAN", "RealESRGAN", "SwinIR", "ScuNET"):
        (tmp_path / folder).mkdir()
    return tmp_path


def library_in(models) -> UpscalerLibrary:
    return UpscalerLibrary([models / f for f in ("ESRGAN", "RealESRGAN", "SwinIR", "ScuNET")],
                           ModelCatalogue(), models)


def test_standard_names_are_listed_before_their_files_exist_and_say_what_is_missing(models):
    library = library_in(models)
    upscalers = [e.name for e in STANDARD if e.kind == "upscaler"]
    assert library.names() == sorted(upscalers, key=str.lower)
    with pytest.raises(ModelNotDownloaded, match=r"'R-ESRGAN 4x\+' needs RealESRGAN_x4plus.pth \(67 MB\) "
                                                 r"in models/RealESRGAN") as missing:
        library.upscale(picture(), "R-ESRGAN 4x+", 80, 64)
    assert missing.value.status == 409 and missing.value.entries[0].name == "R-ESRGAN 4x+"
    assert not list(models.rglob("*.pth"))


def _write_standard_files(models):
    save_published_way(tiny_rrdbnet(4), models / "RealESRGAN" / "RealESRGAN_x4plus.pth", "params_ema")
    save_published_way(tiny_rrdbnet(2, seed=1), models / "RealESRGAN" / "RealESRGAN_x2plus.pth", "params_ema")
    save_published_way(tiny_compact(0), models / "RealESRGAN" / "realesr-general-x4v3.pth", "params")
    torch.save(old_layout(tiny_rrdbnet(4, seed=2).state_dict()), models / "ESRGAN" / "ESRGAN_4x.pth")
    save_published_way(tiny_swinir(0), models / "SwinIR" / "SwinIR_4x.pth", "params_ema")
    save_published_way(tiny_scunet(0), models / "ScuNET" / "ScuNET.pth", None)


@pytest.mark.parametrize("name, architecture, scale", [
    ("R-ESRGAN 4x+", "RRDBNet", 4), ("R-ESRGAN 2x+", "RRDBNet", 2), ("R-ESRGAN General 4xV3", "CompactNet", 4),
    ("ESRGAN_4x", "RRDBNet", 4), ("SwinIR 4x", "SwinIR", 4), ("ScuNET GAN", "SCUNet", 1)])
def test_the_ecosystem_files_load_under_the_standard_names(models, name, architecture, scale):
    _write_standard_files(models)
    library = library_in(models)
    model = library.model(name)
    assert type(model).__name__ == architecture and model.scale == scale
    first = library.upscale(picture(), name, 60, 48)
    assert first.size == (60, 48)
    assert library.upscale(picture(), name, 60, 48).tobytes() == first.tobytes()  # deterministic


def test_files_are_listed_once_and_their_own_names_select_them(models):
    _write_standard_files(models)
    save_published_way(tiny_rrdbnet(4, seed=5), models / "ESRGAN" / "4x-custom.pth", "params_ema")
    library = library_in(models)
    assert "4x-custom" in library.names()
    assert not {"RealESRGAN_x4plus", "SwinIR_4x", "ScuNET"} & set(library.names())
    # The ecosystem lists a downloaded file by its file name, and writes that into infotexts.
    assert library.canonical("SwinIR_4x") == "SwinIR 4x" and library.canonical("ScuNET") == "ScuNET GAN"
    assert library.canonical("RealESRGAN_x4plus") == "R-ESRGAN 4x+"
    assert library.canonical("4x-custom") == "4x-custom" and library.canonical("4x-nothing") is None
    described = {d.name: d for d in library.describe()}
    assert described["SwinIR 4x"].path.name == "SwinIR_4x.pth" and described["SwinIR 4x"].family == "SwinIR 4x"
    assert described["R-ESRGAN AnimeVideo"].path is None
    assert described["R-ESRGAN AnimeVideo"].url.endswith("/v0.2.5.0/realesr-animevideov3.pth")
    assert described["4x-custom"].family == "ESRGAN_4x" and described["R-ESRGAN 2x+"].scale == 2


def test_a_2x_model_runs_again_to_reach_4x(models):
    _write_standard_files(models)
    library = library_in(models)
    calls = []
    model = library.model("R-ESRGAN 2x+")
    model.register_forward_hook(lambda *args: calls.append(1))
    assert library.upscale(picture(), "R-ESRGAN 2x+", 80, 64).size == (80, 64)
    assert len(calls) == 2


@pytest.fixture(scope="module")
def standard_engine(tiny_models, tmp_path_factory):
    data = tmp_path_factory.mktemp("standard-upscalers")
    base = make_engine(tiny_models, data)
    addons = AddOns.in_data_dir(data, HashCache(data / "cache.json"), catalogue=ModelCatalogue())
    _write_standard_files(data / "models")
    engine = Engine(base.models, base.writer, base.settings, addons, queue=base.queue)
    yield engine
    engine.shutdown()


def test_extras_hires_fix_and_sd_upscale_take_the_standard_names(standard_engine):
    engine = standard_engine
    assert {"R-ESRGAN 4x+", "SwinIR 4x", "ScuNET PSNR"} <= set(engine.upscaler_names())
    result = engine.extras(ExtrasRequest(picture(), upscaler="SwinIR_4x", scale=2), save=False).outcome()
    assert result.image.size == (40, 32) and "Postprocess upscaler: SwinIR 4x" in result.extras
    request = GenerationRequest(prompt="x", steps=3, width=64, height=64, sampler_name="Euler", seed=1,
                                save_images=False, save_grid=False,
                                extensions={"hires_fix": {"enabled": True, "upscaler": "R-ESRGAN 4x+", "scale": 1.5}})
    hires = engine.generate(request)
    assert hires.images[0].size == (96, 96) and "Hires upscaler: R-ESRGAN 4x+" in hires.infotexts[0]
    img2img = img2img_request(prompt="x", steps=4, width=64, height=64, sampler_name="Euler",
                              seed=2, init_images=(picture(64, 64),), denoising_strength=0.5,
                              script=ScriptChoice("sd_upscale", {"scale": 2.0, "overlap": 16, "upscaler": "ScuNET"}),
                              save_images=False, save_grid=False)
    upscaled = engine.generate(img2img)
    assert upscaled.images[0].size == (128, 128) and "SD upscale upscaler: ScuNET GAN" in upscaled.infotexts[0]


@pytest.mark.parametrize("make_request", [
    lambda: ExtrasRequest(picture(), upscaler="R-ESRGAN AnimeVideo", scale=2),
    lambda: GenerationRequest(prompt="x", steps=3, width=64, height=64, save_images=False, save_grid=False,
                              extensions={"hires_fix": {"enabled": True, "upscaler": "R-ESRGAN AnimeVideo"}}),
    lambda: img2img_request(prompt="x", steps=4, width=64, height=64, denoising_strength=0.5,
                            init_images=(picture(64, 64),),
                            script=ScriptChoice("sd_upscale", {"scale": 2.0, "overlap": 16,
                                                               "upscaler": "R-ESRGAN AnimeVideo"}),
                            save_images=False, save_grid=False),
])
def test_a_missing_standard_model_is_refused_before_the_queue(standard_engine, make_request):
    request = make_request()
    submit = standard_engine.extras if isinstance(request, ExtrasRequest) else standard_engine.submit
    with pytest.raises(ModelNotDownloaded, match="realesr-animevideov3.pth .* in models/RealESRGAN"):
        submit(request)


def test_ldsr_without_its_files_says_what_to_put_where(standard_engine):
    from engine.errors import RequestError
    for submit, request in (
            (standard_engine.extras, ExtrasRequest(picture(), upscaler="LDSR", scale=2)),
            (standard_engine.submit, GenerationRequest(prompt="x", steps=3, width=64, height=64, extensions={
                "hires_fix": {"enabled": True, "upscaler": "LDSR"}}))):
        with pytest.raises(RequestError, match=r"LDSR needs its model files.*model\.ckpt.*project\.yaml.*"
                                               r"LDSR.*[Uu]se R-ESRGAN 4x\+"):
            submit(request)
    assert "LDSR" not in standard_engine.upscaler_names()


def test_another_pass_starts_from_no_more_than_it_needs(models):
    """A 4x model one pass short of a target just under 4x: the second pass starts from the
    first's result shrunk to target / 4, never from the whole 4x picture (16x in memory)."""
    _write_standard_files(models)
    library = library_in(models)
    seen = []
    model = library.model("R-ESRGAN 4x+")
    handle = model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    try:
        result = library.upscale(picture(), "R-ESRGAN 4x+", 4 * picture().width + 8, 4 * picture().height)
    finally:
        handle.remove()
    assert result.size == (4 * picture().width + 8, 4 * picture().height)
    height, width = seen[-1]
    assert width * 4 <= 4 * picture().width + 8 + 4 and height <= picture().height + 1
