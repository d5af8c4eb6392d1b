"""The tiny FLUX.1 / SD 3.x models written in the layouts users download load back through
diffusers' own single-file machinery, offline, bit for bit (fp8: equal to the fp8 cast), and the
written files are recognised for what they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers
from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

from engine.errors import CheckpointError
from engine import families
from engine.families import files as family_files
from engine.models.loading import CONFIG_ROOT, read_shapes
from engine.models.tiny_flow_models import (FLOW_COMPONENT_CLASSES, build_tiny_flow_components,
                                            tiny_flow_configs)
from tests.support.flow_writers import (assert_same_weights as assert_same, encoder_state, single_file_state, to_fp8,
                                        write, write_config_folder)
from tests.support.ldm_export import vae_to_ldm

TRANSFORMERS = {"flux": FluxTransformer2DModel, "sd3": SD3Transformer2DModel}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    # No hub: every config comes from the folder the test writes.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """layout -> (components, a config folder for them)."""
    root = tmp_path_factory.mktemp("tiny-flow")
    built = {}
    for layout in ("flux-dev", "flux-schnell", "sd3.5-large", "sd3.5-medium"):
        components = build_tiny_flow_components(layout, seed=1)
        built[layout] = (components, write_config_folder(layout, components, root / layout))
    return built


@pytest.mark.parametrize("layout", ["sd3.5-large", "sd3.5-medium"])
@pytest.mark.parametrize("encoders", [(), ("clip_l", "clip_g", "t5xxl")])
def test_sd35_single_files_load_back_bit_for_bit(tiny, tmp_path, layout, encoders):
    components, config = tiny[layout]
    path = write(single_file_state("sd3", components, encoders), tmp_path / f"{layout}.safetensors")
    transformer = SD3Transformer2DModel.from_single_file(str(path), config=str(config), subfolder="transformer",
                                                         local_files_only=True)
    assert_same(components["transformer"].state_dict(), transformer.state_dict())
    vae = AutoencoderKL.from_single_file(str(path), config=str(config), subfolder="vae", local_files_only=True)
    assert_same(components["vae"].state_dict(), vae.state_dict())
    found = families.recognise_flow_file(read_shapes(path, False))
    variant = "SD 3.5 Large" if layout == "sd3.5-large" else "SD 3.5 Medium"
    assert (found.family, found.variant, found.config_name) == ("sd3", variant, layout)
    assert found.text_encoders == tuple({"clip_l": "CLIP-L", "clip_g": "CLIP-G", "t5xxl": "T5-XXL"}[e]
                                        for e in encoders)
    assert found.has_vae and (found.missing == ()) == bool(encoders)


def test_sd35_text_encoders_inside_the_file_load_back(tiny, tmp_path):
    components, config = tiny["sd3.5-medium"]
    path = write(single_file_state("sd3", components, ("clip_l", "clip_g", "t5xxl")), tmp_path / "all.safetensors")
    for name, cls in (("text_encoder", CLIPTextModelWithProjection), ("text_encoder_2", CLIPTextModelWithProjection),
                      ("text_encoder_3", T5EncoderModel)):
        loaded = _pipeline_component(path, config, name, cls)
        assert_same(components[name].state_dict(), loaded.state_dict())


def _pipeline_component(path: Path, config: Path, name: str, cls):
    # diffusers' own route for a text encoder inside a single file (what from_single_file of a
    # pipeline calls per component).
    from diffusers.loaders.single_file import load_single_file_sub_model
    from diffusers.loaders.single_file_utils import load_single_file_checkpoint
    checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
    library = "transformers"
    return load_single_file_sub_model(library_name=library, class_name=cls.__name__, name=name,
                                      checkpoint=checkpoint, pipelines=None, is_pipeline_module=False,
                                      cached_model_config_path=str(config), local_files_only=True)


def test_flux_bfl_names_are_the_ones_diffusers_converts(tiny):
    """The writer's BFL names are diffusers' own: at full width (two blocks, meta tensors: no
    memory) diffusers' converter turns them into exactly the model's keys and shapes. (That
    converter assumes the real width, 3072 with an MLP of 12288, so the tiny files load through
    the studio's width-aware renaming instead: engine/families/flux_keys.py, test_flux_loading.py.)"""
    from tests.support.flow_writers import flux_to_bfl
    config = {**tiny_flow_configs("flux-dev")["transformer"], "attention_head_dim": 128, "num_attention_heads": 24,
              "joint_attention_dim": 4096, "pooled_projection_dim": 768, "axes_dims_rope": [16, 56, 56]}
    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(config)
    converted = convert_flux_transformer_checkpoint_to_diffusers(flux_to_bfl(model))
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert {key: tuple(value.shape) for key, value in converted.items()} == expected


@pytest.mark.parametrize("layout, variant", [("flux-dev", "FLUX.1-dev"), ("flux-schnell", "FLUX.1-schnell")])
def test_flux_files_are_recognised_in_each_layout(tiny, tmp_path, layout, variant):
    components, _ = tiny[layout]
    files = {
        "aio": (single_file_state("flux", components, ("clip_l", "t5xxl")), ("CLIP-L", "T5-XXL"), True),
        "bare": (single_file_state("flux", components, vae=False, prefix=""), (), False),
        "fp8": (to_fp8(single_file_state("flux", components, vae=False, prefix="")), (), False),
    }
    for kind, (state, encoders, vae) in files.items():
        found = families.recognise_flow_file(read_shapes(write(state, tmp_path / f"{kind}.safetensors"), False))
        assert (found.family, found.variant, found.config_name) == ("flux", variant, layout), kind
        assert (found.text_encoders, found.has_vae) == (encoders, vae), kind


def test_the_flux_vae_and_encoders_in_an_all_in_one_file_load_back(tiny, tmp_path):
    components, config = tiny["flux-dev"]
    path = write(single_file_state("flux", components, ("clip_l", "t5xxl")), tmp_path / "flux-aio.safetensors")
    vae = AutoencoderKL.from_single_file(str(path), config=str(config), subfolder="vae", local_files_only=True)
    assert_same(components["vae"].state_dict(), vae.state_dict())
    for name, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", T5EncoderModel)):
        assert_same(components[name].state_dict(), _pipeline_component(path, config, name, cls).state_dict())


def test_fp8_files_hold_the_fp8_cast_of_each_matrix(tiny, tmp_path):
    components, config = tiny["sd3.5-medium"]
    path = write(to_fp8(single_file_state("sd3", components, vae=False, prefix="")), tmp_path / "fp8.safetensors")
    transformer = SD3Transformer2DModel.from_single_file(str(path), config=str(config), subfolder="transformer",
                                                         local_files_only=True, torch_dtype=torch.float32)
    assert_same(components["transformer"].state_dict(), transformer.state_dict(), cast=torch.float8_e4m3fn)
    assert families.recognise_flow_file(read_shapes(path, False)).variant == "SD 3.5 Medium"


def test_standalone_encoders_and_ae_are_named_and_load_back(tiny, tmp_path):
    components, config = tiny["flux-dev"]
    files = {"clip_l.safetensors": (encoder_state(components["text_encoder"]), "a CLIP text encoder"),
             "t5xxl_fp16.safetensors": (encoder_state(components["text_encoder_2"]), "a T5-XXL text encoder"),
             "clip_g.safetensors": (encoder_state(tiny["sd3.5-large"][0]["text_encoder_2"]), "a CLIP text encoder"),
             "ae.safetensors": (vae_to_ldm(components["vae"]), "a 16-channel VAE (FLUX.1 / SD 3)")}
    for name, (state, words) in files.items():
        path = write(state, tmp_path / name)
        assert family_files.recognise_component(read_shapes(path, False)) == words, name
    vae = AutoencoderKL.from_single_file(str(tmp_path / "ae.safetensors"), config=str(config), subfolder="vae",
                                         local_files_only=True)
    assert_same(components["vae"].state_dict(), vae.state_dict())
    sd3 = tiny["sd3.5-large"][0]
    for name, cls, model in (("clip_l", CLIPTextModel, components["text_encoder"]),
                             ("clip_g", CLIPTextModelWithProjection, sd3["text_encoder_2"]),
                             ("t5xxl_fp16", T5EncoderModel, components["text_encoder_2"])):
        loaded = cls.from_pretrained(None, config=model.config, local_files_only=True,
                                     state_dict=load_file(str(tmp_path / f"{name}.safetensors")))
        assert_same(model.state_dict(), loaded.state_dict())


def test_the_repo_configs_name_the_same_classes():
    for layout, family in (("flux-dev", "flux"), ("sd3.5-large", "sd3")):
        for name, (_, class_name) in FLOW_COMPONENT_CLASSES[family].items():
            config = json.loads((CONFIG_ROOT / layout / name / "config.json").read_text(encoding="utf-8"))
            assert config.get("_class_name", (config.get("architectures") or [None])[0]) == class_name


def test_a_q8_0_gguf_transformer_loads_through_diffusers_gguf_support(tiny, tmp_path):
    """The SD 3.5 transformer as a Q8_0 GGUF file, loaded by from_single_file with diffusers'
    GGUFQuantizationConfig: every weight equals the reference Q8_0 rounding of the original
    (computed in tests/support/gguf_files.py without gguf), the unquantised ones bit for bit."""
    pytest.importorskip("gguf")
    from diffusers import GGUFQuantizationConfig

    from tests.support.flow_writers import sd3_to_original
    from tests.support.gguf_files import is_quantised, q8_0_round_trip, write_gguf
    components, config = tiny["sd3.5-medium"]
    path = write_gguf(sd3_to_original(components["transformer"]), tmp_path / "sd3.5_medium-Q8_0.gguf", "sd3")
    transformer = SD3Transformer2DModel.from_single_file(
        str(path), config=str(config), subfolder="transformer", local_files_only=True, torch_dtype=torch.float32,
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32))
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor
    loaded = {key: dequantize_gguf_tensor(value) for key, value in transformer.state_dict().items()}
    original = components["transformer"].state_dict()
    assert sorted(original) == sorted(loaded)
    quantised = [key for key, value in original.items() if is_quantised(value)]
    assert len(quantised) > 40
    for key, value in original.items():
        want = q8_0_round_trip(value) if key in quantised else value
        assert torch.equal(want, loaded[key].float()), key
    found = families.recognise_flow_file(read_shapes(path, False))
    assert (found.family, found.variant, found.text_encoders, found.has_vae) == ("sd3", "SD 3.5 Medium", (), False)


