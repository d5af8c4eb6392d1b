"""The SDXL refiner as A1111 1.10 runs it, on tiny checkpoints written in the single-file layouts
users download: a refiner file (one OpenCLIP-G encoder, aesthetic-score conditioning) loads
offline; part-way through the sampling it takes over the UNet calls, which equals running
k-diffusion's sampler over the same schedule with the base model's calls, then the refiner's
(the reference below, written from A1111's apply_refiner rule); hires fix, the switch by steps,
timestep samplers, any checkpoint of the same latent space as a refiner, the infotext both ways,
and the job's model set aside before the refiner is placed."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTokenizer

from engine.errors import RequestError
from engine.models.loading import detect_layout, load_checkpoint, read_shapes
from engine.models.pipelines import LoadedModel
from engine.models.registry import CheckpointInfo
from engine.models.tiny_models import build_tiny_pipeline, write_config_folder
from engine.output import infotext
from engine.request import GenerationRequest, RefinerChoice
from engine.sampling.runner import BatchSampling
from tests.conftest import make_engine
from tests.support import kdiffusion_ref
from tests.support.ldm_export import export_single_file
from tests.test_a1111_sampling_reference import (
    A1111Guidance,
    A1111Noise,
    HijackedTorch,
    LdmStandIn,
    relative_difference,
)

REFINER_SEED, OTHER_SDXL_SEED = 3, 7
PROMPT, NEGATIVE = "a red cube on grass", "blurry"


@pytest.fixture(scope="module")
def files(tiny_models, tmp_path_factory):
    """A models folder with tiny SDXL, an SDXL refiner, another SDXL and SD 1.x."""
    root = tmp_path_factory.mktemp("refiner-models")
    models = dataclasses.replace(tiny_models, models_dir=root / "Stable-diffusion")
    models.models_dir.mkdir()
    if not (tiny_models.config_root / "sdxl-refiner").is_dir():
        write_config_folder("sdxl-refiner", tiny_models.config_root / "sdxl-refiner", str(tiny_models.tokenizer_dir),
                            str(tiny_models.tokenizer_2_dir))
    for family in ("sdxl", "sd1"):
        (models.models_dir / f"tiny-{family}.safetensors").symlink_to(tiny_models.checkpoint(family))
    export_single_file(refiner_reference(tiny_models), models.models_dir / "tiny-sdxl-refiner.safetensors",
                       "sdxl-refiner")
    export_single_file(tiny_models.reference_pipeline("sdxl", seed=OTHER_SDXL_SEED),
                       models.models_dir / "tiny-sdxl-b.safetensors", "sdxl")
    return models


def refiner_reference(tiny_models):
    """The refiner's weights built directly in diffusers."""
    tokenizer_2 = CLIPTokenizer.from_pretrained(str(tiny_models.tokenizer_2_dir))
    return build_tiny_pipeline("sdxl-refiner", None, tokenizer_2, seed=REFINER_SEED)


@pytest.fixture(scope="module")
def engine(files, tmp_path_factory):
    engine = make_engine(files, tmp_path_factory.mktemp("refiner-data"), checkpoint="tiny-sdxl")
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def kdiff():
    return kdiffusion_ref.load()


@pytest.fixture
def unet_calls():
    """(cross-attention width, id of the UNet, timestep) of every UNet call while the test runs."""
    calls = []

    def record(module, args):
        if isinstance(module, UNet2DConditionModel):
            calls.append((module.config.cross_attention_dim, id(module), float(args[1].reshape(-1)[0])))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    yield calls
    handle.remove()


def job(**changes) -> GenerationRequest:
    fields = dict(prompt=PROMPT, negative_prompt=NEGATIVE, steps=8, width=64, height=64, seed=5, cfg_scale=6.0,
                  sampler_name="Euler", randn_source="CPU", save_images=False, save_grid=False,
                  refiner=RefinerChoice("tiny-sdxl-refiner", 0.5))
    fields.update(changes)
    return GenerationRequest(**fields)


BASE_WIDTH, REFINER_WIDTH = 96, 64  # the tiny models' cross-attention widths tell the UNets apart


# Loading ------------------------------------------------------------------------------------------

