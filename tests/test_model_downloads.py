"""Standard models downloaded on first use, against a stand-in host on 127.0.0.1 whose files'
sha256 the test registers in its own catalogue: the API fetches a model a request names (when
`auto_download_models` allows), checks it, then uses it; with the setting off it names the file
to put where; a cut download resumes; a wrong file is deleted and reported; no host, no file."""

from __future__ import annotations

import argparse
import base64
import hashlib
import io

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from engine.addons import AddOns
from engine.models.downloads import DownloadError
from engine.engine import Engine
from engine.errors import RequestError
from engine.models.model_catalogue import ModelCatalogue, ModelNotDownloaded
from engine.files import HashCache
from engine.output.writer import png_bytes
from engine.settings.store import Settings
from tests.support.esrgan_files import tiny_rrdbnet
from tests.support.face_image import picture_with_a_face
from tests.support.face_model_files import write_gfpgan_file
from tests.support.fake_host import FileHost
from ui.api.routes import build_router
from ui.context import UIContext
from ui.server import install_error_handlers

REAL_ESRGAN = "/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth"
GFPGAN = "/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth"


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, bytes]:
    """The stand-in host's files: tiny models saved as the published ones are."""
    gfpgan = write_gfpgan_file(tmp_path_factory.mktemp("gfpgan") / "GFPGANv1.4.pth").read_bytes()
    return {REAL_ESRGAN: _saved({"params_ema": tiny_rrdbnet(4).state_dict()}), GFPGAN: gfpgan}


def _catalogue(url: str, files: dict[str, bytes], **sha_overrides) -> ModelCatalogue:
    """The standard catalogue pointed at the stand-in host, with the sha256 of its files."""
    catalogue = ModelCatalogue(endpoints={"github": url})
    for name, path in (("R-ESRGAN 4x+", REAL_ESRGAN), ("GFPGAN", GFPGAN)):
        digest = sha_overrides.get(name, hashlib.sha256(files[path]).hexdigest())
        catalogue = catalogue.replaced(name, sha256=digest, size=len(files[path]))
    return catalogue


def _api(engine, data, catalogue) -> tuple[TestClient, Engine]:
    addons = AddOns.in_data_dir(data, HashCache(data / "cache.json"), catalogue=catalogue)
    own = Engine(engine.models, engine.writer, Settings(data / "config.json"), addons, queue=engine.queue)
    ctx = UIContext(own, engine.models.registry, own.settings, argparse.Namespace())
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_router(ctx, lambda: None))
    return TestClient(app), own


def _b64(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image, None)).decode()


SMALL = Image.new("RGB", (24, 20), (40, 160, 90))


def test_the_api_downloads_a_named_model_checks_it_and_uses_it(engine, tmp_path, served):
    with FileHost(dict(served)) as host:
        client, own = _api(engine, tmp_path, _catalogue(host.url, served))
        assert own.settings["auto_download_models"] is True
        body = {"image": _b64(SMALL), "upscaler_1": "R-ESRGAN 4x+", "upscaling_resize": 2}
        response = client.post("/sdapi/v1/extra-single-image", json=body)
        assert response.status_code == 200, response.text
        target = tmp_path / "models" / "RealESRGAN" / "RealESRGAN_x4plus.pth"
        assert target.read_bytes() == served[REAL_ESRGAN]
        assert not list(tmp_path.rglob("*.part"))
        result = Image.open(io.BytesIO(base64.b64decode(response.json()["image"])))
        assert result.size == (48, 40)
        expected = own.addons.upscalers.upscale(SMALL, "R-ESRGAN 4x+", 48, 40)
        assert result.convert("RGB").tobytes() == expected.tobytes()  # the downloaded weights ran
        assert host.requested == [REAL_ESRGAN]
        assert client.post("/sdapi/v1/extra-single-image", json=body).status_code == 200
        assert host.requested == [REAL_ESRGAN]  # once on disk, used from there

        # A face restorer named by a request comes the same way.
        faces = client.post("/sdapi/v1/extra-single-image", json={
            "image": _b64(picture_with_a_face()), "upscaler_1": "None", "upscaling_resize": 1,
            "gfpgan_visibility": 1})
        assert faces.status_code == 200, faces.text
        assert (tmp_path / "models" / "GFPGAN" / "GFPGANv1.4.pth").read_bytes() == served[GFPGAN]
        assert "GFPGAN visibility: 1" in faces.json()["html_info"]


def test_with_the_setting_off_the_api_names_the_file_to_put_where(engine, tmp_path, served):
    with FileHost(dict(served)) as host:
        client, own = _api(engine, tmp_path, _catalogue(host.url, served))
        own.settings.update({"auto_download_models": False})
        response = client.post("/sdapi/v1/extra-single-image", json={
            "image": _b64(picture_with_a_face()), "upscaler_1": "None", "gfpgan_visibility": 0.5})
        assert response.status_code == 409
        assert response.json()["error"] == "ModelNotDownloaded"
        detail = response.json()["detail"]
        assert "GFPGANv1.4.pth" in detail and "models/GFPGAN" in detail and "auto_download_models" in detail
        hires = client.post("/sdapi/v1/txt2img", json={
            "prompt": "x", "steps": 2, "width": 64, "height": 64, "enable_hr": True,
            "hr_upscaler": "R-ESRGAN 4x+", "hr_scale": 1.5})
        assert hires.status_code == 409 and "RealESRGAN_x4plus.pth" in hires.json()["detail"]
        assert host.requested == [] and not list((tmp_path / "models").rglob("*.pth"))


