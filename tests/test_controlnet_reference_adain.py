"""reference_adain and reference_adain+attn units (engine/controlnet/reference.py): the block
outputs the ControlNet extension picks take the reference pass's per-channel mean and spread
(AdaIN), chosen by weight and blended by Style Fidelity; the +attn variant also does reference_only's
attention; everything is taken off the UNet after the job."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from engine.controlnet import reference
from engine.controlnet.checks import check_units
from engine.networks.lora_keys import ldm_unet_names
from tests import test_controlnet
from tests.test_controlnet import BASE, pixels
from tests.test_controlnet_reference import _reference_picture, _unit

cn_engine = test_controlnet.cn_engine   # the session engine with its ControlNet folder, a module fixture


def test_adain_moves_each_channels_mean_and_spread_to_the_kept_ones():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 6) * 2 + 1
    kept = [torch.randn(4, 3, 5, 6) * 0.5 - 3, torch.randn(4, 3, 5, 6) * 4]
    bank = reference.AdainBank()
    for tensor in kept:
        bank.means.append(tensor.mean(dim=(2, 3), keepdim=True))
        bank.variances.append(tensor.var(dim=(2, 3), keepdim=True, unbiased=False))
        bank.fidelities.append(0.25)
    result = reference.adain_blend(x, bank, negative_rows=slice(0, 2))
    # Written out: the kept statistics averaged over the write passes, x normalised onto them.
    target_mean = (kept[0].mean((2, 3)) + kept[1].mean((2, 3))) / 2
    target_std = ((kept[0].var((2, 3), unbiased=False) + kept[1].var((2, 3), unbiased=False)) / 2).sqrt()
    matched = (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), unbiased=False, keepdim=True)
    matched = matched * target_std[..., None, None] + target_mean[..., None, None]
    torch.testing.assert_close(result[2:], matched[2:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result[2:].mean((2, 3)), target_mean[2:], rtol=1e-4, atol=1e-4)
    # The negative half keeps a quarter (the fidelity) of its own picture.
    torch.testing.assert_close(result[:2], 0.25 * x[:2] + 0.75 * matched[:2], rtol=1e-5, atol=1e-5)
    unguided = reference.adain_blend(x, bank, negative_rows=None)
    torch.testing.assert_close(unguided, matched, rtol=1e-5, atol=1e-5)


def test_a_hook_keeps_only_above_its_threshold_and_reads_once():
    state = reference.ReferenceState()
    hook = reference.AdainHook(state, threshold=1.0)
    x = torch.randn(2, 3, 4, 4)
    state.mode, state.adain, state.weight = "write", True, 1.0
    assert hook(None, (), x) is None and not hook.bank.means       # 1.0 is not above 1.0
    state.weight = 1.2
    hook(None, (), (x * 3 + 2,))                                    # a tuple output (attention blocks)
    assert len(hook.bank.means) == 1
    state.mode = "read"
    y = torch.randn(2, 3, 4, 4)
    [read] = hook(None, (), (y,))
    torch.testing.assert_close(read.mean((2, 3)), (x * 3 + 2).mean((2, 3)), rtol=1e-4, atol=1e-4)
    assert hook(None, (), y) is None          # the bank was used up
    state.mode, state.adain = "write", False  # a reference_only write keeps no statistics
    hook(None, (), x)
    assert not hook.bank.means


def _unet(sdxl: bool) -> UNet2DConditionModel:
    """A UNet with SD 1.x's (or SDXL's) block layout, tiny widths."""
    if sdxl:
        down = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
        up = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
        widths = (8, 16, 16)
    else:
        down = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
        up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
        widths = (8, 8, 16, 16)
    return UNet2DConditionModel(sample_size=16, block_out_channels=widths, layers_per_block=2, down_block_types=down,
                                up_block_types=up, cross_attention_dim=8, norm_num_groups=4, attention_head_dim=2)


@pytest.mark.parametrize("sdxl", [False, True])
def test_the_blocks_are_the_original_unets_and_each_hook_ends_its_block(sdxl):
    unet = _unet(sdxl)
    ldm = ldm_unet_names(unet)   # the LoRA loader's own diffusers -> LDM naming, an independent table
    name_of = {id(module): name for name, module in unet.named_modules()}
    blocks = reference.adain_blocks(unet, sdxl)

    def ldm_block(module) -> tuple[str, int]:
        """The LDM block that holds `module`, and the module's position inside it."""
        prefix = name_of[id(module)]
        found = {ldm[name] for name in ldm if name == prefix or name.startswith(prefix + ".")}
        parts = {tuple(name.split(".")[:3]) for name in found}
        assert len(parts) == 1, parts
        block, number, position = parts.pop()
        return f"{block}.{number}", int(position)

    positions: dict[str, int] = {}
    for ldm_name in ldm.values():
        block, number, position = (ldm_name.split(".") + ["", "", ""])[:3]
        if block in ("input_blocks", "output_blocks"):
            key = f"{block}.{number}"
            positions[key] = max(positions.get(key, 0), int(position))
    chosen = []
    for module, threshold in blocks[1:]:
        block, position = ldm_block(module)
        assert position == positions[block], block     # the block's last part: its output is the block's
        chosen.append((block, threshold))
    assert blocks[0] == (unet.mid_block, 0.0)
    if sdxl:
        expected = ([(f"input_blocks.{i}", 2 * (1 - w / 4)) for w, i in enumerate((4, 5, 7, 8))]
                    + [(f"output_blocks.{i}", 2 * i / 6) for i in range(6)])
    else:
        expected = ([(f"input_blocks.{i}", 2 * (1 - w / 6)) for w, i in enumerate((4, 5, 7, 8, 10, 11))]
                    + [(f"output_blocks.{i}", 2 * i / 8) for i in range(8)])
    assert [(block, pytest.approx(threshold)) for block, threshold in expected] == chosen


