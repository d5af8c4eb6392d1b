"""Annotator weights downloaded on first use (engine/controlnet/annotator_downloads.py), from a
stand-in Hub on 127.0.0.1: checked against the checksum the Hub publishes, placed in the
ecosystem's sub-folder, never fetched twice, never used when they do not match, and not fetched
at all when downloads are off."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.controlnet import annotator_downloads as downloads
from engine.controlnet import annotators, preprocessors
from engine.controlnet.checks import check_units
from engine.controlnet.units import ControlUnit
from engine.engine import Engine
from engine.errors import RequestError
from engine.models.downloads import DownloadError
from tests import test_controlnet
from tests.support.addon_engines import engine_over
from tests.support.fake_hub import FakeHub, git_blob_id
from tests.support.ip_adapter_files import write_encoder_file, write_ip_adapter
from tests.test_controlnet_annotators import FAKE_AUX
from tests.test_controlnet_preprocessors import picture

MIDAS = "dpt_hybrid-midas-501f0c75.pt"
AUX_MODULES = ("controlnet_aux", "torchvision", "timm", "einops", "skimage")


@pytest.fixture
def online(monkeypatch):
    """Downloads allowed (the suite runs with HF_HUB_OFFLINE=1); HF_ENDPOINT set per test."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return monkeypatch


@pytest.fixture
def stand_in_aux(tmp_path, monkeypatch):
    """controlnet_aux (which cannot import here) replaced by a stand-in with its calling convention."""
    packages = tmp_path / "site"
    for module in AUX_MODULES:
        (packages / module).mkdir(parents=True)
        (packages / module / "__init__.py").write_text(FAKE_AUX if module == "controlnet_aux" else "")
    monkeypatch.syspath_prepend(str(packages))
    importlib.invalidate_caches()
    yield
    for module in AUX_MODULES:
        sys.modules.pop(module, None)


def test_the_offer_carries_the_checksum_the_hub_publishes(online):
    large, small = bytes(range(256)) * 40, b'{"a": 1}'
    with FakeHub({"owner/repo": {"big.pth": large, "config.json": small}}) as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        offer = downloads.published_offer("owner/repo", "big.pth")
        assert offer.sha256 == __import__("hashlib").sha256(large).hexdigest()
        assert offer.url == f"{hub.url}/owner/repo/resolve/main/big.pth" and offer.filename == "big.pth"
        plain = downloads.published_offer("owner/repo", "config.json")
        assert plain.sha256 == "" and plain.git_blob_sha1 == git_blob_id(small)
        with pytest.raises(downloads.NotPublished, match="owner/repo has no file absent.pth"):
            downloads.published_offer("owner/repo", "absent.pth")
        hub.checksums = False
        with pytest.raises(DownloadError, match="publishes no checksum for owner/repo/big.pth"):
            downloads.published_offer("owner/repo", "big.pth")


def test_a_preprocessor_downloads_its_weights_on_first_use_into_the_ecosystems_folder(
        tmp_path, online, stand_in_aux):
    weights = bytes(reversed(range(256))) * 64
    models = tmp_path / "models"
    with FakeHub({downloads.ANNOTATORS_REPO: {MIDAS: weights}}) as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        listed = {name: (ok, reason) for name, ok, reason in preprocessors.availability(models, may_download=True)}
        assert listed["depth_midas"] == (True, "")
        assert not dict((n, ok) for n, ok, _ in preprocessors.availability(models))["depth_midas"]
        loaded = annotators.Annotators("cpu")
        depth = preprocessors.run("depth_midas", picture(), 100, models_dir=models, annotators=loaded)
        target = models / "ControlNet" / "annotators" / "midas" / MIDAS
        assert target.read_bytes() == weights
        assert not list(target.parent.glob("*.part"))
        import controlnet_aux
        assert controlnet_aux.calls[0] == ("from_pretrained", str(target))
        asked = len(hub.requested)
        preprocessors.run("depth_midas", picture(), 100, models_dir=models, annotators=annotators.Annotators("cpu"))
        assert len(hub.requested) == asked   # there now: not fetched again
    assert depth.size == (150, 100)


