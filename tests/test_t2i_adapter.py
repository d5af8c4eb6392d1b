"""T2I-Adapters as ControlNet unit models: TencentARC's original SD 1.x layout and diffusers' layout
(file and folder) load offline as diffusers' T2IAdapter, and a unit adds the adapter's features
inside the UNet's encoder exactly as diffusers' own adapter path does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import T2IAdapter
from safetensors.torch import save_file

from engine.addons import AddOns
from engine.controlnet import t2i_adapter
from engine.controlnet.models import ControlNetLibrary
from engine.devices import DeviceConfig
from engine.engine import Engine
from engine.errors import CheckpointError
from engine.files import HashCache
from tests.test_controlnet import BASE, drawing, pixels, unit
from tests.test_controlnet_models import assert_same_weights

CPU = DeviceConfig.choose(use_cpu=True)
BLOCKS = 2


def tiny_adapter(unet, seed: int, grey: bool = False) -> T2IAdapter:
    torch.manual_seed(seed)
    adapter = T2IAdapter(in_channels=1 if grey else 3, channels=list(unet.config.block_out_channels),
                         num_res_blocks=BLOCKS, downscale_factor=8, adapter_type="full_adapter")
    with torch.no_grad():
        for param in adapter.parameters():
            param.copy_(torch.randn_like(param) * 0.2)
    return adapter.eval()


def original_layout(adapter: T2IAdapter) -> dict[str, torch.Tensor]:
    """The adapter under TencentARC's names, written out block by block from their scheme: a flat
    `body.N`, level L's block R being N = L * nums_rb + R, a level's projection on its first block."""
    inner = adapter.adapter
    tensors = {"conv_in.weight": inner.conv_in.weight, "conv_in.bias": inner.conv_in.bias}
    for level, block in enumerate(inner.body):
        if block.in_conv is not None:
            tensors[f"body.{level * BLOCKS}.in_conv.weight"] = block.in_conv.weight
            tensors[f"body.{level * BLOCKS}.in_conv.bias"] = block.in_conv.bias
        for number, resnet in enumerate(block.resnets):
            for conv in ("block1", "block2"):
                layer = getattr(resnet, conv)
                tensors[f"body.{level * BLOCKS + number}.{conv}.weight"] = layer.weight
                tensors[f"body.{level * BLOCKS + number}.{conv}.bias"] = layer.bias
    return {key: value.detach().contiguous().clone() for key, value in tensors.items()}


@pytest.fixture(scope="module")
def adapters(engine, tmp_path_factory):
    data = tmp_path_factory.mktemp("t2i")
    folder = data / "models" / "ControlNet"
    folder.mkdir(parents=True)
    unet = engine.models.require().base.unet
    made = {"t2iadapter_canny_sd15v2": tiny_adapter(unet, 1, grey=True),
            "t2iadapter_depth_sd15v2": tiny_adapter(unet, 2),
            "t2i-adapter-folder": tiny_adapter(unet, 3),
            "t2i-adapter-diffusers-file": tiny_adapter(unet, 4)}
    for name in ("t2iadapter_canny_sd15v2", "t2iadapter_depth_sd15v2"):
        save_file(original_layout(made[name]), str(folder / f"{name}.safetensors"))
    made["t2i-adapter-folder"].save_pretrained(folder / "t2i-adapter-folder")
    save_file({k: v.contiguous() for k, v in made["t2i-adapter-diffusers-file"].state_dict().items()},
              str(folder / "t2i-adapter-diffusers-file.safetensors"))
    return data, made


def test_every_layout_loads_offline_to_the_same_adapter(adapters, no_network):
    data, made = adapters
    library = ControlNetLibrary(data / "models" / "ControlNet", CPU)
    assert set(library.families().values()) == {"sd1"}
    for name, reference in made.items():
        loaded = library.load(name)
        assert t2i_adapter.is_adapter(loaded), name
        assert loaded.config.in_channels == reference.config.in_channels
        assert_same_weights(loaded, reference)


def test_a_file_with_blocks_that_do_not_form_levels_is_refused_by_name(adapters, tmp_path):
    _, made = adapters
    tensors = original_layout(made["t2iadapter_depth_sd15v2"])
    tensors["body.1.in_conv.weight"] = torch.zeros(2, 2, 1, 1)   # a projection mid-level
    tensors["body.1.in_conv.bias"] = torch.zeros(2)
    save_file(tensors, str(tmp_path / "odd.safetensors"))
    with pytest.raises(CheckpointError, match="first adapter block"):
        ControlNetLibrary(tmp_path, CPU).load("odd")


def test_the_unets_encoder_gets_the_adapter_features_as_diffusers_adds_them(adapters, engine):
    """One UNet call through the unit's hook equals the UNet called with diffusers'
    down_intrablock_additional_residuals of the adapter's features times the weight."""
    from engine.controlnet.apply import PreparedUnit, attached
    from engine.controlnet.units import ControlUnit

    _, made = adapters
    adapter = made["t2iadapter_depth_sd15v2"]
    unet = engine.models.require().base.unet
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    hidden = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    control = torch.rand(1, 3, 64, 64, generator=generator)
    item = PreparedUnit(0, ControlUnit(module="none", weight=0.7), adapter, control, None)
    with torch.no_grad(), attached(unet, [item], cfg=True, progress=lambda: (0, 4)):
        ours = unet(sample, torch.tensor(400.0), encoder_hidden_states=hidden, return_dict=False)[0]
    with torch.no_grad():
        states = [state * 0.7 for state in adapter(control)]
        theirs = unet(sample, torch.tensor(400.0), encoder_hidden_states=hidden, return_dict=False,
                      down_intrablock_additional_residuals=[s.expand(2, -1, -1, -1) for s in states])[0]
        plain = unet(sample, torch.tensor(400.0), encoder_hidden_states=hidden, return_dict=False)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert (ours - plain).abs().max() > 1e-3


@pytest.fixture(scope="module")
def adapter_engine(engine, adapters):
    data, _ = adapters
    return Engine(engine.models, engine.writer, engine.settings,
                  AddOns.in_data_dir(data, HashCache(data / "cache.json")), queue=engine.queue)


def test_an_adapter_unit_steers_the_picture(adapter_engine):
    plain = adapter_engine.generate(BASE)
    for model in ("t2iadapter_canny_sd15v2", "t2iadapter_depth_sd15v2"):
        square = adapter_engine.generate(BASE.replace(controlnet_units=(unit(model=model),)))
        oval = adapter_engine.generate(BASE.replace(controlnet_units=(unit(model=model, image=drawing(shape="oval")),)))
        assert np.abs(pixels(square) - pixels(plain)).mean() > 0.5, model
        assert np.abs(pixels(square) - pixels(oval)).mean() > 0.1, model
    weightless = adapter_engine.generate(BASE.replace(controlnet_units=(unit(model="t2iadapter_depth_sd15v2",
                                                                              weight=0.0),)))
    assert weightless.images[0].tobytes() == plain.images[0].tobytes()
    late = adapter_engine.generate(BASE.replace(controlnet_units=(unit(model="t2iadapter_depth_sd15v2",
                                                                        guidance_start=0.5),)))
    early = adapter_engine.generate(BASE.replace(controlnet_units=(unit(model="t2iadapter_depth_sd15v2"),)))
    assert late.images[0].tobytes() != early.images[0].tobytes()   # the window applies
