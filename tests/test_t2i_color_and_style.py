"""The T2I colour adapter (a light adapter on the t2ia_color_grid map) and the T2I style adapter
(CLIP ViT-L/14 features made into prompt tokens by t2ia_style_clipvision), as ControlNet unit
models in the layouts TencentARC released, checked against diffusers' LightAdapter path and
against a transformer written from the architecture's description."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import T2IAdapter, UNet2DConditionModel
from PIL import Image
from safetensors.torch import save_file

from engine.controlnet import preprocessors, style_adapter, t2i_adapter
from engine.controlnet.apply import PreparedUnit, attached
from engine.controlnet.checks import check_units
from engine.controlnet.models import ControlNetLibrary
from engine.controlnet.tiny_controlnets import build_tiny_controlnet, save_original_layout
from engine.controlnet.units import ControlUnit
from engine.devices import DeviceConfig
from engine.engine import Engine
from engine.errors import RequestError
from tests.support.addon_engines import engine_over
from tests.support.ip_adapter_files import write_encoder_file
from tests.test_controlnet import BASE, pixels
from tests.test_controlnet_models import assert_same_weights

CPU = DeviceConfig.choose(use_cpu=True)
BLOCKS = 2
ENCODER_WIDTH = 64   # the tiny CLIP vision encoder's (ip_adapter_files.ENCODER)


# --- colour -----------------------------------------------------------------------------------

def test_the_colour_grid_is_the_picture_in_flat_64_pixel_cells():
    tiles = np.random.default_rng(0).integers(0, 255, (3, 4, 3), dtype=np.uint8)
    picture = Image.fromarray(np.kron(tiles, np.ones((64, 64, 1), dtype=np.uint8)))   # 256 x 192
    grid = np.asarray(preprocessors.run("t2ia_color_grid", picture, 192))
    assert grid.shape == (192, 256, 3)
    assert np.array_equal(grid, np.asarray(picture))   # flat cells come back exactly
    half = np.asarray(preprocessors.run("color", picture, 96))   # the extension's old name; 96: 1 x 2 cells
    assert half.shape == (96, 128, 3)
    assert len(np.unique(half[:, :64].reshape(-1, 3), axis=0)) == 1
    assert len(np.unique(half[:, 64:].reshape(-1, 3), axis=0)) == 1


def light_adapter(widths: list[int], seed: int) -> T2IAdapter:
    """A diffusers light adapter whose levels are `widths` wide (the last repeats the one before)."""
    torch.manual_seed(seed)
    adapter = T2IAdapter(in_channels=3, channels=widths[:-1], num_res_blocks=BLOCKS, downscale_factor=8,
                         adapter_type="light_adapter")
    with torch.no_grad():
        for param in adapter.parameters():
            param.copy_(torch.randn_like(param) * 0.2)
    return adapter.eval()


def light_original_layout(adapter: T2IAdapter) -> dict[str, torch.Tensor]:
    """TencentARC's names for a light adapter, from their scheme: level L's `in_conv`, `out_conv`
    and its blocks `body.L.body.R.block1/2`."""
    tensors = {}
    for level, block in enumerate(adapter.adapter.body):
        for conv in ("in_conv", "out_conv"):
            tensors[f"body.{level}.{conv}.weight"] = getattr(block, conv).weight
            tensors[f"body.{level}.{conv}.bias"] = getattr(block, conv).bias
        for number, resnet in enumerate(block.resnets):
            for conv in ("block1", "block2"):
                tensors[f"body.{level}.body.{number}.{conv}.weight"] = getattr(resnet, conv).weight
                tensors[f"body.{level}.body.{number}.{conv}.bias"] = getattr(resnet, conv).bias
    return {key: value.detach().contiguous().clone() for key, value in tensors.items()}


def test_a_colour_adapter_file_loads_as_diffusers_light_adapter_and_feeds_the_encoder(tmp_path, no_network):
    widths = [32, 32]
    made = light_adapter(widths, 5)
    save_file(light_original_layout(made), str(tmp_path / "t2iadapter_color_sd14v1.safetensors"))
    save_file({k: v.contiguous() for k, v in made.state_dict().items()}, str(tmp_path / "light-diffusers.safetensors"))
    library = ControlNetLibrary(tmp_path, CPU)
    assert library.families() == {"t2iadapter_color_sd14v1": "sd1", "light-diffusers": "sd1"}
    for name in ("t2iadapter_color_sd14v1", "light-diffusers"):
        loaded = library.load(name)
        assert t2i_adapter.is_adapter(loaded) and loaded.config.adapter_type == "light_adapter"
        assert_same_weights(loaded, made)
    # One UNet call through the unit's hook equals diffusers' own adapter path.
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=tuple(widths), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                norm_num_groups=8, attention_head_dim=4).eval()
    loaded = library.load("t2iadapter_color_sd14v1")
    sample, hidden = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 16)
    control = torch.rand(1, 3, 64, 64)
    item = PreparedUnit(0, ControlUnit(module="t2ia_color_grid", weight=0.6), loaded, control, None)
    with torch.no_grad(), attached(unet, [item], cfg=True, progress=lambda: (0, 4)):
        ours = unet(sample, torch.tensor(300.0), encoder_hidden_states=hidden, return_dict=False)[0]
    with torch.no_grad():
        states = [state.expand(2, -1, -1, -1) * 0.6 for state in made(control)]
        theirs = unet(sample, torch.tensor(300.0), encoder_hidden_states=hidden, return_dict=False,
                      down_intrablock_additional_residuals=states)[0]
        plain = unet(sample, torch.tensor(300.0), encoder_hidden_states=hidden, return_dict=False)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert (ours - plain).abs().max() > 1e-3


# --- style ------------------------------------------------------------------------------------

def style_tensors(context: int, seed: int = 0, layers: int = 2, tokens: int = 8) -> dict[str, torch.Tensor]:
    """A style adapter under the released file's names (CLIP's residual attention blocks in
    `transformer_layes`, nn.MultiheadAttention's packed projections)."""
    generator = torch.Generator().manual_seed(seed)
    width = ENCODER_WIDTH

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=generator) * scale

    tensors = {"style_embedding": rand(1, tokens, width, scale=width ** -0.5), "proj": rand(width, context),
               "ln_pre.weight": 1 + rand(width), "ln_pre.bias": rand(width),
               "ln_post.weight": 1 + rand(width), "ln_post.bias": rand(width)}
    for n in range(layers):
        block = f"transformer_layes.{n}."
        tensors.update({block + "attn.in_proj_weight": rand(3 * width, width), block + "attn.in_proj_bias": rand(3 * width),
                        block + "attn.out_proj.weight": rand(width, width), block + "attn.out_proj.bias": rand(width),
                        block + "ln_1.weight": 1 + rand(width), block + "ln_1.bias": rand(width),
                        block + "ln_2.weight": 1 + rand(width), block + "ln_2.bias": rand(width),
                        block + "mlp.c_fc.weight": rand(4 * width, width), block + "mlp.c_fc.bias": rand(4 * width),
                        block + "mlp.c_proj.weight": rand(width, 4 * width), block + "mlp.c_proj.bias": rand(width)})
    return tensors