def test_a_file_that_does_not_match_is_deleted_and_the_preprocessor_refused(tmp_path, online, stand_in_aux):
    weights = bytes(range(256)) * 64
    models = tmp_path / "models"
    with FakeHub({downloads.ANNOTATORS_REPO: {MIDAS: weights}}) as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        hub.tampered[MIDAS] = weights[:-1] + b"\0"
        with pytest.raises(DownloadError) as refused:
            preprocessors.run("depth_midas", picture(), 100, models_dir=models, annotators=annotators.Annotators("cpu"))
    message = refused.value.message
    assert refused.value.status == 502
    assert f"'depth_midas' needs {MIDAS} from lllyasviel/Annotators" in message
    assert "sha256 does not match" in message and "annotators/midas yourself" in message
    assert not any((models / "ControlNet" / "annotators").rglob("*.pt*"))   # neither the file nor its .part


def test_nothing_is_fetched_when_downloads_are_off(tmp_path, online, stand_in_aux):
    models = tmp_path / "models"
    with FakeHub({downloads.ANNOTATORS_REPO: {MIDAS: b"x" * 2048}}) as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        setting_off = annotators.Annotators("cpu", may_download=lambda: False)
        with pytest.raises(RequestError, match=f"'depth_midas' is not available: missing weights in .*{MIDAS}"):
            preprocessors.run("depth_midas", picture(), 100, models_dir=models, annotators=setting_off)
        online.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(RequestError, match="missing weights"):
            preprocessors.run("depth_midas", picture(), 100, models_dir=models, annotators=annotators.Annotators("cpu"))
        assert hub.requested == []


def test_an_unreachable_hub_names_the_files_to_put_in_place(tmp_path, online, stand_in_aux):
    online.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(DownloadError) as refused:
        preprocessors.run("openpose_full", picture(), 100, models_dir=tmp_path, annotators=annotators.Annotators("cpu"))
    assert "'openpose_full' needs body_pose_model.pth, hand_pose_model.pth, facenet.pth" in refused.value.message
    assert "Could not reach http://127.0.0.1:9" in refused.value.message


def _tiny_upernet(folder):
    from transformers import ConvNextConfig, UperNetConfig
    from transformers import UperNetForSemanticSegmentation as UperNet

    torch.manual_seed(0)
    backbone = ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                              out_features=["stage1", "stage2", "stage3", "stage4"])
    model = UperNet(UperNetConfig(backbone_config=backbone, hidden_size=16, use_auxiliary_head=False,
                                  num_labels=150))
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.2, 0.2], "do_rescale": True,
         "rescale_factor": 1 / 255}))
    return model


@pytest.mark.parametrize("weights_file", ["model.safetensors", "pytorch_model.bin"])
def test_segmentation_downloads_its_model_folder(tmp_path, online, weights_file):
    """The ADE20K folder comes from the Hub file by file, its weights under whichever name the
    Hub has; the map equals the one made from the same folder put in place by hand."""
    by_hand = tmp_path / "by-hand" / "ControlNet" / "annotators" / "seg_ade20k"
    model = _tiny_upernet(by_hand)
    if weights_file == "pytorch_model.bin":
        (by_hand / "model.safetensors").unlink()
        torch.save(model.state_dict(), by_hand / "pytorch_model.bin")
    files = {path.name: path.read_bytes() for path in by_hand.iterdir()}
    expected = preprocessors.run("seg_ofade20k", picture(), 100, models_dir=tmp_path / "by-hand",
                                 annotators=annotators.Annotators("cpu"))
    with FakeHub({downloads.SEG_REPO: files}) as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        fetched = preprocessors.run("seg_ofade20k", picture(), 100, models_dir=tmp_path / "fetched",
                                    annotators=annotators.Annotators("cpu"))
    placed = tmp_path / "fetched" / "ControlNet" / "annotators" / "seg_ade20k"
    assert sorted(path.name for path in placed.iterdir()) == sorted(files)
    assert all((placed / name).read_bytes() == data for name, data in files.items())
    assert np.array_equal(np.asarray(fetched), np.asarray(expected))
    tried = [path.rsplit("/", 1)[-1] for method, path in hub.requested if method == "HEAD"]
    assert tried == ["config.json", "preprocessor_config.json",
                     *(["model.safetensors"] if weights_file == "model.safetensors"
                       else ["model.safetensors", "pytorch_model.bin"])]