def test_a_wrong_file_is_deleted_and_reported_and_the_server_keeps_serving(engine, tmp_path, served):
    with FileHost(dict(served)) as host:
        client, _ = _api(engine, tmp_path, _catalogue(host.url, served, **{"R-ESRGAN 4x+": "0" * 64}))
        response = client.post("/sdapi/v1/extra-single-image", json={
            "image": _b64(SMALL), "upscaler_1": "R-ESRGAN 4x+", "upscaling_resize": 2})
        assert response.status_code == 502
        assert "sha256 does not match" in response.json()["detail"]
        assert "RealESRGAN_x4plus.pth into models/RealESRGAN yourself" in response.json()["detail"]
        assert not list((tmp_path / "models" / "RealESRGAN").iterdir())
        assert client.get("/sdapi/v1/upscalers").status_code == 200


def test_no_host_means_a_clear_message_and_nothing_written(engine, tmp_path, served):
    unreachable = _catalogue("http://127.0.0.1:9", served)
    client, own = _api(engine, tmp_path, unreachable)
    response = client.post("/sdapi/v1/extra-single-image", json={
        "image": _b64(SMALL), "upscaler_1": "R-ESRGAN 4x+", "upscaling_resize": 2})
    assert response.status_code == 502 and "Could not reach http://127.0.0.1:9" in response.json()["detail"]
    assert not list((tmp_path / "models").rglob("*.pth*"))
    with pytest.raises(ModelNotDownloaded):
        own.addons.upscalers.require("R-ESRGAN 4x+")


def test_a_cut_download_is_never_used_and_resumes(engine, tmp_path, served):
    with FileHost(dict(served)) as host:
        _, own = _api(engine, tmp_path, _catalogue(host.url, served))
        FileHost.cut_after = 100_000
        with pytest.raises(DownloadError, match="try again to resume"):
            own.addons.downloads.fetch("R-ESRGAN 4x+")
        part = tmp_path / "models" / "RealESRGAN" / "RealESRGAN_x4plus.pth.part"
        assert part.stat().st_size == 100_000
        with pytest.raises(ModelNotDownloaded):  # the part file is not taken for the model
            own.addons.upscalers.model("R-ESRGAN 4x+")
        path = own.addons.downloads.fetch("R-ESRGAN 4x+")
        assert path.read_bytes() == served[REAL_ESRGAN] and not part.exists()
        assert own.addons.upscalers.upscale(SMALL, "R-ESRGAN 4x+", 96, 80).size == (96, 80)


def test_only_catalogue_entries_are_ever_fetched(engine, tmp_path, served):
    with FileHost(dict(served)) as host:
        client, own = _api(engine, tmp_path, _catalogue(host.url, served))
        for name in (f"{host.url}/evil.pth", "../../etc/passwd"):
            with pytest.raises(RequestError, match="is not a model this app downloads"):
                own.addons.downloads.fetch(name)
            response = client.post("/sdapi/v1/extra-single-image", json={"image": _b64(SMALL), "upscaler_1": name})
            assert response.status_code == 422 and "Upscaler not found" in response.json()["detail"]
        assert host.requested == []


def test_the_listings_name_the_standard_models_with_where_they_come_from(engine, tmp_path, served):
    client, _ = _api(engine, tmp_path, _catalogue("https://github.com", served))
    listed = {u["name"]: u for u in client.get("/sdapi/v1/upscalers").json()}
    assert list(listed)[:3] == ["None", "Lanczos", "Nearest"]
    plus = listed["R-ESRGAN 4x+"]
    assert plus["model_url"] == plus["model_path"] == "https://github.com" + REAL_ESRGAN and plus["scale"] == 4
    assert listed["R-ESRGAN 2x+"]["scale"] == 2 and listed["SwinIR 4x"]["model_name"] == "SwinIR 4x"
    assert {"ESRGAN_4x", "ScuNET GAN", "ScuNET PSNR", "R-ESRGAN AnimeVideo"} <= set(listed)
    realesrgan = client.get("/sdapi/v1/realesrgan-models").json()
    assert [m["name"] for m in realesrgan] == ["R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B", "R-ESRGAN General 4xV3",
                                              "R-ESRGAN General WDN 4xV3", "R-ESRGAN AnimeVideo", "R-ESRGAN 2x+"]
    assert realesrgan[0]["path"] == "https://github.com" + REAL_ESRGAN


def test_the_ui_offer_names_file_size_and_folder_and_its_button_fetches_only_that(engine, tmp_path, served):
    import types

    import gradio as gr

    from ui import model_offer

    with FileHost(dict(served)) as host:
        _, own = _api(engine, tmp_path, _catalogue(host.url, served))
        with pytest.raises(ModelNotDownloaded) as missing:
            own.addons.upscalers.require("R-ESRGAN 4x+")
        text = model_offer.offer_text(missing.value, own.addons.downloads.catalogue)
        assert "`RealESRGAN_x4plus.pth`" in text and "into `models/RealESRGAN`" in text
        size = own.addons.downloads.catalogue.get("R-ESRGAN 4x+").size_label
        assert f"({size})" in text and size.endswith("MB") and host.url + REAL_ESRGAN in text
        with gr.Blocks() as demo:
            offer = model_offer.offer_area("t")
            model_offer.wire(types.SimpleNamespace(engine=own), offer)
        [download] = [block.fn for block in demo.fns.values()]
        steps = list(download(["R-ESRGAN 4x+"]))
        assert steps[-1] == "Downloaded. Run it again."
        assert (tmp_path / "models" / "RealESRGAN" / "RealESRGAN_x4plus.pth").read_bytes() == served[REAL_ESRGAN]
        refused = list(download([host.url + GFPGAN]))
        assert "is not a model this app downloads" in refused[-1]
        assert host.requested == [REAL_ESRGAN]
