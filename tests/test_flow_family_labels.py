"""/sdapi/v1/sd-models names each checkpoint's family, read from the real files' headers (the
tiny FLUX.1 / SD 3.5 models written in the layouts users download, the SD test checkpoints)."""

from __future__ import annotations

import shutil

import httpx
import pytest

from engine.models.family_labels import FamilyLabels, family_label
from engine.models.registry import CheckpointInfo
from engine.models.tiny_flow_models import build_tiny_flow_components
from tests.support.flow_writers import single_file_state, write


@pytest.fixture(scope="module")
def flow_checkpoints(tmp_path_factory):
    """file name -> the family /sd-models must give it."""
    folder = tmp_path_factory.mktemp("flow-checkpoints")
    dev, schnell = build_tiny_flow_components("flux-dev"), build_tiny_flow_components("flux-schnell")
    large = build_tiny_flow_components("sd3.5-large")
    write(single_file_state("flux", dev, ("clip_l", "t5xxl")), folder / "flux1-dev-aio.safetensors")
    write(single_file_state("flux", schnell, vae=False, prefix=""), folder / "flux1-schnell.safetensors")
    write(single_file_state("sd3", large), folder / "sd3.5_large.safetensors")
    return folder, {"flux1-dev-aio.safetensors": "FLUX.1-dev", "flux1-schnell.safetensors": "FLUX.1-schnell",
                    "sd3.5_large.safetensors": "SD 3.5 Large"}


def info(path) -> CheckpointInfo:
    return CheckpointInfo(path.name, str(path), "safetensors")


def test_each_family_is_read_from_the_file(flow_checkpoints, tiny_models):
    folder, expected = flow_checkpoints
    for name, family in expected.items():
        assert family_label(info(folder / name)) == family
    for sd_family, label in (("sd1", "SD 1.x"), ("sd2", "SD 2.x"), ("sdxl", "SDXL")):
        assert family_label(info(tiny_models.checkpoint(sd_family))) == label
    assert family_label(CheckpointInfo("old.ckpt", str(folder / "old.ckpt"), "pickle")) is None


def test_a_file_replaced_under_the_same_name_is_read_again(flow_checkpoints, tmp_path):
    folder, _ = flow_checkpoints
    target = tmp_path / "model.safetensors"
    labels = FamilyLabels()
    shutil.copy(folder / "flux1-schnell.safetensors", target)
    assert labels.of(info(target)) == "FLUX.1-schnell"
    shutil.copy(folder / "sd3.5_large.safetensors", target)   # another size: another signature
    assert labels.of(info(target)) == "SD 3.5 Large"
    target.unlink()
    assert labels.of(info(target)) is None


def test_sd_models_reports_each_family(demo_server, flow_checkpoints):
    folder, expected = flow_checkpoints
    checkpoints = demo_server.data_dir / "models" / "Stable-diffusion"
    for name in expected:
        shutil.copy(folder / name, checkpoints / name)
    api = httpx.Client(base_url=demo_server.url + "/sdapi/v1", timeout=120)
    try:
        api.post("/refresh-checkpoints")
        families = {model["filename"].replace("\\", "/").rsplit("/", 1)[-1]: model["family"]
                    for model in api.get("/sd-models").json()}
        for name, family in expected.items():
            assert families[name] == family
        assert families["tiny-folder"] == "SD 1.x"
        schema = httpx.get(demo_server.url + "/openapi.json").json()
        assert "family" in schema["components"]["schemas"]["SDModelItem"]["properties"]
    finally:
        for name in expected:
            (checkpoints / name).unlink()
        api.post("/refresh-checkpoints")
        api.close()
