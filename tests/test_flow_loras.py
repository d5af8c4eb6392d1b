"""LoRAs on FLUX.1 and SD 3.5: each format's file (written in its own key names by
tests/support/flow_lora_files.py) merged through applied_loras equals the merge by hand --
W + strength * alpha / rank * up @ down in diffusers' layout, fused q/k/v (and FLUX's linear1)
split by rows from the tiny model's own widths, the original models' (shift, scale) modulations
swapped -- and every weight is bit for bit the original after the block. Once end to end through
the generation run: the picture is the one of the model merged by hand, `Lora hashes` is
written, weight 0 is the picture without the LoRA. Files for another family are named in the
warnings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.addons import AddOns
from engine.files import HashCache
from engine.job_results import OutputPolicy
from engine.jobs import Job
from engine.models.pipelines import LoadedModel
from engine.models.prediction import FLOW, ModelPrediction
from engine.models.registry import CheckpointInfo
from engine.networks.lora import LoraLibrary, applied_loras
from engine.prompts.prompt_parser import ExtraNetwork
from engine.request import GenerationRequest
from engine.runs.generation import GenerationRun
from tests.support.flow_lora_files import FORMATS, WHOLE, flow_lora_state, module, part_rows, write_flow_lora
from tests.support.flow_pipelines import tiny_flow_pipeline
from tests.support.lora_files import kohya_lora_state_dict

PARTS = ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
LAYOUT = {"flux": "flux-dev", "sd3": "sd3.5-medium"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def pipes():
    return {family: tiny_flow_pipeline(layout, seed=11) for family, layout in LAYOUT.items()}


@pytest.fixture
def library(tmp_path):
    return LoraLibrary([tmp_path / "Lora"], HashCache(tmp_path / "cache.json"))


def snapshot(pipe) -> dict[str, torch.Tensor]:
    return {f"{part}.{name}": value.detach().clone() for part in PARTS if getattr(pipe, part, None) is not None
            for name, value in getattr(pipe, part).named_parameters()}


def save(library, name: str, state: dict) -> str:
    library.folder.mkdir(parents=True, exist_ok=True)
    write_flow_lora(library.folder / f"{name}.safetensors", state)
    library.refresh()
    return name


def tag(name: str, *weights: str) -> list[ExtraNetwork]:
    return [ExtraNetwork("lora", name, weights)]


def merged_by_hand(pipe, kind: str, state, before, te: float, unet: float) -> dict[str, torch.Tensor]:
    """Every changed weight as the format defines it, in float64, by the writer's table of parts."""
    spec = FORMATS[kind]
    expected: dict[str, torch.Tensor] = {}
    for layer in spec.layers:
        down, up = state[f"{layer.stem}.{spec.down}"].double(), state[f"{layer.stem}.{spec.up}"].double()
        scale = float(state[f"{layer.stem}.{spec.alpha}"]) / down.shape[0] if spec.alpha else 1.0
        strength = unet if layer.component == "transformer" else te
        delta = strength * scale * (up @ down)
        offset = 0
        for name, half in layer.parts:
            key = f"{layer.component}.{name}.weight"
            weight = expected.setdefault(key, before[key].double().clone())
            rows = part_rows(pipe, layer.component, (name, half))
            start = 0 if half in (WHOLE, 0) else rows
            weight[start:start + rows] += delta[offset:offset + rows]
            offset += rows
    return expected


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_each_flow_format_is_the_merge_by_hand_and_comes_off_bit_for_bit(pipes, library, kind):
    pipe = pipes[kind.split("-")[0]]
    state = flow_lora_state(pipe, kind, alpha=1.0, seed=len(kind))
    name = save(library, kind, state)
    before = snapshot(pipe)
    expected = merged_by_hand(pipe, kind, state, before, te=0.6, unet=0.9)
    with applied_loras(pipe, tag(name, "0.6", "0.9"), library, kind.split("-")[0]) as applied:
        assert applied.warnings == [] and list(applied.hashes) == [name]
        now = snapshot(pipe)
        changed = {key for key, value in now.items() if not torch.equal(value, before[key])}
        assert changed == set(expected), f"changed {sorted(changed ^ set(expected))} unlike the merge by hand"
        for key, weight in expected.items():
            assert (weight - before[key].double()).abs().max() > 1e-3, f"{key}: the test's change is too small"
            torch.testing.assert_close(now[key].double(), weight, rtol=1e-5, atol=1e-6, msg=key)
    after = snapshot(pipe)
    assert all(torch.equal(after[key], before[key]) for key in before)


