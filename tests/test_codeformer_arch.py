"""CodeFormer network: the full-size model's parameter layout is that of the published
codeformer.pth, and tiny models round-trip through a weight file and
`codeformer_from_state_dict`."""

from __future__ import annotations

import pytest
import torch

from engine.postprocess.face_models.codeformer import (
    CodeFormer,
    codeformer_from_state_dict,
    default_heads,
)
from tests.support.face_model_files import tiny_codeformer

# Shapes and totals read off the reference implementation (sczhou/CodeFormer,
# basicsr/archs/codeformer_arch.py + vqgan_arch.py, as built by inference_codeformer.py, which
# loads codeformer.pth's 'params_ema' strictly).
REAL_PARAMETERS = 94_112_707
REAL_KEYS = 515
REAL_SHAPES = {
    "position_emb": (256, 512),
    "quantize.embedding.weight": (1024, 256),
    "feat_emb.weight": (512, 256),
    "ft_layers.0.self_attn.in_proj_weight": (1536, 512),
    "ft_layers.8.self_attn.out_proj.bias": (512,),
    "ft_layers.8.linear1.weight": (1024, 512),
    "ft_layers.8.norm2.weight": (512,),
    "idx_pred_layer.0.weight": (512,),
    "idx_pred_layer.1.weight": (1024, 512),
    "encoder.blocks.0.weight": (64, 3, 3, 3),
    "encoder.blocks.3.conv.weight": (64, 64, 3, 3),
    "encoder.blocks.4.conv_out.weight": (128, 64, 1, 1),
    "encoder.blocks.17.q.weight": (512, 512, 1, 1),
    "encoder.blocks.21.proj_out.weight": (512, 512, 1, 1),
    "encoder.blocks.23.weight": (512,),
    "encoder.blocks.24.weight": (256, 512, 3, 3),
    "generator.blocks.0.weight": (512, 256, 3, 3),
    "generator.blocks.7.norm.weight": (512,),
    "generator.blocks.8.conv.weight": (512, 512, 3, 3),
    "generator.blocks.9.conv_out.weight": (256, 512, 1, 1),
    "generator.blocks.21.conv1.weight": (64, 128, 3, 3),
    "generator.blocks.23.bias": (64,),
    "generator.blocks.24.weight": (3, 64, 3, 3),
    "fuse_convs_dict.32.encode_enc.conv1.weight": (256, 512, 3, 3),
    "fuse_convs_dict.32.scale.0.weight": (256, 256, 3, 3),
    "fuse_convs_dict.256.encode_enc.conv_out.weight": (128, 256, 1, 1),
    "fuse_convs_dict.256.shift.2.bias": (128,),
}

@pytest.fixture(scope="module")
def full_meta() -> CodeFormer:
    with torch.device("meta"):
        return CodeFormer()


def test_full_model_has_the_published_layout(full_meta):
    sd = full_meta.state_dict()
    assert len(sd) == REAL_KEYS
    assert list(full_meta.buffers()) == []
    assert sum(p.numel() for p in full_meta.parameters()) == REAL_PARAMETERS
    for key, shape in REAL_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    fused = {k.split(".")[1] for k in sd if k.startswith("fuse_convs_dict.")}
    assert fused == {"32", "64", "128", "256"}
    assert full_meta.input_size == 512
    assert full_meta.n_head == 8


def test_full_model_fuses_where_the_reference_does():
    with torch.device("meta"):
        model = CodeFormer(connect_list=["16", "32", "64", "128", "256", "512"])
    # The reference's hard-coded block tables for the 512px model.
    assert model.encoder_taps == {2: "512", 5: "256", 8: "128", 11: "64", 14: "32", 18: "16"}
    assert model.generator_taps == {6: "16", 9: "32", 12: "64", 15: "128", 18: "256", 21: "512"}


def test_full_config_is_inferred_from_its_state_dict(full_meta):
    # A meta state dict carries the real shapes; loading it rebuilds the very same layout.
    rebuilt = codeformer_from_state_dict({"params_ema": full_meta.state_dict()})
    assert rebuilt.input_size == 512
    assert rebuilt.n_head == 8
    assert rebuilt.connect_list == ["32", "64", "128", "256"]
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in full_meta.state_dict().items()}


def test_tiny_model_round_trips_through_a_weight_file(tmp_path):
    model = tiny_codeformer()
    assert model.input_size == 16
    torch.save({"params_ema": model.state_dict()}, tmp_path / "codeformer.pth")
    loaded = codeformer_from_state_dict(torch.load(tmp_path / "codeformer.pth", weights_only=True))
    assert loaded.n_head == model.n_head == default_heads(16)
    assert loaded.input_size == 16
    assert loaded.connect_list == ["8", "16"]

    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected, got = model(x, fidelity=0.7), loaded(x, fidelity=0.7)
    assert got.shape == (2, 3, 16, 16)
    assert torch.equal(expected, got)
    assert got.min() >= -1 and got.max() <= 1


def test_raw_and_params_wrapped_state_dicts_load():
    sd = tiny_codeformer().state_dict()
    for wrapped in (sd, {"params": sd}):
        assert codeformer_from_state_dict(wrapped).input_size == 16


def test_fidelity_changes_the_output_and_zero_skips_fusion():
    model = tiny_codeformer()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        quality, faithful = model(x, fidelity=0.0), model(x, fidelity=1.0)
        assert not torch.allclose(quality, faithful)
        # With w == 0 the fusion blocks are not run at all: wrecking them changes nothing.
        for p in model.fuse_convs_dict.parameters():
            p.fill_(float("nan"))
        assert torch.equal(model(x, fidelity=0.0), quality)


def test_wrong_input_size_is_refused():
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        tiny_codeformer()(torch.zeros(1, 3, 32, 32))


def test_foreign_state_dict_is_refused():
    esrgan_like = {"conv_first.weight": torch.zeros(64, 3, 3, 3)}
    message = "not a CodeFormer state dict: no 'quantize.embedding.weight'"
    with pytest.raises(ValueError, match=message):
        codeformer_from_state_dict({"params_ema": esrgan_like})


def test_truncated_state_dict_is_refused():
    sd = tiny_codeformer().state_dict()
    del sd["generator.blocks.1.conv2.weight"]
    with pytest.raises(ValueError, match="generator.blocks.1.conv2.weight"):
        codeformer_from_state_dict(sd)
