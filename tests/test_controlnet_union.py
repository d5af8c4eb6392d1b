"""ControlNet Union / ProMax (SDXL): one network for several kinds of control, told the kind by a
control type per unit. Files in the layouts xinsir publishes (a diffusers-layout .safetensors, a
diffusers folder) load offline as diffusers' ControlNetUnionModel; a unit runs it with the
control type it names or its preprocessor implies, as the ControlNet extension does."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.controlnet.apply import PreparedUnit, _residuals, union_type
from engine.controlnet.layouts import UNION_CONTROL_TYPES
from engine.controlnet.models import ControlNetLibrary
from engine.controlnet.tiny_controlnets import build_tiny_controlnet
from engine.controlnet.units import ControlUnit
from engine.devices import DeviceConfig
from engine.errors import RequestError
from engine.request import GenerationRequest
from tests.conftest import make_engine
from tests.test_controlnet_models import assert_same_weights
from tests.test_controlnet import drawing

CPU = DeviceConfig.choose(use_cpu=True)
JOB = GenerationRequest(prompt="a house", steps=3, width=64, height=64, sampler_name="Euler", seed=5,
                        save_images=False, save_grid=False)


@pytest.fixture(scope="module")
def union_files(tiny_models, tmp_path_factory):
    """models/ControlNet with a ProMax-like union model (8 types) as one diffusers-layout file,
    and a 6-type union model as a diffusers folder, both for the tiny SDXL UNet."""
    data = tmp_path_factory.mktemp("union")
    unet = tiny_models.reference_pipeline("sdxl").unet
    promax = build_tiny_controlnet(unet, seed=7, union_types=8)
    union = build_tiny_controlnet(unet, seed=8, union_types=6)
    folder = data / "models" / "ControlNet"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in promax.state_dict().items()},
              str(folder / "controlnet-union-promax-sdxl.safetensors"))
    union.save_pretrained(folder / "controlnet-union-sdxl-1.0")
    return data, promax, union


@pytest.fixture(scope="module")
def sdxl_engine(tiny_models, union_files, tmp_path_factory):
    data, _, _ = union_files
    engine = make_engine(tiny_models, data, checkpoint="tiny-sdxl")
    yield engine
    engine.shutdown()


def test_union_files_load_offline_as_union_models(union_files, no_network):
    data, promax, union = union_files
    library = ControlNetLibrary(data / "models" / "ControlNet", CPU)
    assert library.families() == {"controlnet-union-promax-sdxl": "sdxl", "controlnet-union-sdxl-1.0": "sdxl"}
    for name, reference in (("controlnet-union-promax-sdxl", promax), ("controlnet-union-sdxl-1.0", union)):
        loaded = library.load(name)
        assert type(loaded).__name__ == "ControlNetUnionModel"
        assert loaded.config.num_control_type == reference.config.num_control_type
        assert loaded.config.num_trans_head == reference.config.num_trans_head
        assert_same_weights(loaded, reference)


def test_the_control_type_comes_from_the_unit_or_its_preprocessor(union_files):
    _, promax, union = union_files
    assert union_type(0, ControlUnit(module="canny"), promax) == UNION_CONTROL_TYPES.index("Hard Edge")
    assert union_type(0, ControlUnit(module="depth_midas"), promax) == 1
    assert union_type(0, ControlUnit(module="tile_resample"), promax) == 6
    assert union_type(0, ControlUnit(module="canny", union_control_type="Depth"), promax) == 1
    plain = SimpleNamespace(config=SimpleNamespace(in_channels=4))   # an ordinary ControlNet's config
    assert union_type(0, ControlUnit(module="canny"), plain) is None
    with pytest.raises(RequestError) as error:
        union_type(0, ControlUnit(module="shuffle"), promax)
    assert error.value.field == "union_control_type" and "Soft Edge" in error.value.message
    with pytest.raises(RequestError) as error:
        union_type(2, ControlUnit(module="tile_resample"), union)   # 6 types: no Tile
    assert "first 6 control types" in error.value.message and "unit 2" in error.value.message
    with pytest.raises(RequestError):
        ControlUnit(enabled=True, model="x", union_control_type="Sketch").validate(0)


def test_a_union_unit_calls_the_model_with_its_one_hot_control_type(union_files, tiny_models):
    _, promax, _ = union_files
    unet = tiny_models.reference_pipeline("sdxl").unet
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    hidden = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    added = {"text_embeds": torch.randn(2, pooled, generator=generator), "time_ids": torch.zeros(2, 6)}
    control = torch.rand(1, 3, 64, 64, generator=generator)
    item = PreparedUnit(0, ControlUnit(module="canny", weight=0.8), promax, control, None, union_type=3)
    ours_down, ours_mid = _residuals(item, sample, torch.tensor(500.0), hidden, added, cfg=False, scale=8)
    kinds = torch.zeros(2, 8)
    kinds[:, 3] = 1
    down, mid = promax(sample, torch.tensor(500.0), encoder_hidden_states=hidden, controlnet_cond=[control.expand(2, -1, -1, -1)],
                       control_type=kinds, control_type_idx=[3], conditioning_scale=0.8, added_cond_kwargs=added,
                       return_dict=False)
    for a, b in zip([*ours_down, ours_mid], [*down, mid]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    item.union_type = 1
    other_down, _ = _residuals(item, sample, torch.tensor(500.0), hidden, added, cfg=False, scale=8)
    assert (other_down[0] - ours_down[0]).abs().max() > 0   # the type matters


def _picture(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def test_union_units_generate_and_weight_zero_is_no_unit(sdxl_engine):
    def unit(**fields):
        return ControlUnit(**{"enabled": True, "module": "canny", "model": "controlnet-union-promax-sdxl",
                              "image": drawing(), **fields})

    plain = _picture(sdxl_engine.generate(JOB))
    hard = sdxl_engine.generate(JOB.replace(controlnet_units=(unit(),)))
    depth = _picture(sdxl_engine.generate(JOB.replace(controlnet_units=(unit(union_control_type="Depth"),))))
    assert np.abs(_picture(hard) - plain).mean() > 0.5 and np.abs(_picture(hard) - depth).mean() > 0.5
    weightless = _picture(sdxl_engine.generate(JOB.replace(controlnet_units=(unit(weight=0.0),))))
    assert np.array_equal(weightless, plain)
    folder = _picture(sdxl_engine.generate(JOB.replace(controlnet_units=(
        unit(model="controlnet-union-sdxl-1.0"),))))
    assert not np.array_equal(folder, _picture(hard))
    with pytest.raises(RequestError, match="union_control_type|control type"):
        sdxl_engine.generate(JOB.replace(controlnet_units=(unit(module="shuffle"),)))


def test_api_units_take_the_extensions_control_type_names():
    from ui.api.controlnet_api import unit_from_api

    def parsed(value):
        return unit_from_api({"module": "canny", "model": "m", "union_control_type": value}, 0, 16.0)

    assert parsed("hard edge").union_control_type == "Hard Edge"
    assert parsed("Unknown").union_control_type == ""   # the extension's "not set"
    assert parsed("Normal Map").union_control_type == "Normal Map"
    with pytest.raises(RequestError) as error:
        parsed("Sketch").validate(0)
    assert error.value.field == "union_control_type" and "Hard Edge" in error.value.message
