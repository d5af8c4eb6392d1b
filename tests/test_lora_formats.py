"""Every LoRA format, merged into the weights as its definition says and taken off bit for bit.

Each file is written by the test in its real key layout (tests/support/lycoris_files.py), applied
with `<lora:name:0.7>` and compared with the same factors merged by hand; after the block every
parameter of the UNet and the text encoders equals its value before (torch.equal).
"""

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.files import HashCache
from engine.networks.lora import LoraLibrary, applied_loras
from engine.networks.lora_keys import LayerIndex
from engine.output.infotext import parse
from engine.prompts.prompt_parser import ExtraNetwork
from engine.request import GenerationRequest
from tests.conftest import make_engine
from tests.support.lycoris_files import expected_bias, expected_weight, ldm_module_names, write_state

KINDS = ["lora", "locon_tucker", "loha", "loha_tucker", "lokr", "lokr_full", "dora", "oft_kohya", "oft_diag",
         "boft", "ia3", "ia3_input", "full", "norm"]
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
BASE = GenerationRequest(prompt="a red cube", steps=2, width=64, height=64, sampler_name="Euler",
                         seed=7, save_images=False, save_grid=False)


@pytest.fixture(scope="module")
def pipes(tiny_models):
    return {family: tiny_models.reference_pipeline(family) for family in ("sd1", "sd2", "sdxl")}


@pytest.fixture
def library(tmp_path):
    return LoraLibrary([tmp_path / "Lora"], HashCache(tmp_path / "cache.json"))


def snapshot(pipe) -> dict[str, torch.Tensor]:
    return {f"{part}.{name}": p.detach().clone() for part in COMPONENTS if getattr(pipe, part, None) is not None
            for name, p in getattr(pipe, part).named_parameters()}


def changed_params(pipe, before) -> set[str]:
    return {name for name, value in snapshot(pipe).items() if not torch.equal(value, before[name])}


def save(library, name: str, state: dict, metadata=None) -> str:
    library.folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(library.folder / f"{name}.safetensors"), metadata=metadata)
    library.refresh()
    return name


def tag(name: str, *weights: str) -> list[ExtraNetwork]:
    return [ExtraNetwork("lora", name, weights or ("0.7",))]


def assert_merged_by_hand(pipe, kind, per_layer, before, te: float, unet: float):
    expected_changes = set()
    for (component, module_name), f in per_layer.items():
        module = dict(getattr(pipe, component).named_modules())[module_name]
        strength = unet if component == "unet" else te
        original = before[f"{component}.{module_name}.weight"]
        expected = expected_weight(kind, original, f, strength).float()
        assert torch.allclose(module.weight, expected, atol=1e-5, rtol=1e-4), \
            f"{component}.{module_name}: {(module.weight - expected).abs().max()} from the merge by hand"
        assert (expected - original).abs().max() > 1e-4, "the test's change is too small to tell"
        expected_changes.add(f"{component}.{module_name}.weight")
        if getattr(module, "bias", None) is not None:
            bias = expected_bias(kind, before[f"{component}.{module_name}.bias"], f, strength).float()
            assert torch.allclose(module.bias, bias, atol=1e-6)
            if not torch.equal(bias, before[f"{component}.{module_name}.bias"]):
                expected_changes.add(f"{component}.{module_name}.bias")
    assert changed_params(pipe, before) == expected_changes


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("kind", KINDS)
def test_each_format_is_the_merge_by_hand_and_comes_off_bit_for_bit(pipes, library, family, kind):
    pipe = pipes[family]
    # SD 1.x kohya files name the UNet's layers as diffusers does, SDXL ones as the LDM UNet does.
    state, per_layer = write_state(pipe, kind, naming="kohya_ldm" if family == "sdxl" else "kohya")
    name = save(library, f"{family}-{kind}", state)
    before = snapshot(pipe)
    with applied_loras(pipe, tag(name), library, family) as applied:
        assert applied.warnings == []
        assert list(applied.hashes) == [name]
        assert_merged_by_hand(pipe, kind, per_layer, before, 0.7, 0.7)
        if family == "sdxl" and "tucker" not in kind:  # the second text encoder's (lora_te2_) too
            assert any(component == "text_encoder_2" for component, _ in per_layer)
    assert changed_params(pipe, before) == set()


