"""Control-LoRA files (Stability's format): the ControlNet is the loaded UNet's encoder with each
`<layer>.up` @ `<layer>.down` added to its weight and every other tensor of the file replacing its
own, built for the checkpoint in use. Checked tensor by tensor against that sum computed here, and
end to end on the demo model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from safetensors.torch import save_file

from engine.addons import AddOns
from engine.controlnet.layouts import diffusers_to_ldm_keys
from engine.controlnet.models import ControlNetLibrary
from engine.devices import DeviceConfig
from engine.engine import Engine
from engine.errors import CheckpointError
from engine.files import HashCache
from tests.test_controlnet import BASE, drawing, pixels, unit

CPU = DeviceConfig.choose(use_cpu=True)
HINT = (4, 8, 16, 32)
RANK = 2


def write_control_lora(unet, path, seed: int = 0, sdxl_marker: bool = False) -> dict[str, torch.Tensor]:
    """A Control-LoRA for `unet` in the file layout Stability publishes, and the ControlNet
    weights (diffusers names, float64) it stands for."""
    generator = torch.Generator().manual_seed(seed)
    base = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT).double()
    state = base.state_dict()
    ldm = diffusers_to_ldm_keys(state)
    unet_keys = set(unet.state_dict())
    tensors: dict[str, torch.Tensor] = {"lora_controlnet": torch.tensor([])}
    expected = {}
    for key, value in state.items():
        name = ldm[key]
        shared = key in unet_keys
        if shared and key.endswith(".weight") and value.ndim >= 2:
            up = torch.randn(value.shape[0], RANK, generator=generator, dtype=torch.float64) * 0.1
            down = torch.randn(RANK, *value.shape[1:], generator=generator, dtype=torch.float64) * 0.1
            layer = name[:-len(".weight")]
            tensors[f"{layer}.up"], tensors[f"{layer}.down"] = up.float(), down.float()
            expected[key] = value + (up.float().double() @ down.float().double().flatten(1)).reshape(value.shape)
        elif shared:
            expected[key] = value.clone()   # a bias or norm the file leaves to the UNet
        else:   # the hint encoder, zero convolutions and middle-block output: the file's own
            full = torch.randn(value.shape, generator=generator) * 0.2
            tensors[name] = full
            expected[key] = full.double()
    if sdxl_marker:
        tensors["label_emb.0.0.weight"] = torch.zeros(4, 4)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return expected


@pytest.fixture(scope="module")
def lora_engine(engine, tmp_path_factory):
    data = tmp_path_factory.mktemp("control-lora")
    unet = engine.models.require().base.unet
    write_control_lora(unet, data / "models" / "ControlNet" / "control-lora-canny-rank2.safetensors")
    return Engine(engine.models, engine.writer, engine.settings,
                  AddOns.in_data_dir(data, HashCache(data / "cache.json")), queue=engine.queue), data


def test_the_controlnet_is_the_unet_plus_the_files_low_rank_changes(engine, tmp_path):
    unet = engine.models.require().base.unet
    path = tmp_path / "control-lora-depth-rank2.safetensors"
    expected = write_control_lora(unet, path, seed=3)
    library = ControlNetLibrary(tmp_path, CPU)
    assert library.family("control-lora-depth-rank2") == "sd1"
    built = library.load("control-lora-depth-rank2", unet=unet)
    ours = built.state_dict()
    assert set(ours) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(ours[key].double(), value, rtol=0, atol=1e-5, msg=key)
    with pytest.raises(CheckpointError, match="Control-LoRA"):
        library.load("control-lora-depth-rank2")   # without a UNet there is nothing to build from
    # Built afresh for each UNet: another checkpoint's weights give another network.
    other = library.load("control-lora-depth-rank2", unet=unet)
    assert other is not built


def test_a_control_lora_for_another_family_is_refused_by_name(engine, tmp_path):
    unet = engine.models.require().base.unet
    write_control_lora(unet, tmp_path / "control-lora-sdxl.safetensors", sdxl_marker=True)
    library = ControlNetLibrary(tmp_path, CPU)
    assert library.family("control-lora-sdxl") == "sdxl"
    with pytest.raises(CheckpointError, match="SDXL"):
        library.load("control-lora-sdxl", unet=unet)


def test_a_control_lora_unit_steers_the_picture_and_leaves_the_unet_as_it_was(lora_engine):
    lora, _ = lora_engine
    plain = lora.generate(BASE)
    controlled = lora.generate(BASE.replace(controlnet_units=(unit(model="control-lora-canny-rank2"),)))
    assert np.abs(pixels(controlled) - pixels(plain)).mean() > 0.5
    oval = lora.generate(BASE.replace(controlnet_units=(unit(model="control-lora-canny-rank2",
                                                             image=drawing(shape="oval")),)))
    assert np.abs(pixels(controlled) - pixels(oval)).mean() > 0.1   # the control picture matters
    weightless = lora.generate(BASE.replace(controlnet_units=(unit(model="control-lora-canny-rank2", weight=0.0),)))
    assert weightless.images[0].tobytes() == plain.images[0].tobytes()
    assert lora.generate(BASE).images[0].tobytes() == plain.images[0].tobytes()   # the UNet untouched
    assert 'Model: control-lora-canny-rank2' in controlled.infotexts[0]


def test_a_file_that_does_not_fit_the_unet_is_refused_by_name(engine, tmp_path):
    unet = engine.models.require().base.unet
    path = tmp_path / "stray.safetensors"
    write_control_lora(unet, path)
    from safetensors.torch import load_file
    tensors = load_file(str(path))
    tensors["input_blocks.99.0.in_layers.2.up"] = torch.zeros(4, 2)
    tensors["input_blocks.99.0.in_layers.2.down"] = torch.zeros(2, 4)
    save_file(tensors, str(path))
    library = ControlNetLibrary(tmp_path, CPU)
    with pytest.raises(CheckpointError, match="does not fit"):
        library.load("stray", unet=unet)