def test_refiner_single_file_loads_offline_with_the_configs_in_the_repo(files, tiny_models):
    path = files.models_dir / "tiny-sdxl-refiner.safetensors"
    layout = detect_layout(read_shapes(path, False), path.name)
    assert (layout.family, layout.refiner, layout.config_name) == ("sdxl", True, "sdxl-refiner")
    from engine.devices import DeviceConfig

    loaded = load_checkpoint(CheckpointInfo(path.name, str(path), "safetensors"), DeviceConfig.choose(use_cpu=True),
                             tiny_models.config_root)
    reference = refiner_reference(tiny_models)
    assert loaded.pipe.text_encoder is None and loaded.pipe.config.requires_aesthetics_score
    for name in ("unet", "text_encoder_2", "vae"):
        ours, theirs = getattr(loaded.pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs), name


def test_the_repo_refiner_config_is_the_published_architecture():
    """model_configs/sdxl-refiner's UNet is what diffusers derives from Stability's
    sd_xl_refiner.yaml (its network_config, restated here)."""
    import json
    from pathlib import Path

    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    network = dict(adm_in_channels=2560, num_classes="sequential", in_channels=4, out_channels=4, model_channels=384,
                   attention_resolutions=[4, 2], num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_head_channels=64,
                   use_linear_in_transformer=True, transformer_depth=4, context_dim=[1280] * 4)
    original = {"model": {"params": {"network_config": {"params": network},
                                     "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}}}}}
    with pytest.warns(FutureWarning):
        derived = create_unet_diffusers_config_from_ldm(original, {}, image_size=1024)
    folder = Path(__file__).resolve().parent.parent / "engine" / "models" / "model_configs" / "sdxl-refiner"
    ours = json.loads((folder / "unet" / "config.json").read_text())
    for key, value in derived.items():
        if key != "sample_size":
            assert ours[key] == value, key
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLImg2ImgPipeline" and index["text_encoder"] == [None, None]
    assert json.loads((folder / "text_encoder_2" / "config.json").read_text())["hidden_size"] == 1280


def test_a_refiner_makes_pictures_on_its_own_too(engine):
    engine.load_checkpoint("tiny-sdxl-refiner").outcome()
    try:
        result = engine.generate(job(refiner=None, steps=3))
        assert engine.models.current.is_refiner and len(result.images) == 1
    finally:
        engine.load_checkpoint("tiny-sdxl").outcome()


# The switch ---------------------------------------------------------------------------------------

def _encode(encoder, tokenizer, text):
    ids = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    output = encoder(ids, output_hidden_states=True)
    return output.hidden_states[-2], getattr(output, "text_embeds", None)


class MicroConditionedStandIn(LdmStandIn):
    """An SDXL UNet as k-diffusion's CompVis wrapper calls it, each row of the [positive,
    negative] batch with its own pooled text and micro-conditioning."""

    def __init__(self, unet, pooled, time_ids):
        super().__init__(unet)
        self.pooled, self.time_ids = pooled, time_ids

    def apply_model(self, x, t, cond):
        added = {"text_embeds": self.pooled, "time_ids": self.time_ids}
        return self.unet(x, t, encoder_hidden_states=cond["c_crossattn"][0], added_cond_kwargs=added,
                         return_dict=False)[0]


class SwitchingGuidance(torch.nn.Module):
    """A1111's CFG denoiser with its apply_refiner rule: before each call, the timestep nearest
    the call's sigma in the current model's table; from the call where (999 - t) / 1000 is no
    longer below `switch_at`, the refiner's model and conditioning."""

    def __init__(self, base, refiner, switch_at, scale):
        super().__init__()
        self.base, self.refiner, self.switch_at, self.scale = base, refiner, switch_at, scale
        self.calls, self.switched_at = 0, None

    def forward(self, x, sigma, **_):
        if self.switched_at is None:
            wrapper = self.base[0]
            timestep = torch.argmin(torch.abs(wrapper.sigmas - torch.max(sigma)))
            if not (999 - timestep) / 1000 < self.switch_at:
                self.switched_at = self.calls
        wrapper, cond, uncond = self.refiner if self.switched_at is not None else self.base
        self.calls += 1
        return A1111Guidance(wrapper, cond, uncond, self.scale)(x, sigma)


def _by_hand(kdiff, tiny_models, steps, switch_at, seed, cfg):
    """The base's calls, then the refiner's, over one Euler schedule: final latents and the call
    the refiner took over at."""
    sampling, external = kdiff
    base = tiny_models.reference_pipeline("sdxl")
    refiner = refiner_reference(tiny_models)
    with torch.no_grad():
        pos_1, _ = _encode(base.text_encoder, base.tokenizer, PROMPT)
        pos_2, pos_pooled = _encode(base.text_encoder_2, base.tokenizer_2, PROMPT)
        neg_1, _ = _encode(base.text_encoder, base.tokenizer, NEGATIVE)
        neg_2, neg_pooled = _encode(base.text_encoder_2, base.tokenizer_2, NEGATIVE)
        ref_pos, ref_pos_pooled = _encode(refiner.text_encoder_2, refiner.tokenizer_2, PROMPT)
        ref_neg, ref_neg_pooled = _encode(refiner.text_encoder_2, refiner.tokenizer_2, NEGATIVE)
    size = [64.0, 64.0, 0.0, 0.0]
    base_ids = torch.tensor([size + [64.0, 64.0]] * 2)
    refiner_ids = torch.tensor([size + [6.0], size + [2.5]])  # A1111's aesthetic scores: prompt, negative
    base_wrapper = external.CompVisDenoiser(
        MicroConditionedStandIn(base.unet, torch.cat([pos_pooled, neg_pooled]), base_ids), quantize=False)
    refiner_wrapper = external.CompVisDenoiser(
        MicroConditionedStandIn(refiner.unet, torch.cat([ref_pos_pooled, ref_neg_pooled]), refiner_ids), quantize=False)
    guidance = SwitchingGuidance((base_wrapper, torch.cat([pos_1, pos_2], -1), torch.cat([neg_1, neg_2], -1)),
                                 (refiner_wrapper, ref_pos, ref_neg), switch_at, cfg)
    noise = A1111Noise([seed])
    sigmas = base_wrapper.get_sigmas(steps)  # Euler's own schedule: Uniform
    original = sampling.torch
    sampling.torch = HijackedTorch(noise)
    try:
        with torch.inference_mode():
            latents = sampling.sample_euler(guidance, noise.next() * sigmas[0], sigmas)
    finally:
        sampling.torch = original
    return latents, guidance.switched_at


@pytest.fixture
def sampled(monkeypatch):
    """Every BatchSampling run's final latents, in order."""
    outputs = []
    original = BatchSampling.run

    def recording(self, first_noise, start=None):
        out = original(self, first_noise, start)
        outputs.append(out)
        return out

    monkeypatch.setattr(BatchSampling, "run", recording)
    return outputs


@pytest.mark.parametrize("switch_at", [0.5, 0.8])
def test_the_refiner_continues_the_same_schedule_as_by_hand(engine, files, kdiff, sampled, unet_calls, switch_at):
    result = engine.generate(job(refiner=RefinerChoice("tiny-sdxl-refiner", switch_at)))
    widths = [width for width, _, _ in unet_calls]
    theirs, switched_at = _by_hand(kdiff, files, 8, switch_at, seed=5, cfg=6.0)
    assert 0 < switched_at < 8, "the switch falls inside the sampling"
    assert widths == [BASE_WIDTH] * switched_at + [REFINER_WIDTH] * (8 - switched_at)
    assert relative_difference(sampled[0], theirs) < 1e-5
    params = infotext.parse(result.infotexts[0])[2]
    short = engine.models.registry.find("tiny-sdxl-refiner").short_hash
    assert params["Refiner"] == f"tiny-sdxl-refiner [{short}]" and float(params["Refiner switch at"]) == switch_at
    assert engine.models.current.info.model_name == "tiny-sdxl"  # the job's model is back


def test_switch_at_one_never_switches_and_writes_nothing(engine, unet_calls):
    result = engine.generate(job(refiner=RefinerChoice("tiny-sdxl-refiner", 1.0)))
    assert {width for width, _, _ in unet_calls} == {BASE_WIDTH}
    assert "Refiner" not in infotext.parse(result.infotexts[0])[2]


def test_switch_by_sampling_steps_counts_calls(engine, unet_calls):
    result = engine.generate(job(refiner=RefinerChoice("tiny-sdxl-refiner", 0.25)),
                             overrides={"refiner_switch_by_sample_steps": True})
    assert [width for width, _, _ in unet_calls] == [BASE_WIDTH] * 2 + [REFINER_WIDTH] * 6
    assert infotext.parse(result.infotexts[0])[2]["Refiner switch by sampling steps"] == "True"


def test_a_timestep_sampler_switches_by_its_timesteps(engine, unet_calls):
    engine.generate(job(sampler_name="DDIM", steps=10))
    first_refiner = next(i for i, (width, _, _) in enumerate(unet_calls) if width == REFINER_WIDTH)
    assert all(width == BASE_WIDTH and (999 - t) / 1000 < 0.5 for width, _, t in unet_calls[:first_refiner])
    assert (999 - unet_calls[first_refiner][2]) / 1000 >= 0.5
    assert all(width == REFINER_WIDTH for width, _, _ in unet_calls[first_refiner:])


def test_each_batch_starts_on_the_base_again(engine, unet_calls):
    result = engine.generate(job(n_iter=2, steps=4))
    assert [width for width, _, _ in unet_calls] == ([BASE_WIDTH] * 2 + [REFINER_WIDTH] * 2) * 2
    assert len(result.images) == 2


HIRES = {"hires_fix": {"enabled": True, "denoising_strength": 0.6, "scale": 2.0}}


@pytest.mark.parametrize("setting, first_pass, hires_pass, note", [
    ("second pass", "base", "switch", None),
    ("first pass", "switch", "refiner", "first pass"),
    ("both passes", "switch", "refiner", "both passes"),
])
def test_hires_fix_pass_setting(engine, unet_calls, setting, first_pass, hires_pass, note):
    """As in A1111: the refiner acts in the passes the setting names, and a first pass it took
    over leaves it loaded for the whole hires pass."""
    result = engine.generate(job(steps=6, extensions=HIRES), overrides={"hires_fix_refiner_pass": setting})
    widths = [width for width, _, _ in unet_calls]
    first, second = widths[:6], widths[6:]
    expected = {"base": lambda w: set(w) == {BASE_WIDTH}, "refiner": lambda w: set(w) == {REFINER_WIDTH},
                "switch": lambda w: w[0] == BASE_WIDTH and w[-1] == REFINER_WIDTH
                and w == sorted(w, key=lambda x: x != BASE_WIDTH)}
    assert expected[first_pass](first) and expected[hires_pass](second), widths
    params = infotext.parse(result.infotexts[0])[2]
    assert params["Refiner"].startswith("tiny-sdxl-refiner [")
    assert params.get("Hires refiner") == note
    assert result.images[0].size == (128, 128)


def test_any_checkpoint_of_the_same_latent_space_can_refine(engine, unet_calls):
    base_unet = id(engine.models.current.base.unet)
    result = engine.generate(job(refiner=RefinerChoice("tiny-sdxl-b", 0.5)))
    ids = [unet for _, unet, _ in unet_calls]
    switched = next(i for i, unet in enumerate(ids) if unet != base_unet)
    assert 0 < switched < 8 and all(unet != base_unet for unet in ids[switched:])
    assert infotext.parse(result.infotexts[0])[2]["Refiner"].startswith("tiny-sdxl-b [")


def test_the_job_model_is_set_aside_before_the_refiner_runs(engine, unet_calls, monkeypatch):
    """Base and refiner are never placed together: the job's model goes to RAM before the first
    refiner call and comes back after the last."""
    events = []
    set_aside, placed = LoadedModel.set_aside, LoadedModel.use_memory_mode

    def aside(self):
        events.append(("aside", self.info.model_name, len(unet_calls)))
        return set_aside(self)

    def place(self, mode):
        events.append(("placed", self.info.model_name, len(unet_calls)))
        return placed(self, mode)

    monkeypatch.setattr(LoadedModel, "set_aside", aside)
    monkeypatch.setattr(LoadedModel, "use_memory_mode", place)
    engine.generate(job())
    first_refiner = next(i for i, (width, _, _) in enumerate(unet_calls) if width == REFINER_WIDTH)
    base_aside = [calls for kind, name, calls in events if kind == "aside" and name == "tiny-sdxl"]
    base_back = [calls for kind, name, calls in events if kind == "placed" and name == "tiny-sdxl"]
    assert base_aside and base_aside[0] <= first_refiner
    assert base_back and base_back[-1] == len(unet_calls)


def test_the_same_checkpoint_as_refiner_is_no_switch(engine, unet_calls):
    result = engine.generate(job(refiner=RefinerChoice("tiny-sdxl", 0.5)))
    assert len({unet for _, unet, _ in unet_calls}) == 1
    assert "Refiner" not in infotext.parse(result.infotexts[0])[2]


# Refusals -----------------------------------------------------------------------------------------

def test_a_refiner_of_another_latent_space_is_refused_by_name(engine):
    with pytest.raises(RequestError, match=r"Refiner 'tiny-sd1.safetensors' is a SD 1.x/2.x model.*SDXL") as error:
        engine.submit(job(refiner=RefinerChoice("tiny-sd1", 0.5)))
    assert error.value.field == "refiner_checkpoint"


def test_an_unknown_refiner_or_switch_point_is_refused(engine):
    with pytest.raises(RequestError, match="Refiner: Checkpoint not found: 'nope'"):
        engine.submit(job(refiner=RefinerChoice("nope", 0.5)))
    with pytest.raises(RequestError, match="refiner_switch_at must be between 0.01 and 1"):
        engine.submit(job(refiner=RefinerChoice("tiny-sdxl-refiner", 1.5)))


# Infotext ------------------------------------------------------------------------------------------

def test_infotext_is_read_back_into_the_same_refiner(engine):
    result = engine.generate(job(steps=4))
    fields = infotext.request_fields(result.infotexts[0])
    assert fields["refiner_switch_at"] == 0.5
    assert engine.models.registry.find(fields["refiner_checkpoint"]).name == "tiny-sdxl-refiner.safetensors"

    from ui.api.convert import txt2img_request
    from ui.api.models import Txt2ImgBody

    again = txt2img_request(Txt2ImgBody(infotext=result.infotexts[0]))
    assert again.refiner.switch_at == 0.5
    assert engine.generate(again.replace(save_images=False, save_grid=False)).infotexts[0] == result.infotexts[0]


def test_img2img_hands_over_too(engine, unet_calls):
    from PIL import Image

    start = Image.new("RGB", (64, 64), (150, 60, 40))
    result = engine.generate(job().with_img2img(init_images=(start,), denoising_strength=0.75))
    widths = [width for width, _, _ in unet_calls]
    switched = widths.index(REFINER_WIDTH)
    assert len(widths) == 7 and 0 < switched and set(widths[switched:]) == {REFINER_WIDTH}  # t_enc + 1 steps
    assert infotext.parse(result.infotexts[0])[2]["Refiner"].startswith("tiny-sdxl-refiner [")


def test_a_lora_in_the_prompt_leaves_base_and_refiner_as_loaded(engine, files):
    from tests.support.lora_files import write_kohya_lora

    folder = engine.addons.loras.folder
    folder.mkdir(parents=True, exist_ok=True)
    write_kohya_lora(files.reference_pipeline("sdxl"), folder / "xl-style.safetensors")
    engine.addons.loras.refresh()
    unet = engine.models.current.base.unet
    before = {key: value.clone() for key, value in unet.state_dict().items()}
    plain = engine.generate(job(steps=4))
    styled = engine.generate(job(steps=4, prompt=PROMPT + " <lora:xl-style:0.8>"))
    assert "Lora hashes" in infotext.parse(styled.infotexts[0])[2]
    assert styled.images[0].tobytes() != plain.images[0].tobytes()
    assert all(torch.equal(before[key], value) for key, value in unet.state_dict().items())
    # The same job without the LoRA again: the same picture, so neither model kept any of it.
    assert engine.generate(job(steps=4)).images[0].tobytes() == plain.images[0].tobytes()