@pytest.mark.parametrize("naming", ["peft", "diffusers_old", "kohya"])
def test_key_namings_and_separate_text_encoder_and_unet_weights(pipes, library, naming):
    pipe = pipes["sdxl"]
    state, per_layer = write_state(pipe, "lora", seed=4, naming=naming)
    name = save(library, f"named-{naming}", state)
    before = snapshot(pipe)
    with applied_loras(pipe, tag(name, "0.4", "1.2"), library, "sdxl") as applied:
        assert applied.warnings == []
        assert_merged_by_hand(pipe, "lora", per_layer, before, te=0.4, unet=1.2)
    assert changed_params(pipe, before) == set()


def test_ldm_names_are_built_from_the_unet_config_for_every_layer(pipes):
    """Every UNet layer the LDM export names is found under that name (not guessed from underscores)."""
    for family in ("sd1", "sd2", "sdxl"):
        unet = pipes[family].unet
        index = LayerIndex(pipes[family])
        for name, ldm in ldm_module_names(unet).items():
            assert index.find("unet", ldm.replace(".", "_")) == (name, dict(unet.named_modules())[name])


def test_several_loras_and_the_same_set_again(pipes, library):
    pipe = pipes["sd1"]
    first, per_first = write_state(pipe, "loha", seed=1)
    second, _ = write_state(pipe, "lokr", seed=2)
    save(library, "first", first)
    save(library, "second", second)
    before = snapshot(pipe)
    calls = tag("first") + [ExtraNetwork("lora", "second", ("0.5",))]
    with applied_loras(pipe, calls, library, "sd1") as applied:
        assert list(applied.hashes) == ["first", "second"]
        both = snapshot(pipe)
        # A pass inside the job naming no LoRA (hires fix) keeps the job's.
        with applied_loras(pipe, [], library, "sd1"):
            assert changed_params(pipe, both) == set()
        # One naming another has its own, then the job's again.
        with applied_loras(pipe, tag("first"), library, "sd1"):
            assert_merged_by_hand(pipe, "loha", per_first, before, 0.7, 0.7)
        assert changed_params(pipe, both) == set()
    assert changed_params(pipe, before) == set()


def test_files_that_cannot_be_applied_are_named_with_the_reason(pipes, library):
    sd1 = pipes["sd1"]
    xl_state, _ = write_state(pipes["sdxl"], "lora", naming="kohya_ldm")
    te2_only = {k: v for k, v in xl_state.items() if k.startswith("lora_te2_")}
    save(library, "te2-only", te2_only)
    wrong_shapes = {k: v for k, v in xl_state.items() if k.startswith("lora_unet_")}
    wrong_shapes.update({k.replace("lora_te1_", "lora_te_"): v[:, :3].contiguous() if v.dim() == 2 and k.endswith("down.weight") else v
                         for k, v in xl_state.items() if k.startswith("lora_te1_")})
    save(library, "wrong-shapes", wrong_shapes)
    library.folder.joinpath("broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    glora = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.a1.weight": torch.ones(2, 4)}
    save(library, "glora", glora)
    partial, per_layer = write_state(sd1, "lora")
    partial["lora_unet_no_such_layer.lora_down.weight"] = torch.ones(2, 2)
    save(library, "partial", partial)
    before = snapshot(sd1)
    calls = [ExtraNetwork("lora", name, ("1",)) for name in ("missing", "te2-only", "broken", "glora", "wrong-shapes")]
    with applied_loras(sd1, calls + tag("partial"), library, "sd1") as applied:
        missing, te2_warning, broken, glora_warning, shapes_warning, partial_warning = applied.warnings
        assert list(applied.hashes) == ["partial"]
        assert_merged_by_hand(sd1, "lora", per_layer, before, 0.7, 0.7)  # the others changed nothing
    assert missing == "LoRA not found: missing"
    assert te2_warning == (f"LoRA te2-only: none of its {len(te2_only)} tensors matched a layer of this SD 1.x "
                           "model; it was not applied")
    assert broken.startswith("LoRA broken could not be read: ") and broken.endswith("; it was not applied")
    assert glora_warning.startswith("LoRA glora: its tensors are of no LoRA format known here")
    assert shapes_warning.startswith("LoRA wrong-shapes: its layers do not fit this SD 1.x model")
    assert shapes_warning.endswith("; it was not applied")
    assert partial_warning == (f"LoRA partial: 1 of its {len(partial)} tensors matched no layer of this "
                               "SD 1.x model and were left out")
    assert changed_params(sd1, before) == set()