def _adain(**fields):
    return _unit(**{"module": "reference_adain", **fields})


def test_adain_units_need_no_model_steer_the_picture_and_leave_the_unet(cn_engine):
    unet = cn_engine.models.require().base.unet
    processors = dict(unet.attn_processors)
    plain = cn_engine.generate(BASE)
    adain = cn_engine.generate(BASE.replace(controlnet_units=(_adain(),)))
    red = cn_engine.generate(BASE.replace(controlnet_units=(_adain(image=_reference_picture((220, 30, 20))),)))
    both = cn_engine.generate(BASE.replace(controlnet_units=(_adain(module="reference_adain+attn"),)))
    attention = cn_engine.generate(BASE.replace(controlnet_units=(_unit(),)))
    assert np.abs(pixels(adain) - pixels(plain)).mean() > 0.5
    assert np.abs(pixels(adain) - pixels(red)).mean() > 0.01      # the reference picture matters
    assert np.abs(pixels(both) - pixels(adain)).mean() > 0.01     # +attn adds the attention part ...
    assert np.abs(pixels(both) - pixels(attention)).mean() > 0.01  # ... to the statistics
    again = cn_engine.generate(BASE.replace(controlnet_units=(_adain(),)))
    assert again.images[0].tobytes() == adain.images[0].tobytes()
    weightless = cn_engine.generate(BASE.replace(controlnet_units=(_adain(weight=0.0),)))
    assert weightless.images[0].tobytes() == plain.images[0].tobytes()
    assert all(unet.attn_processors[name] is processor for name, processor in processors.items())
    assert not any(module._forward_hooks for module in unet.modules())
    assert cn_engine.generate(BASE).images[0].tobytes() == plain.images[0].tobytes()
    assert "Module: reference_adain" in adain.infotexts[0]


def test_an_adain_unit_moves_the_chosen_outputs_statistics_to_the_references(cn_engine, monkeypatch):
    """In the real job, every chosen block's output in the reading call ends up with the mean the
    write pass kept (the positive half, all of it at fidelity 0)."""
    checked = []
    real = reference.adain_blend

    def spying(x, bank, negative_rows):
        result = real(x, bank, negative_rows)
        kept = sum(bank.means) / len(bank.means)
        checked.append(torch.allclose(result.mean((2, 3), keepdim=True), kept.to(result.dtype), atol=1e-3))
        return result

    monkeypatch.setattr(reference, "adain_blend", spying)
    cn_engine.generate(BASE.replace(steps=2, controlnet_units=(_adain(control_mode="My prompt is more important"),)))
    assert checked and all(checked)


def test_checking_an_adain_unit_asks_for_no_model(cn_engine):
    library = cn_engine.addons.controlnets
    for module in ("reference_adain", "reference_adain+attn"):
        [checked] = check_units((_adain(module=module, model="whatever"),), library, "sd1")
        assert checked.model == "None" and checked.module == module
