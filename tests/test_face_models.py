"""GFPGAN and CodeFormer: the networks read the published files' layout, and restore faces in
jobs, in Extras and through the API, only where the faces are."""

import numpy as np
import pytest
import torch
from PIL import Image

from engine.postprocess import faces
from engine.errors import RequestError
from engine.postprocess.extras import ExtrasRequest
from engine.postprocess.face_models import FaceModelLibrary
from engine.postprocess.face_models.gfpgan import GFPGAN, gfpgan_from_state_dict
from engine.models.model_catalogue import ModelNotDownloaded
from engine.request import GenerationRequest
from tests.support.face_image import picture_with_a_face
from tests.support.face_model_files import (
    tiny_gfpgan,
    write_codeformer_file,
    write_gfpgan_file,
)

BASE_REQUEST = GenerationRequest(prompt="a face", steps=4, width=64, height=64, save_images=False, save_grid=False)


def _changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max(-1) > 0


def test_the_default_gfpgan_is_the_published_v1_4_network():
    with torch.device("meta"):
        model = GFPGAN()
    state = model.state_dict()
    assert model.input_size == 512
    assert len(state) == 285 and sum(p.numel() for p in model.parameters()) == 86_444_252
    assert state["conv_body_first.weight"].shape == (32, 3, 1, 1)
    assert state["final_linear.weight"].shape == (16 * 512, 256 * 16)
    assert state["stylegan_decoder.style_convs.13.modulated_conv.weight"].shape == (1, 64, 64, 3, 3)
    assert state["condition_scale.6.2.weight"].shape == (32, 32, 3, 3)
    assert state["stylegan_decoder.noises.noise14"].shape == (1, 1, 512, 512)
    assert "stylegan_decoder.style_mlp.15.weight" in state and "toRGB.6.weight" in state


def test_a_file_reads_back_into_the_same_network(tmp_path):
    path = write_gfpgan_file(tmp_path / "GFPGANv1.4.pth", seed=3)
    loaded = gfpgan_from_state_dict(torch.load(path, weights_only=True))
    face = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        out = loaded(face)
        assert torch.equal(out, tiny_gfpgan(3)(face))
    assert loaded.input_size == 64 and out.shape == face.shape and out.abs().max() <= 1
    assert out.std() > 0.05  # not a flat picture


@pytest.mark.parametrize("state, words", [
    ({"conv_first.weight": torch.zeros(1)}, "not a GFPGAN state dict"),
    ({"conv_body_first.weight": torch.zeros(1), "stylegan_decoder.style_convs.0.modulated_conv.weight_orig":
      torch.zeros(1)}, "original GFPGAN v1 architecture"),
])
def test_other_files_are_refused_by_name(state, words):
    with pytest.raises(ValueError, match=words):
        gfpgan_from_state_dict(state)


@pytest.fixture
def library(tmp_path):
    write_gfpgan_file(tmp_path / "GFPGAN" / "GFPGANv1.3.pth", seed=1)
    write_gfpgan_file(tmp_path / "GFPGAN" / "GFPGANv1.4.pth", seed=2)
    (tmp_path / "GFPGAN" / "detection_Resnet50_Final.pth").write_bytes(b"not a restorer")
    return FaceModelLibrary(tmp_path)


def test_the_newest_file_is_used_and_kept_loaded(library):
    assert library.weights("GFPGAN").name == "GFPGANv1.4.pth"
    assert library.model("GFPGAN") is library.model("GFPGAN")
    listed = {r.name: r for r in faces.restorers(library)}
    assert listed["GFPGAN"].available
    assert not listed["CodeFormer"].available
    assert listed["CodeFormer"].reason == ("no CodeFormer weights in models/Codeformer (put codeformer-v0.1.0.pth "
                                           "there, or let the app download it: 377 MB)")
    assert listed["CodeFormer"].missing_weights


def test_gfpgan_restores_only_the_face(library):
    picture = picture_with_a_face()
    restored = faces.restore_with_model(picture, library, "GFPGAN", "cpu")
    changed = _changed(restored, picture)
    [box] = faces.detect_faces(picture)
    left, top, right, bottom = faces._aligned_box(box)
    assert changed[max(0, top):bottom, left:right].mean() > 0.3
    outside = changed.copy()
    outside[max(0, top):bottom, left:right] = False
    assert not outside.any()
    half = faces.restore_with_model(picture, library, "GFPGAN", "cpu", visibility=0.5)
    middle = (np.asarray(picture, dtype=np.float32) + np.asarray(restored, dtype=np.float32)) / 2
    assert np.abs(np.asarray(half, dtype=np.float32) - middle).max() <= 1.0
    plain = Image.linear_gradient("L").resize((160, 120)).convert("RGB")
    assert faces.restore_with_model(plain, library, "GFPGAN", "cpu").tobytes() == plain.tobytes()