def test_lora_hashes_as_a1111_writes_them(pipes, library):
    state, _ = write_state(pipes["sd1"], "lora")
    save(library, "hashed", state)
    save(library, "stamped", state, metadata={"sshs_model_hash": "0123456789abcdef" * 4})
    data = (library.folder / "hashed.safetensors").read_bytes()
    header = int.from_bytes(data[:8], "little")
    # kohya's "addnet" hash: sha256 of what follows the header, so editing metadata keeps it.
    assert library.short_hash(library.find("hashed")) == hashlib.sha256(data[8 + header:]).hexdigest()[:12]
    assert library.short_hash(library.find("stamped")) == "0123456789ab"


def generate_merged_by_hand(engine, request, kind, per_layer, before, strength):
    """The picture of the engine's model with the factors merged by hand (no LoRA tag), the
    weights put back after."""
    pipe = engine.models.current.base
    with torch.no_grad():
        for (component, name), f in per_layer.items():
            module = dict(getattr(pipe, component).named_modules())[name]
            module.weight.copy_(expected_weight(kind, before[f"{component}.{name}.weight"], f, strength).float())
    try:
        return engine.generate(request)
    finally:
        with torch.no_grad():
            for name in snapshot(pipe):
                part, _, param = name.partition(".")
                dict(getattr(pipe, part).named_parameters())[param].copy_(before[name])


def assert_same_picture(result, by_hand, plain):
    # Merged in float32 by either side, the weights differ in the last bits at most.
    image = np.asarray(result.images[0], np.int16)
    assert np.abs(image - np.asarray(by_hand.images[0], np.int16)).max() <= 2
    assert np.abs(image - np.asarray(plain.images[0], np.int16)).max() > 10, "the LoRA must show"


def test_sdxl_ldm_named_lycoris_through_the_engine_switches_without_reloading(tiny_models, tmp_path):
    """An SDXL LoHa with LDM UNet names and te1/te2 keys makes the picture of its weights merged by
    hand; switching to a LoKr keeps the loaded checkpoint and gives the LoKr alone; afterwards
    the model is bit for bit as loaded. `Lora hashes` names the file as the prompt does."""
    engine = make_engine(tiny_models, tmp_path, checkpoint="tiny-sdxl")
    try:
        pipe = engine.models.current.base
        library = engine.addons.loras
        loha, per_loha = write_state(pipe, "loha", seed=5, naming="kohya_ldm")
        lokr, per_lokr = write_state(pipe, "lokr", seed=6, naming="kohya_ldm")
        save(library, "xl-loha", loha)
        save(library, "xl-lokr", lokr)
        before = snapshot(pipe)
        model = engine.models.current
        plain = engine.generate(BASE)
        with_loha = engine.generate(BASE.replace(prompt="a red cube <lora:xl-loha:0.7>"))
        assert with_loha.warnings == []
        assert parse(with_loha.infotexts[0])[2]["Lora hashes"] == f"xl-loha: {library.short_hash(library.find('xl-loha'))}"

        by_hand = generate_merged_by_hand(engine, BASE, "loha", per_loha, before, 0.7)
        assert_same_picture(with_loha, by_hand, plain)

        with_lokr = engine.generate(BASE.replace(prompt="a red cube <lora:xl-lokr:0.7>"))
        assert engine.models.current is model, "no checkpoint reload"
        with applied_loras(pipe, tag("xl-lokr"), library, "sdxl"):  # what that job merged, seen again
            assert_merged_by_hand(pipe, "lokr", per_lokr, before, 0.7, 0.7)
        assert with_lokr.images[0].tobytes() not in (with_loha.images[0].tobytes(), plain.images[0].tobytes())
        assert changed_params(pipe, before) == set()
        assert engine.generate(BASE).images[0].tobytes() == plain.images[0].tobytes()
    finally:
        engine.shutdown()