def test_fused_qkv_widths_come_from_the_model(pipes):
    """The tiny FLUX is 32 wide with a 128-wide MLP: linear1 is 3 x 32 + 128 rows, not 3 x 3072 + 12288."""
    state = flow_lora_state(pipes["flux"], "flux-kohya")
    assert state["lora_unet_single_blocks_1_linear1.lora_up.weight"].shape[0] == 3 * 32 + 128
    assert module(pipes["flux"], "transformer", "single_transformer_blocks.1.proj_mlp").weight.shape[0] == 128


def test_weight_zero_changes_nothing_and_is_applied(pipes, library):
    pipe = pipes["flux"]
    name = save(library, "zero", flow_lora_state(pipe, "flux-kohya"))
    before = snapshot(pipe)
    with applied_loras(pipe, tag(name, "0"), library, "flux") as applied:
        assert applied.warnings == [] and name in applied.hashes
        assert all(torch.equal(value, before[key]) for key, value in snapshot(pipe).items())


def test_a_flow_lora_for_the_other_family_or_with_stray_keys_warns(pipes, library):
    flux, sd3 = pipes["flux"], pipes["sd3"]
    sd3_state = {k: v for k, v in flow_lora_state(sd3, "sd3-kohya").items() if k.startswith("lora_unet_")}
    sd3_file = save(library, "for-sd3", sd3_state)
    flux_file = save(library, "for-flux", {k: v for k, v in flow_lora_state(flux, "flux-bfl").items()
                                           if "final_layer" not in k})
    before = snapshot(flux)
    with applied_loras(flux, tag(sd3_file, "1"), library, "flux") as applied:
        # Its final layer has the name FLUX's has, at SD 3's widths: nothing of it is applied.
        assert applied.hashes == {} and len(applied.warnings) == 1
        assert applied.warnings[0].startswith(f"LoRA {sd3_file}: its layers do not fit this FLUX.1 model "
                                              "(made for another model?): norm_out.linear")
        assert all(torch.equal(value, before[key]) for key, value in snapshot(flux).items())
    before = snapshot(sd3)
    with applied_loras(sd3, tag(flux_file, "1"), library, "sd3") as applied:
        assert applied.hashes == {}
        assert applied.warnings == [f"LoRA {flux_file}: it is made for FLUX.1 models: none of its transformer or "
                                    "UNet layers is in this SD 3.x model; it was not applied"]
        assert all(torch.equal(value, before[key]) for key, value in snapshot(sd3).items())
    mixed = dict(flow_lora_state(flux, "flux-diffusers"))
    mixed["transformer.transformer_blocks.7.attn.to_q.lora_A.weight"] = torch.zeros(2, 32)
    mixed["lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight"] = torch.zeros(2, 32)
    name = save(library, "mixed", mixed)
    with applied_loras(flux, tag(name, "1"), library, "flux") as applied:
        assert name in applied.hashes
        assert applied.warnings == [f"LoRA {name}: 2 of its {len(mixed)} tensors matched no layer of this FLUX.1 "
                                    "model and were left out"]


