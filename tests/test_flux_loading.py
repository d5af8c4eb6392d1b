"""The studio's own FLUX.1 loading (engine/families/flux_keys.py, flow_loading.py): BFL-layout
files (dev, schnell, Fill) at any width load bit for bit (fp8: equal to the fp8 cast), agree with diffusers' own
converter where that works (full width), GGUF files go through diffusers' GGUF support once
renamed, and a T5 file carrying one embedding name loads with both tied."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import FluxTransformer2DModel
from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

from engine.errors import CheckpointError
from engine.models.flow_loading import load_flux_transformer, load_t5_encoder
from engine.families.flux_keys import bfl_to_diffusers
from engine.models.loading import CONFIG_ROOT
from engine.models.tiny_flow_models import build_tiny_flow_components, tiny_flow_configs
from tests.support.flow_writers import (TRANSFORMER_PREFIX, assert_same_weights as assert_same, encoder_state,
                                        flux_to_bfl, single_file_state, to_fp8, write, write_config_folder)

LAYOUTS = ("flux-dev", "flux-schnell", "flux-fill")   # Fill: img_in takes 384 inputs, not 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """layout -> (components, the transformer's config folder, the T5's config folder)."""
    root = tmp_path_factory.mktemp("tiny-flux")
    built = {}
    for layout in LAYOUTS:
        components = build_tiny_flow_components(layout, seed=3)
        folder = write_config_folder(layout, components, root / layout)
        built[layout] = (components, folder / "transformer", folder / "text_encoder_2")
    return built


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("all_in_one", [False, True], ids=["bare", "prefixed"])
def test_bfl_files_load_back_bit_for_bit(tiny, tmp_path, layout, all_in_one):
    components, config, _ = tiny[layout]
    state = (single_file_state("flux", components, ("clip_l", "t5xxl")) if all_in_one
             else single_file_state("flux", components, vae=False, prefix=""))
    path = write(state, tmp_path / "flux.safetensors")
    loaded = load_flux_transformer(path, config, dtype=torch.float32)
    assert_same(components["transformer"].state_dict(), loaded.state_dict())
    assert loaded.config.guidance_embeds == (layout != "flux-schnell")
    assert not any(p.is_meta for p in loaded.parameters())


@pytest.mark.parametrize("keep_fp8", [False, True])
def test_fp8_files_load_as_the_fp8_cast(tiny, tmp_path, keep_fp8):
    components, config, _ = tiny["flux-dev"]
    path = write(to_fp8(single_file_state("flux", components, vae=False, prefix="")), tmp_path / "fp8.safetensors")
    loaded = load_flux_transformer(path, config, dtype=torch.float32, keep_fp8=keep_fp8)
    assert_same(components["transformer"].state_dict(), loaded.state_dict(), cast=torch.float8_e4m3fn)
    matrix = loaded.single_transformer_blocks[0].proj_mlp.weight
    assert matrix.dtype == (torch.float8_e4m3fn if keep_fp8 else torch.float32)
    assert loaded.single_transformer_blocks[0].proj_mlp.bias.dtype == torch.float32


def _rows_numbered(tensor: torch.Tensor) -> torch.Tensor:
    # Each row holds its own index (columns are a stride-0 view: no memory at full width), so
    # after any split or swap the first column tells which source rows a tensor came from.
    rows = torch.arange(tensor.shape[0], dtype=torch.float32)
    return rows if tensor.ndim == 1 else rows[:, None].expand(*tensor.shape)


def test_at_full_width_the_renaming_agrees_with_diffusers_converter():
    config = {**tiny_flow_configs("flux-dev")["transformer"], "attention_head_dim": 128, "num_attention_heads": 24,
              "joint_attention_dim": 4096, "pooled_projection_dim": 768, "axes_dims_rope": [16, 56, 56]}
    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(config)
    bfl = {key: _rows_numbered(value) for key, value in flux_to_bfl(model).items()}
    ours = bfl_to_diffusers({TRANSFORMER_PREFIX + key: value for key, value in bfl.items()})
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    assert sorted(ours) == sorted(theirs) == sorted(model.state_dict())
    for key, value in theirs.items():
        assert ours[key].shape == value.shape == model.state_dict()[key].shape, key
        assert torch.equal(ours[key][..., :1], value[..., :1]), key


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_repo_configs_take_the_renamed_real_layout(layout):
    """The real model's BFL names and shapes (meta tensors: no memory) rename to exactly what
    the FluxTransformer2DModel of model_configs/<layout>/transformer holds."""
    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(
            FluxTransformer2DModel.load_config(str(CONFIG_ROOT / layout / "transformer")))
    renamed = bfl_to_diffusers(flux_to_bfl(model))
    assert {key: value.shape for key, value in renamed.items()} == {
        key: value.shape for key, value in model.state_dict().items()}
    assert any(key.startswith("time_text_embed.guidance_embedder") for key in renamed) == (layout != "flux-schnell")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_renamed_q8_0_gguf_file_loads_through_diffusers_gguf_support(tiny, tmp_path, layout):
    pytest.importorskip("gguf")
    from diffusers import GGUFQuantizationConfig
    from diffusers.models.model_loading_utils import load_gguf_checkpoint
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    from tests.support.gguf_files import is_quantised, q8_0_round_trip, write_gguf
    components, config, _ = tiny[layout]
    path = write_gguf(flux_to_bfl(components["transformer"]), tmp_path / f"{layout}-Q8_0.gguf", "flux")
    renamed = bfl_to_diffusers(load_gguf_checkpoint(str(path), return_tensors=True))
    transformer = FluxTransformer2DModel.from_single_file(
        renamed, config=str(config), local_files_only=True, torch_dtype=torch.float32,
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32))
    loaded = {key: dequantize_gguf_tensor(value) for key, value in transformer.state_dict().items()}
    original = components["transformer"].state_dict()
    assert sorted(original) == sorted(loaded)
    quantised = [key for key, value in original.items() if is_quantised(value)]
    assert "single_transformer_blocks.0.proj_mlp.weight" in quantised
    for key, value in original.items():
        want = q8_0_round_trip(value) if key in quantised else value
        assert torch.equal(want, loaded[key].float().reshape(value.shape)), key


@pytest.mark.parametrize("kept", ["shared.weight", "encoder.embed_tokens.weight"])
@pytest.mark.parametrize("all_in_one", [False, True], ids=["standalone", "all-in-one"])
def test_t5_with_one_embedding_name_loads_tied(tiny, tmp_path, kept, all_in_one):
    components, _, t5_config = tiny["flux-dev"]
    t5 = components["text_encoder_2"]
    dropped = next(key for key in ("shared.weight", "encoder.embed_tokens.weight") if key != kept)
    if all_in_one:
        state = single_file_state("flux", components, ("clip_l", "t5xxl"))
        del state["text_encoders.t5xxl.transformer." + dropped]
    else:
        state = {key: value for key, value in encoder_state(t5).items() if key != dropped}
    loaded = load_t5_encoder(write(state, tmp_path / "t5.safetensors"), t5_config, dtype=torch.float32)
    assert_same(t5.state_dict(), loaded.state_dict())
    assert loaded.encoder.embed_tokens.weight is loaded.shared.weight
    ids = torch.tensor([[5, 17, 1]])
    assert torch.equal(t5(input_ids=ids).last_hidden_state, loaded(input_ids=ids).last_hidden_state)


def test_files_that_do_not_fit_are_named(tiny, tmp_path):
    components, dev_config, t5_config = tiny["flux-dev"]
    not_flux = write({"something.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="'other.safetensors' holds no FLUX.1 transformer"):
        load_flux_transformer(not_flux, dev_config)
    wide = dict(json.loads((dev_config / "config.json").read_text(encoding="utf-8")), num_attention_heads=4)
    (tmp_path / "wide").mkdir()
    (tmp_path / "wide" / "config.json").write_text(json.dumps(wide), encoding="utf-8")
    bare = write(single_file_state("flux", components, vae=False, prefix=""), tmp_path / "flux.safetensors")
    with pytest.raises(CheckpointError, match="32 channels wide, but its config"):
        load_flux_transformer(bare, tmp_path / "wide")
    schnell = write(single_file_state("flux", tiny["flux-schnell"][0], vae=False, prefix=""), tmp_path / "s.safetensors")
    with pytest.raises(CheckpointError, match="does not fit its config: missing .*guidance_embedder"):
        load_flux_transformer(schnell, dev_config)
    with pytest.raises(CheckpointError, match="without a token embedding"):
        load_t5_encoder(write({"encoder.final_layer_norm.weight": torch.ones(32)}, tmp_path / "t5.safetensors"),
                        t5_config)
    with pytest.raises(CheckpointError, match="'junk.safetensors' as a safetensors file"):
        (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
        load_flux_transformer(tmp_path / "junk.safetensors", dev_config)
    with pytest.raises(CheckpointError, match="not found"):
        load_t5_encoder(tmp_path / "absent.safetensors", t5_config)