def test_a_lora_for_another_family_warns_in_the_job_and_leaves_the_picture(tiny_models, tmp_path, pipes):
    engine = make_engine(tiny_models, tmp_path)  # SD 1.x
    try:
        xl_state, _ = write_state(pipes["sdxl"], "lokr", naming="kohya_ldm")
        state = {k: v for k, v in xl_state.items() if k.startswith("lora_te2_")}
        save(engine.addons.loras, "xl-only", state)
        plain = engine.generate(BASE)
        result = engine.generate(BASE.replace(prompt="a red cube <lora:xl-only:1>"))
        assert result.warnings == [f"LoRA xl-only: none of its {len(state)} tensors matched a layer of this "
                                   "SD 1.x model; it was not applied"]
        assert "Lora hashes" not in parse(result.infotexts[0])[2]
        assert result.images[0].tobytes() == plain.images[0].tobytes()
    finally:
        engine.shutdown()


def test_dora_magnitude_per_output_channel_when_stored_so():
    """LyCORIS' `wd_on_out` files store the magnitude per output row, (out, 1): the norm is then
    taken over each row instead of each input column."""
    from engine.networks.lora_formats import layer_change

    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(6, 4, generator=generator)
    up, down = torch.randn(6, 2, generator=generator), torch.randn(2, 4, generator=generator)
    magnitude = torch.rand(6, 1, generator=generator) + 0.5
    factors = {"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(1.0), "dora_scale": magnitude}
    change, bias = layer_change(factors, weight, 0.7)
    merged = (weight + up @ down * 0.5).double()
    rows = torch.stack([row / row.norm() * m for row, m in zip(merged, magnitude.double().flatten())])
    assert bias is None
    assert torch.allclose(weight + change, (weight.double() + 0.7 * (rows - weight.double())).float(), atol=1e-6)


def test_hires_fix_pass_keeps_the_jobs_lora(tiny_models, tmp_path):
    """The hires pass runs inside the job with the LoRA still merged (not removed by the inner
    pass, not merged twice): the picture of the weights merged by hand, both passes."""
    engine = make_engine(tiny_models, tmp_path)
    try:
        pipe = engine.models.current.base
        state, per_layer = write_state(pipe, "lokr", seed=8)
        save(engine.addons.loras, "hires-lokr", state)
        before = snapshot(pipe)
        hires = BASE.replace(extensions={"hires_fix": {"enabled": True, "upscaler": "Lanczos", "scale": 1.5,
                                                       "steps": 2, "denoising_strength": 0.5}})
        plain = engine.generate(hires)
        result = engine.generate(hires.replace(prompt="a red cube <lora:hires-lokr:0.7>"))
        assert result.warnings == []
        assert_same_picture(result, generate_merged_by_hand(engine, hires, "lokr", per_layer, before, 0.7), plain)
        assert changed_params(pipe, before) == set()
    finally:
        engine.shutdown()