@pytest.mark.parametrize("layout, variant", [("flux-dev", "FLUX.1-dev"), ("flux-schnell", "FLUX.1-schnell")])
def test_gguf_flux_transformers_are_recognised(tiny, tmp_path, layout, variant):
    """FLUX GGUF files (city96's layout: BFL names, no prefix). diffusers reads the tensors back
    as written: Q8_0 blocks dequantise to the reference rounding."""
    pytest.importorskip("gguf")
    from diffusers.models.model_loading_utils import load_gguf_checkpoint
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    from tests.support.flow_writers import flux_to_bfl
    from tests.support.gguf_files import is_quantised, q8_0_round_trip, write_gguf
    state = flux_to_bfl(tiny[layout][0]["transformer"])
    path = write_gguf(state, tmp_path / f"{layout}-Q8_0.gguf", "flux")
    found = families.recognise_flow_file(read_shapes(path, False))
    assert (found.family, found.variant, found.config_name) == ("flux", variant, layout)
    shapes = read_shapes(path, False)
    assert shapes == {key: tuple(value.shape) for key, value in state.items()}
    loaded = load_gguf_checkpoint(str(path), return_tensors=True)
    for key, value in state.items():
        want = q8_0_round_trip(value) if is_quantised(value) else value
        assert torch.equal(want, dequantize_gguf_tensor(loaded[key]).float().reshape(value.shape)), key


def test_a_broken_gguf_file_is_named(tmp_path):
    pytest.importorskip("gguf")
    path = tmp_path / "half.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 5)
    with pytest.raises(CheckpointError, match="'half.gguf' is not a valid GGUF file"):
        read_shapes(path, False)
