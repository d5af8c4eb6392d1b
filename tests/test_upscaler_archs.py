"""The upscaler networks written here (compact Real-ESRGAN, SwinIR, SCUNet): the full-size models
have the published files' layout, their configuration is read back from a state dict, tiny
models round-trip through weight files saved the published way, and their outputs match the
reference implementations'."""

from __future__ import annotations

import pytest
import torch

from engine.errors import RequestError
from engine.postprocess.upscaler_models import architecture_of, build_upscaler
from engine.postprocess.upscaler_models.compact import CompactNet, compact_from_state
from engine.postprocess.upscaler_models.scunet import SCUNet, scunet_from_state
from engine.postprocess.upscaler_models.swinir import SwinIR, swinir_from_state
from tests.support.upscaler_files import (
    save_published_way,
    tiny_compact,
    tiny_scunet,
    tiny_swinir,
)

# Read off the reference implementations built with the configurations the published files were
# trained with: SwinIR (JingyunLiang/SwinIR models/network_swinir.py, main_test_swinir.py's
# real_sr --large_model: embed 240, 9 x 6 blocks, 8 heads, window 8, mlp 2, nearest+conv, 3conv,
# img_size 64); SCUNet (cszn/SCUNet models/network_scunet.py with config [4]*7, dim 64, as
# main_test_scunet_real_application.py builds it); SRVGGNetCompact (xinntao/Real-ESRGAN
# realesrgan/archs/srvgg_arch.py, feat 64, 32 convs for general-x4v3, 16 for animevideov3).
# Counts include the buffers a state dict holds (SwinIR's relative_position_index and attn_mask),
# which is why SwinIR_4x.pth is 142 MB for 28 M parameters.
REAL = {
    "SwinIR": (859, 28_013_059, {
        "conv_first.weight": (240, 3, 3, 3),
        "patch_embed.norm.weight": (240,),
        "layers.0.residual_group.blocks.0.attn.relative_position_bias_table": (225, 8),
        "layers.0.residual_group.blocks.0.attn.relative_position_index": (64, 64),
        "layers.0.residual_group.blocks.1.attn_mask": (64, 64, 64),
        "layers.8.residual_group.blocks.5.mlp.fc1.weight": (480, 240),
        "layers.8.residual_group.blocks.5.attn.qkv.weight": (720, 240),
        "layers.8.conv.0.weight": (60, 240, 3, 3),
        "layers.8.conv.2.weight": (60, 60, 1, 1),
        "layers.8.conv.4.weight": (240, 60, 3, 3),
        "norm.weight": (240,),
        "conv_after_body.0.weight": (60, 240, 3, 3),
        "conv_after_body.4.weight": (240, 60, 3, 3),
        "conv_before_upsample.0.weight": (64, 240, 3, 3),
        "conv_up1.weight": (64, 64, 3, 3),
        "conv_hr.weight": (64, 64, 3, 3),
        "conv_last.weight": (3, 64, 3, 3),
    }),
    "SCUNet": (540, 17_946_072, {
        "m_head.0.weight": (64, 3, 3, 3),
        "m_down1.0.trans_block.msa.relative_position_params": (1, 15, 15),
        "m_down1.0.trans_block.msa.embedding_layer.weight": (96, 32),
        "m_down1.0.conv1_1.weight": (64, 64, 1, 1),
        "m_down1.0.conv_block.0.weight": (32, 32, 3, 3),
        "m_down1.4.weight": (128, 64, 2, 2),
        "m_down2.4.weight": (256, 128, 2, 2),
        "m_down3.4.weight": (512, 256, 2, 2),
        "m_body.3.trans_block.msa.relative_position_params": (8, 15, 15),
        "m_body.3.trans_block.mlp.0.weight": (1024, 256),
        "m_up3.0.weight": (512, 256, 2, 2),
        "m_up3.4.trans_block.ln1.weight": (128,),
        "m_up1.0.weight": (128, 64, 2, 2),
        "m_up1.4.conv1_2.weight": (64, 64, 1, 1),
        "m_tail.0.weight": (3, 64, 3, 3),
    }),
    "Compact-32": (101, 1_213_296, {"body.0.weight": (64, 3, 3, 3), "body.1.weight": (64,),
                                     "body.66.weight": (48, 64, 3, 3)}),
    "Compact-16": (53, 621_424, {"body.0.weight": (64, 3, 3, 3), "body.34.weight": (48, 64, 3, 3)}),
}


