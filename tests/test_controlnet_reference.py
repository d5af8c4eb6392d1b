"""reference_only units (engine/controlnet/reference.py): no model; the UNet's self-attention
layers attend to the reference picture's own states as well, chosen by weight and blended by
Style Fidelity as the ControlNet extension does, with the UNet given back untouched."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from PIL import Image, ImageDraw

from engine.controlnet import reference
from engine.controlnet.checks import check_units
from engine.controlnet.units import BALANCED, CONTROLNET_MORE, PROMPT_MORE, ControlUnit
from tests import test_controlnet
from tests.test_controlnet import BASE, pixels

cn_engine = test_controlnet.cn_engine   # the session engine with its ControlNet folder, a module fixture


def _manual_attention(attn: Attention, query_states: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head, then the output projection, written out."""
    q, k, v = attn.to_q(query_states), attn.to_k(context), attn.to_v(context)
    heads = attn.heads
    split = [t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v)]
    weights = (split[0] @ split[1].transpose(-1, -2) / math.sqrt(split[0].shape[-1])).softmax(-1)
    out = (weights @ split[2]).transpose(1, 2).reshape(q.shape)
    return attn.to_out[0](out)


def test_reading_attends_to_its_input_and_what_the_write_kept_blended_by_fidelity():
    torch.manual_seed(0)
    attn = Attention(query_dim=8, heads=2, dim_head=4, processor=AttnProcessor2_0()).eval()
    state = reference.ReferenceState()
    processor = reference.ReferenceAttention(attn.processor, state, rank=0.25)
    kept_input = torch.randn(2, 6, 8)
    state.mode, state.weight, state.fidelity = "write", 0.5, 0.5
    processor(attn, kept_input)
    assert len(processor.bank.states) == 1
    hidden = torch.randn(2, 5, 8)
    state.mode, state.negative_rows = "read", slice(0, 1)
    with torch.no_grad():
        ours = processor(attn, hidden)
        with_reference = _manual_attention(attn, hidden, torch.cat([hidden, kept_input], dim=1))
        alone = _manual_attention(attn, hidden, hidden)
    expected = with_reference.clone()
    expected[:1] = 0.5 * alone[:1] + 0.5 * with_reference[:1]   # the negative half, blended
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert not processor.bank.states   # read once per call
    # A layer ranked above the unit's weight keeps nothing.
    late = reference.ReferenceAttention(attn.processor, state, rank=0.75)
    state.mode = "write"
    late(attn, kept_input)
    assert not late.bank.states


def test_style_fidelity_follows_the_control_mode_and_the_family():
    assert reference.fidelity_for(-1, BALANCED, sdxl=False, hires=False) == 0.5
    assert reference.fidelity_for(0.8, BALANCED, sdxl=True, hires=False) == pytest.approx(0.8 ** 3)
    assert reference.fidelity_for(0.2, CONTROLNET_MORE, sdxl=False, hires=False) == 1.0
    assert reference.fidelity_for(0.9, PROMPT_MORE, sdxl=False, hires=False) == 0.0
    assert reference.fidelity_for(0.9, BALANCED, sdxl=False, hires=True) == 0.0


def _reference_picture(colour) -> Image.Image:
    image = Image.new("RGB", (64, 64), colour)
    ImageDraw.Draw(image).ellipse((10, 10, 54, 54), fill=(250, 250, 40))
    return image


def _unit(**fields) -> ControlUnit:
    return ControlUnit(**{"enabled": True, "module": "reference_only", "image": _reference_picture((20, 40, 200)),
                          **fields})


def test_a_reference_unit_needs_no_model_steers_the_picture_and_leaves_the_unet(cn_engine):
    unet = cn_engine.models.require().base.unet
    processors = dict(unet.attn_processors)
    plain = cn_engine.generate(BASE)
    blue = cn_engine.generate(BASE.replace(controlnet_units=(_unit(),)))
    noise = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    noisy = cn_engine.generate(BASE.replace(controlnet_units=(_unit(image=noise),)))
    assert np.abs(pixels(blue) - pixels(plain)).mean() > 0.5
    assert np.abs(pixels(blue) - pixels(noisy)).mean() > 0.01   # the reference picture matters (the tiny VAE's
    # latents of any picture are small beside the noise they are mixed with, so by little)
    again = cn_engine.generate(BASE.replace(controlnet_units=(_unit(),)))
    assert again.images[0].tobytes() == blue.images[0].tobytes()   # seeded: the same job, the same picture
    weightless = cn_engine.generate(BASE.replace(controlnet_units=(_unit(weight=0.0),)))
    assert weightless.images[0].tobytes() == plain.images[0].tobytes()
    assert all(unet.attn_processors[name] is processor for name, processor in processors.items())
    assert cn_engine.generate(BASE).images[0].tobytes() == plain.images[0].tobytes()
    assert "Module: reference_only" in blue.infotexts[0]


def test_the_weight_picks_the_widest_layers(cn_engine, monkeypatch):
    unet = cn_engine.models.require().base.unet
    layers = reference.self_attention_layers(unet)
    widths = [block.norm1.normalized_shape[0] for block in layers]
    assert widths == sorted(widths, reverse=True) and len(layers) >= 2
    written = []
    real = reference.ReferenceAttention.__call__

    def spying(self, attn, hidden_states, *args, **kwargs):
        if self.state.mode == "write" and self.state.weight > self.rank:
            written.append(self.rank)
        return real(self, attn, hidden_states, *args, **kwargs)

    monkeypatch.setattr(reference.ReferenceAttention, "__call__", spying)
    cn_engine.generate(BASE.replace(steps=1, controlnet_units=(_unit(weight=0.5),)))
    ranks = sorted(set(written))
    assert ranks == [i / len(layers) for i in range(len(layers)) if i / len(layers) < 0.5]


def test_checking_a_reference_unit_asks_for_no_model(cn_engine):
    library = cn_engine.addons.controlnets
    [checked] = check_units((_unit(model="whatever"),), library, "sd1")
    assert checked.model == "None" and checked.module == "reference_only"
    _unit(model="None").validate(0)   # enabled with no model: fine for reference_only


def test_the_api_takes_a_reference_unit_without_a_model(demo_server):
    import httpx

    from tests.test_api_img2img import b64, decode

    body = {"prompt": "a house", "steps": 3, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler",
            "alwayson_scripts": {"controlnet": {"args": [
                {"enabled": True, "module": "reference_only", "image": b64(_reference_picture((20, 40, 200)))}]}}}
    with httpx.Client(base_url=demo_server.url, timeout=120) as client:
        answer = client.post("/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 200, answer.text
    picture, shown = (decode(image) for image in answer.json()["images"])
    assert shown.size == (64, 64)
    assert np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(_reference_picture((20, 40, 200))))