def test_a_flux_lora_on_an_sd_model_and_an_sd_lora_on_flux_are_named_not_applied(tiny_models, library, pipes):
    """Their CLIP-L layers would fit by name; without the denoising network nothing is applied."""
    sd = tiny_models.reference_pipeline("sd1")
    flux_file = save(library, "flux-on-sd", flow_lora_state(pipes["flux"], "flux-kohya"))
    sd_file = save(library, "sd-on-flux", kohya_lora_state_dict(sd))
    before = {**snapshot(pipes["flux"]), **{f"sd.{k}": v.clone() for k, v in sd.unet.state_dict().items()},
              **{f"sd-te.{k}": v.clone() for k, v in sd.text_encoder.state_dict().items()}}
    with applied_loras(sd, tag(flux_file, "1"), library, "sd1") as applied:
        assert applied.hashes == {}
        assert applied.warnings == [f"LoRA {flux_file}: it is made for FLUX.1 models: none of its transformer or "
                                    "UNet layers is in this SD 1.x model; it was not applied"]
        assert all(torch.equal(v, before[f"sd.{k}"]) for k, v in sd.unet.state_dict().items())
        assert all(torch.equal(v, before[f"sd-te.{k}"]) for k, v in sd.text_encoder.state_dict().items())
    with applied_loras(pipes["flux"], tag(sd_file, "1"), library, "flux") as applied:
        assert applied.hashes == {}
        assert applied.warnings == [f"LoRA {sd_file}: it is made for SD 1.x / 2.x / SDXL models: none of its "
                                    "transformer or UNet layers is in this FLUX.1 model; it was not applied"]
        assert all(torch.equal(value, before[key]) for key, value in snapshot(pipes["flux"]).items())


# ---- end to end through the generation run ----------------------------------------------------


@pytest.fixture(scope="module")
def addons(tmp_path_factory):
    data = tmp_path_factory.mktemp("flow-lora-addons")
    return AddOns.in_data_dir(data, HashCache(data / "cache.json"))


def _run(model, addons, prompt: str):
    request = GenerationRequest(width=64, height=64, steps=3, seed=9, sampler_name="Euler", cfg_scale=1.0,
                                prompt=prompt).validate()
    run = GenerationRun(Job(lambda job: None), request, model, OutputPolicy(save_images=False, save_grid=False),
                        addons)
    return run.run(None)


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_flux_lora_end_to_end_through_the_generation_run(addons):
    pipe = tiny_flow_pipeline("flux-dev", seed=12)
    info = CheckpointInfo("tiny-flux.safetensors", "/nowhere/tiny-flux.safetensors", "safetensors", sha256="cd" * 32)
    model = LoadedModel(info, "flux", pipe, dict(pipe.scheduler.config), detected=ModelPrediction(FLOW, source="test"))
    state = flow_lora_state(pipe, "flux-kohya", alpha=2.0, scale=0.5)
    addons.loras.folder.mkdir(parents=True, exist_ok=True)
    write_flow_lora(addons.loras.folder / "glow.safetensors", state)
    addons.loras.refresh()
    before = snapshot(pipe)
    plain = _run(model, addons, "a lighthouse")
    with_lora = _run(model, addons, "a lighthouse <lora:glow:0.8>")
    zero = _run(model, addons, "a lighthouse <lora:glow:0>")
    assert all(torch.equal(value, before[key]) for key, value in snapshot(pipe).items())
    assert "Lora hashes: \"glow: " in with_lora.infotexts[0] and with_lora.warnings == []
    assert np.array_equal(_pixels(zero.images[0]), _pixels(plain.images[0]))
    assert np.abs(_pixels(with_lora.images[0]) - _pixels(plain.images[0])).max() > 8
    # The same model merged by hand (no LoRA tag) makes the same picture.
    merged = merged_by_hand(pipe, "flux-kohya", state, before, te=0.8, unet=0.8)
    params = dict((f"{part}.{name}", value) for part in PARTS if getattr(pipe, part, None) is not None
                  for name, value in getattr(pipe, part).named_parameters())
    with torch.no_grad():
        for key, weight in merged.items():
            params[key].copy_(weight.float())
        by_hand = _run(model, addons, "a lighthouse")
        for key in merged:
            params[key].copy_(before[key])
    assert np.abs(_pixels(with_lora.images[0]) - _pixels(by_hand.images[0])).max() <= 1