def reference_style_tokens(tensors: dict[str, torch.Tensor], states: torch.Tensor) -> torch.Tensor:
    """The style adapter as described, on torch's own pre-norm transformer layer: queries
    appended, ln_pre, the layers, ln_post on the queries, the projection."""
    width = tensors["proj"].shape[0]
    layers = 1 + max(int(key.split(".")[1]) for key in tensors if key.startswith("transformer_layes."))
    x = torch.cat([states, tensors["style_embedding"].expand(states.shape[0], -1, -1)], dim=1)
    x = torch.nn.functional.layer_norm(x, (width,), tensors["ln_pre.weight"], tensors["ln_pre.bias"])
    for n in range(layers):
        layer = torch.nn.TransformerEncoderLayer(width, 8, 4 * width, dropout=0.0, batch_first=True, norm_first=True,
                                                 activation=lambda h: h * torch.sigmoid(1.702 * h)).eval()
        p = {key.split(".", 2)[2]: value for key, value in tensors.items() if key.startswith(f"transformer_layes.{n}.")}
        layer.load_state_dict({"self_attn.in_proj_weight": p["attn.in_proj_weight"],
                               "self_attn.in_proj_bias": p["attn.in_proj_bias"],
                               "self_attn.out_proj.weight": p["attn.out_proj.weight"],
                               "self_attn.out_proj.bias": p["attn.out_proj.bias"],
                               "linear1.weight": p["mlp.c_fc.weight"], "linear1.bias": p["mlp.c_fc.bias"],
                               "linear2.weight": p["mlp.c_proj.weight"], "linear2.bias": p["mlp.c_proj.bias"],
                               "norm1.weight": p["ln_1.weight"], "norm1.bias": p["ln_1.bias"],
                               "norm2.weight": p["ln_2.weight"], "norm2.bias": p["ln_2.bias"]})
        with torch.no_grad():
            x = layer(x)
    tokens = tensors["style_embedding"].shape[1]
    queries = torch.nn.functional.layer_norm(x[:, -tokens:], (width,), tensors["ln_post.weight"], tensors["ln_post.bias"])
    return queries @ tensors["proj"]