def test_a_face_at_the_edge_is_restored_without_shifting_the_picture(library):
    picture = picture_with_a_face(at=(0, 112))  # the framing reaches past the left and bottom
    restored = faces.restore_with_model(picture, library, "GFPGAN", "cpu")
    assert restored.size == picture.size and _changed(restored, picture)[:, :40].any()
    assert not _changed(restored, picture)[:, 260:].any()


def test_an_unreadable_weight_file_is_a_clear_error(tmp_path):
    (tmp_path / "GFPGAN").mkdir()
    (tmp_path / "GFPGAN" / "GFPGANv1.4.pth").write_bytes(b"truncated")
    with pytest.raises(RequestError, match="GFPGANv1.4.pth' could not be read as plain weights"):
        FaceModelLibrary(tmp_path).model("GFPGAN")


@pytest.fixture
def with_gfpgan(engine):
    """The session engine with a tiny GFPGAN file in its models folder, removed afterwards."""
    path = write_gfpgan_file(engine.addons.faces.models_dir / "GFPGAN" / "GFPGANv1.4.pth")
    yield engine
    path.unlink()


def test_extras_blends_gfpgan_in_and_says_so(with_gfpgan):
    picture = picture_with_a_face()
    result = with_gfpgan.extras(ExtrasRequest(picture, upscaler="None", scale=1, gfpgan_visibility=0.7),
                                save=False).outcome()
    assert _changed(result.image, picture).any() and "GFPGAN visibility: 0.7" in result.extras
    # No CodeFormer file yet: the message names the file and folder (the UI offers the download).
    with pytest.raises(ModelNotDownloaded, match="'CodeFormer' needs codeformer-v0.1.0.pth .* in models/Codeformer"):
        with_gfpgan.extras(ExtrasRequest(picture, upscaler="None", scale=1, codeformer_visibility=1))


def test_restore_faces_with_gfpgan_in_a_job(engine, tmp_path):
    from tests.test_faces import BASE, engine_with_face_painter
    write_gfpgan_file(tmp_path / "models" / "GFPGAN" / "GFPGANv1.4.pth")
    painter = engine_with_face_painter(engine, tmp_path)
    request = BASE.replace(width=320, height=256, extensions={"face_painter": {"enabled": True}})
    painted = painter.generate(request).images[0]
    restored = painter.generate(request.replace(extensions={
        "face_painter": {"enabled": True}, "restore_faces": {"enabled": True, "restorer": "GFPGAN"}}))
    assert "Face restoration: GFPGAN" in restored.infotexts[0]
    assert restored.images[0].tobytes() == faces.restore_with_model(painted, painter.addons.faces, "GFPGAN",
                                                                     "cpu").tobytes()


def test_codeformer_restores_only_the_face_and_its_weight_matters(tmp_path):
    write_codeformer_file(tmp_path / "Codeformer" / "codeformer.pth")
    library = FaceModelLibrary(tmp_path)
    picture = picture_with_a_face()
    most = faces.restore_with_model(picture, library, "CodeFormer", "cpu", fidelity=0.0)
    least = faces.restore_with_model(picture, library, "CodeFormer", "cpu", fidelity=1.0)
    assert most.tobytes() != least.tobytes()
    [box] = faces.detect_faces(picture)
    left, top, right, bottom = faces._aligned_box(box)
    outside = _changed(most, picture)
    assert outside[max(0, top):bottom, left:right].any()
    outside[max(0, top):bottom, left:right] = False
    assert not outside.any()


def test_codeformer_weight_comes_from_the_settings(engine):
    request = engine.complete(BASE_REQUEST.replace(extensions={"restore_faces": {"enabled": True}}))
    assert request.extensions["restore_faces"]["codeformer_weight"] == engine.settings["code_former_weight"] == 0.5


@pytest.mark.parametrize("name, content", [("GFPGANv1.4.pth", "lora"), ("GFPGANv1.4.safetensors", b"\x00" * 7)])
def test_a_file_that_is_not_a_restorer_is_a_clear_error(tmp_path, name, content):
    (tmp_path / "GFPGAN").mkdir()
    if content == "lora":
        torch.save({"params_ema": {"lora_unet.weight": torch.zeros(2)}}, tmp_path / "GFPGAN" / name)
    else:
        (tmp_path / "GFPGAN" / name).write_bytes(content)
    with pytest.raises(RequestError, match=f"'{name}'"):
        FaceModelLibrary(tmp_path).model("GFPGAN")