def _full(kind: str) -> torch.nn.Module:
    with torch.device("meta"):
        return {"SwinIR": lambda: SwinIR(), "SCUNet": lambda: SCUNet(),
                "Compact-32": lambda: CompactNet(convs=32), "Compact-16": lambda: CompactNet(convs=16)}[kind]()


@pytest.mark.parametrize("kind", REAL)
def test_full_size_models_have_the_published_layout(kind):
    keys, parameters, shapes = REAL[kind]
    model = _full(kind)
    state = model.state_dict()
    assert len(state) == keys
    assert sum(p.numel() for p in model.parameters()) == parameters
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key


@pytest.mark.parametrize("kind, build, scale", [
    ("SwinIR", swinir_from_state, 4), ("SCUNet", scunet_from_state, 1), ("Compact-32", compact_from_state, 4)])
def test_full_configuration_is_read_back_from_the_state_dict(kind, build, scale):
    state = _full(kind).state_dict()
    with torch.device("meta"):
        rebuilt = build(state)
    assert rebuilt.scale == scale
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in state.items()}
    assert architecture_of(state) == kind.split("-")[0]


# Outputs of the reference implementations given the same seeded weights (tests/support/
# upscaler_files.seeded) and the same seeded input: sum, then the first and last pixel.
REFERENCE_OUTPUTS = {
    "SwinIR": ((1, 3, 16, 16), (1, 3, 64, 64), 6221.310059, (0.504114, 0.466609, 0.463813), (0.57344, 0.375923, 0.443996)),
    "SCUNet": ((1, 3, 64, 64), (1, 3, 64, 64), -127.812775, (-0.005613, -0.028193, 0.034433), (-0.011468, 0.002158, 0.042794)),
    "Compact": ((1, 3, 8, 8), (1, 3, 32, 32), 1336.083130, (0.596151, 0.117391, 0.532272), (0.214635, -0.041832, 0.989326)),
}
TINY = {"SwinIR": (tiny_swinir, "params_ema"), "SCUNet": (tiny_scunet, None), "Compact": (tiny_compact, "params")}


@pytest.mark.parametrize("kind", REFERENCE_OUTPUTS)
def test_tiny_models_round_trip_and_match_the_reference_outputs(kind, tmp_path):
    from engine.postprocess.esrgan import read_state

    make, wrapper = TINY[kind]
    path = save_published_way(make(0), tmp_path / f"{kind}.pth", wrapper)
    loaded = build_upscaler(read_state(path), path.name)
    in_shape, out_shape, total, first, last = REFERENCE_OUTPUTS[kind]
    x = torch.rand(in_shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = loaded(x)
        again = loaded(x)
    assert out.shape == out_shape
    assert torch.equal(out, again)  # deterministic
    assert float(out.sum()) == pytest.approx(total, rel=1e-4)
    assert out[0, :, 0, 0].tolist() == pytest.approx(first, abs=1e-4)
    assert out[0, :, -1, -1].tolist() == pytest.approx(last, abs=1e-4)


@pytest.mark.parametrize("make, size, expected", [
    (tiny_swinir, (13, 10), (52, 40)),   # not a multiple of the window: padded, then cropped
    (tiny_scunet, (50, 70), (50, 70)),   # not a multiple of 64
    (lambda seed: tiny_compact(seed, scale=2), (9, 11), (18, 22)),
])
def test_any_size_comes_out_at_the_model_scale(make, size, expected):
    with torch.no_grad():
        out = make(1)(torch.rand(1, 3, *size))
    assert tuple(out.shape[-2:]) == expected and torch.isfinite(out).all()


def test_foreign_or_damaged_files_get_a_message():
    with pytest.raises(RequestError, match="not an ESRGAN, Real-ESRGAN, SwinIR or SCUNet model"):
        build_upscaler({"weight": torch.zeros(2)}, "junk.pth")
    state = tiny_swinir().state_dict()
    del state["conv_last.weight"]
    with pytest.raises(RequestError, match="'broken.pth' looks like a SwinIR model but does not match"):
        build_upscaler(state, "broken.pth")