def test_the_style_adapter_computes_the_described_transformer(tmp_path, no_network):
    tensors = style_tensors(context=24)
    save_file(tensors, str(tmp_path / "t2iadapter_style_sd14v1.safetensors"))
    library = ControlNetLibrary(tmp_path, CPU)
    assert library.families() == {"t2iadapter_style_sd14v1": "sd1"}
    assert library.is_style_adapter("t2iadapter_style_sd14v1")
    adapter = library.load("t2iadapter_style_sd14v1")
    assert style_adapter.is_style(adapter)
    states = torch.randn(2, 17, ENCODER_WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = adapter(states)
    assert ours.shape == (2, 8, 24)
    torch.testing.assert_close(ours, reference_style_tokens(tensors, states), rtol=1e-4, atol=1e-4)


def test_style_tokens_go_on_the_positive_half_of_the_context_within_the_window(engine):
    unet = engine.models.require().base.unet
    context = unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(2)
    sample, hidden = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 77, context, generator=generator)
    tokens = torch.randn(1, 8, context, generator=generator)
    item = PreparedUnit(0, ControlUnit(module=style_adapter.MODULE, weight=0.5, guidance_start=0.5), None,
                        torch.zeros(1, 3, 1, 1), None, tokens=tokens)
    step = [3]
    with torch.no_grad(), attached(unet, [item], cfg=True, progress=lambda: (step[0], 4)):
        inside = unet(sample, torch.tensor(500.0), encoder_hidden_states=hidden, return_dict=False)[0]
        step[0] = 1   # before the unit's window (it starts half-way)
        outside = unet(sample, torch.tensor(500.0), encoder_hidden_states=hidden, return_dict=False)[0]
    longer = torch.cat([hidden, torch.cat([torch.zeros_like(tokens), tokens * 0.5])], dim=1)
    with torch.no_grad():
        expected = unet(sample, torch.tensor(500.0), encoder_hidden_states=longer, return_dict=False)[0]
        plain = unet(sample, torch.tensor(500.0), encoder_hidden_states=hidden, return_dict=False)[0]
    torch.testing.assert_close(inside, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(outside, plain) and (inside - plain).abs().max() > 1e-3


@pytest.fixture(scope="module")
def style_engine(engine, tmp_path_factory):
    """The session engine's model, with a style adapter and a ControlNet in models/ControlNet."""
    data = tmp_path_factory.mktemp("style")
    folder = data / "models" / "ControlNet"
    folder.mkdir(parents=True)
    unet = engine.models.require().base.unet
    save_file(style_tensors(unet.config.cross_attention_dim, seed=3, tokens=4),
              str(folder / "t2iadapter_style_sd14v1.safetensors"))
    save_original_layout(build_tiny_controlnet(unet, seed=1), folder / "tiny-cn.safetensors")
    return engine_over(engine, data)


def _style_unit(**fields) -> ControlUnit:
    picture = Image.fromarray(np.random.default_rng(4).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return ControlUnit(**{"enabled": True, "module": "t2ia_style_clipvision", "model": "t2iadapter_style_sd14v1",
                          "image": picture, **fields})


def _encoder_path(engine: Engine) -> Path:
    return engine.addons.controlnets.folder / "annotators" / "clip_vision" / "clip_vitl.safetensors"


def test_a_style_unit_needs_the_vit_l_encoder_and_the_right_preprocessor(style_engine):
    library = style_engine.addons.controlnets
    _encoder_path(style_engine).unlink(missing_ok=True)
    with pytest.raises(RequestError, match="CLIP ViT-L/14 image encoder is missing: put clip_vitl.safetensors"):
        check_units((_style_unit(),), library, "sd1")
    write_encoder_file(_encoder_path(style_engine), seed=5)
    [checked] = check_units((_style_unit(),), library, "sd1")
    assert checked.model == "t2iadapter_style_sd14v1"
    with pytest.raises(RequestError, match="is a T2I style adapter: use the t2ia_style_clipvision preprocessor"):
        check_units((_style_unit(module="none"),), library, "sd1")
    with pytest.raises(RequestError, match="'t2ia_style_clipvision' is for T2I style adapter models .* 'tiny-cn'"):
        check_units((_style_unit(model="tiny-cn"),), library, "sd1")


def test_a_style_unit_steers_the_picture_by_its_reference(style_engine):
    write_encoder_file(_encoder_path(style_engine), seed=5)
    plain = style_engine.generate(BASE)
    styled = style_engine.generate(BASE.replace(controlnet_units=(_style_unit(),)))
    other = Image.fromarray(np.full((64, 64, 3), (240, 20, 20), dtype=np.uint8))
    restyled = style_engine.generate(BASE.replace(controlnet_units=(_style_unit(image=other),)))
    assert np.abs(pixels(styled) - pixels(plain)).mean() > 0.5
    assert np.abs(pixels(styled) - pixels(restyled)).mean() > 0.05   # the reference picture matters
    weightless = style_engine.generate(BASE.replace(controlnet_units=(_style_unit(weight=0.0),)))
    assert weightless.images[0].tobytes() == plain.images[0].tobytes()
    again = style_engine.generate(BASE.replace(controlnet_units=(_style_unit(),)))
    assert again.images[0].tobytes() == styled.images[0].tobytes()
    assert "Module: t2ia_style_clipvision" in styled.infotexts[0]
    assert style_engine.generate(BASE).images[0].tobytes() == plain.images[0].tobytes()