cn_engine = test_controlnet.cn_engine   # the session engine with its ControlNet folder, a module fixture


def test_the_engine_downloads_only_when_its_setting_allows(cn_engine, online, stand_in_aux):
    library = cn_engine.addons.controlnets
    online.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    depth = ControlUnit(enabled=True, module="depth_midas", model="tiny-cn", image=picture())
    [checked] = check_units((depth,), library, "sd1")   # accepted: its weights come on first use
    assert checked.model == "tiny-cn"
    with cn_engine.settings.overridden({"auto_download_models": False}):
        with pytest.raises(RequestError, match=f"preprocessor 'depth_midas' is not available: missing weights .*{MIDAS}"):
            check_units((depth,), library, "sd1")


def _ip_engine(engine, data: Path) -> Engine:
    unet = engine.models.require().base.unet
    write_ip_adapter(unet, data / "models" / "ControlNet" / "ip-adapter_sd15.safetensors", "plain", seed=1)
    return engine_over(engine, data)


def test_an_ip_adapter_unit_downloads_its_image_encoder_on_first_use(engine, tmp_path, online):
    """The same picture as with the encoder put in place by hand; the file lands where the
    encoders are looked for, and is fetched once."""
    by_hand = _ip_engine(engine, tmp_path / "by-hand")
    encoder = write_encoder_file(by_hand.addons.controlnets.folder / "annotators" / "clip_vision" / "clip_h.safetensors")
    unit = ControlUnit(enabled=True, module="ip-adapter_clip_sd15", model="ip-adapter_sd15", image=picture())
    request = test_controlnet.BASE.replace(controlnet_units=(unit,))
    expected = by_hand.generate(request)
    fetching = _ip_engine(engine, tmp_path / "fetching")
    source = ("h94/IP-Adapter", "models/image_encoder/model.safetensors")
    assert downloads.ENCODER_SOURCES["clip_h"] == source
    with FakeHub({source[0]: {source[1]: encoder.read_bytes()}}) as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        listed = {name: ok for name, ok, _ in preprocessors.availability(
            fetching.addons.controlnets.folder, may_download=True)}
        assert listed["ip-adapter_clip_sd15"] and listed["t2ia_style_clipvision"]
        result = fetching.generate(request)
        asked = len(hub.requested)
        fetching.generate(request)
        assert len(hub.requested) == asked
    placed = fetching.addons.controlnets.folder / "annotators" / "clip_vision" / "clip_h.safetensors"
    assert placed.read_bytes() == encoder.read_bytes()
    assert result.images[0].tobytes() == expected.images[0].tobytes()


def test_an_encoder_that_cannot_be_fetched_is_named_with_where_to_put_it(engine, tmp_path, online):
    fetching = _ip_engine(engine, tmp_path)
    online.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    unit = ControlUnit(enabled=True, module="ip-adapter_clip_sd15", model="ip-adapter_sd15", image=picture())
    with pytest.raises(DownloadError) as refused:
        fetching.generate(test_controlnet.BASE.replace(controlnet_units=(unit,)))
    message = refused.value.message
    assert "The CLIP ViT-H/14 image encoder (h94/IP-Adapter, models/image_encoder/model.safetensors) could not be " \
           "downloaded" in message and "as clip_h.safetensors into" in message
