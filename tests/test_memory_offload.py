"""The memory modes that move weights (medvram, lowvram) and their flags and setting, on the tiny
seeded model.

On the CPU the offload modes act as none (there is no VRAM to save), so these tests let RAM
stand in for VRAM (`Placement.offload_on_cpu`): the same diffusers and accelerate hooks then run
as on a GPU, and every mode must make the very picture none makes: txt2img, img2img (a pipeline
made with from_pipe), with ControlNet, with a LoRA, with hires fix, switching freely between modes.
"""

import numpy as np
import pytest
import torch
from accelerate.hooks import CpuOffload
from diffusers import AutoencoderKL
from diffusers.hooks.group_offloading import _is_group_offload_enabled
from PIL import Image, ImageDraw

from engine.settings import flags
from engine.controlnet import apply
from engine.controlnet.units import ControlUnit
from engine.errors import RequestError
from engine.models.loading import CONFIG_ROOT
from engine.memory.memory_modes import LOWVRAM, MEDVRAM, NONE, auto_mode, mode_for_model
from engine.memory.offload import Placement, compute_device
from engine.request import GenerationRequest
from engine.models.tiny_models import build_demo_pipeline
from tests.support.addon_engines import engine_with_addons
from tests.support.requests import with_fields

BASE = GenerationRequest(prompt="a red cube", negative_prompt="blurry", steps=3, width=64, height=64,
                         sampler_name="Euler a", seed=4242, save_images=False, save_grid=False)
OFFLOAD_MODES = (MEDVRAM, LOWVRAM)


def drawing() -> Image.Image:
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).rectangle((12, 12, 50, 50), outline="black", width=4)
    return image


@pytest.fixture(scope="module")
def mem_engine(engine, tmp_path_factory):
    """The session engine's model, settings and queue, with a LoRA and a tiny ControlNet."""
    return engine_with_addons(engine, tmp_path_factory.mktemp("memory-modes"), lora="mem-lora",
                              controlnet="mem-cn", controlnet_seed=3)


@pytest.fixture
def offloading(mem_engine):
    """Offload modes really act on this CPU; everything put back to none after the test."""
    model = mem_engine.models.require()
    before = mem_engine.settings["memory_mode"]
    model.placement.offload_on_cpu = True
    yield mem_engine
    mem_engine.settings.update({"memory_mode": before})
    model.use_memory_mode(NONE)
    model.placement.offload_on_cpu = False
    assert_no_hooks(model)


def image_in(engine, mode: str, request: GenerationRequest = BASE) -> np.ndarray:
    engine.settings.update({"memory_mode": mode})
    return np.asarray(engine.generate(request).images[0], dtype=np.int16)


def hooks_on(module) -> str:
    if isinstance(getattr(module, "_hf_hook", None), CpuOffload):
        return MEDVRAM
    return LOWVRAM if _is_group_offload_enabled(module) else NONE


def assert_no_hooks(model) -> None:
    for pipe in model.pipelines():
        assert not getattr(pipe, "_all_hooks", None)
        for name, module in pipe.components.items():
            if isinstance(module, torch.nn.Module):
                assert hooks_on(module) == NONE, name
                assert not any(hasattr(m, "_hf_hook") for m in module.modules()), name
                assert all(p.device == model.device for p in module.parameters()), name
    assert "forward" not in model.base.unet.__dict__
    assert not model.base.unet._forward_pre_hooks


@pytest.mark.parametrize("mode", OFFLOAD_MODES)
def test_an_offload_mode_makes_the_same_pictures_as_none(offloading, mode):
    img2img = with_fields(BASE, mode="img2img", init_images=(drawing(),), denoising_strength=0.6)
    clip_skip = BASE.replace(clip_skip=2)  # a text encoder layer called outside its forward
    plain, plain_img2img = image_in(offloading, NONE), image_in(offloading, NONE, img2img)
    plain_skip = image_in(offloading, NONE, clip_skip)
    assert np.array_equal(image_in(offloading, mode), plain)
    assert np.array_equal(image_in(offloading, mode, clip_skip), plain_skip)
    model = offloading.models.require()
    assert model.placement.mode == mode
    assert {hooks_on(model.base.unet), hooks_on(model.base.text_encoder), hooks_on(model.base.vae)} == {mode}
    # img2img runs a pipeline made with from_pipe: it shares the hooked modules.
    assert np.array_equal(image_in(offloading, mode, img2img), plain_img2img)
    assert model.pipeline_for("img2img").unet is model.base.unet


def test_switching_modes_takes_effect_on_the_next_job_and_none_takes_every_hook_off(offloading):
    plain = image_in(offloading, NONE)
    model = offloading.models.require()
    for mode in (MEDVRAM, LOWVRAM, MEDVRAM, NONE, LOWVRAM, NONE):
        assert np.array_equal(image_in(offloading, mode), plain), mode
        assert model.placement.mode == mode
    assert_no_hooks(model)


@pytest.mark.parametrize("mode", OFFLOAD_MODES)
def test_controlnet_and_hires_fix_in_an_offload_mode(offloading, mode, monkeypatch):
    # Two batches and a hires pass: model offload renews its hooks at the end of each pipeline
    # call, and the ControlNet must still act in every later call of the job.
    unit = ControlUnit(enabled=True, module="canny", model="mem-cn", image=drawing())
    hires = {"enabled": True, "scale": 1.5, "upscaler": "Lanczos", "steps": 2, "denoising_strength": 0.5}
    request = BASE.replace(controlnet_units=(unit,), n_iter=2, extensions={"hires_fix": hires})
    plain = offloading.generate(request)
    uncontrolled = offloading.generate(request.replace(controlnet_units=()))
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(uncontrolled.images[0]))
    offloading.settings.update({"memory_mode": mode})
    seen = []
    original = apply._residuals
    monkeypatch.setattr(apply, "_residuals", lambda item, *args: seen.append(hooks_on(item.net)) or original(item, *args))
    offloaded = offloading.generate(request)
    for a, b in zip(plain.images, offloaded.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # The unit acted in both batches and the hires pass, its ControlNet offloaded like the UNet.
    assert len(seen) > 2 * BASE.steps and set(seen) == {mode}
    net = offloading.addons.controlnets.load("mem-cn")
    assert hooks_on(net) == NONE and net.device == torch.device("cpu")
    assert not offloading.models.require().base.unet._forward_pre_hooks


@pytest.mark.parametrize("mode", OFFLOAD_MODES)
def test_a_lora_in_an_offload_mode(offloading, mode):
    """Merged into the weights the offload hooks move (or keep in RAM between layers), the LoRA
    makes the picture it makes on a plain model, and its weights come back exactly after."""
    pipe = offloading.models.require().base
    originals = {name: p.detach().clone() for part in (pipe.unet, pipe.text_encoder)
                 for name, p in part.named_parameters(prefix=type(part).__name__)}
    request = BASE.replace(prompt="a red cube <lora:mem-lora:1>", n_iter=2)
    plain = offloading.generate(request)
    offloading.settings.update({"memory_mode": mode})
    offloaded = offloading.generate(request)
    for a, b in zip(plain.images, offloaded.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(offloaded.images[0], dtype=np.int16), image_in(offloading, NONE))
    after = {name: p.detach() for part in (pipe.unet, pipe.text_encoder)
             for name, p in part.named_parameters(prefix=type(part).__name__)}
    assert all(torch.equal(originals[name], after[name].cpu()) for name in originals), "LoRA left in"
    assert np.array_equal(image_in(offloading, mode), image_in(offloading, NONE))  # LoRA gone


def test_a_new_vae_is_placed_and_the_old_one_let_go():
    pipe = build_demo_pipeline(CONFIG_ROOT / "sd1" / "tokenizer")
    placement = Placement("cpu", offload_on_cpu=True)
    assert placement.ensure(MEDVRAM, [pipe]) and not placement.ensure(MEDVRAM, [pipe])
    old = pipe.vae
    new = AutoencoderKL.from_config(old.config)
    new.load_state_dict(old.state_dict())
    pipe.vae = new
    assert placement.ensure(MEDVRAM, [pipe])
    assert hooks_on(new) == MEDVRAM and hooks_on(old) == NONE
    assert compute_device(new).type == "cpu"
    assert placement.ensure(LOWVRAM, [pipe]) and hooks_on(new) == LOWVRAM and hooks_on(pipe.unet) == LOWVRAM
    assert placement.ensure(NONE, [pipe]) and hooks_on(new) == NONE and hooks_on(pipe.unet) == NONE


def test_on_the_cpu_the_offload_modes_change_nothing():
    pipe = build_demo_pipeline(CONFIG_ROOT / "sd1" / "tokenizer")
    placement = Placement("cpu")
    placement.ensure(LOWVRAM, [pipe])
    assert placement.mode == NONE and hooks_on(pipe.unet) == NONE
    assert placement.resting_device == torch.device("cpu")


def test_medvram_sdxl_is_medvram_for_the_large_families_only():
    assert mode_for_model("medvram-sdxl", large=True) == MEDVRAM
    assert mode_for_model("medvram-sdxl", large=False) == NONE
    assert mode_for_model(LOWVRAM, large=False) == LOWVRAM


GB = 10 ** 9


@pytest.mark.parametrize("total, largest, t5, vram, expected", [
    (2.1 * GB, 1.7 * GB, 0, 8 * 1024 ** 3, "none"),                # SD 1.5 fp16 on an 8 GB card
    (7.0 * GB, 5.1 * GB, 0, 8 * 1024 ** 3, "medvram"),             # SDXL fp16 on 8 GB: the UNet alone fits
    (7.0 * GB, 5.1 * GB, 0, 12 * 1024 ** 3, "none"),
    (34.0 * GB, 23.8 * GB, 9.5 * GB, 24 * 1024 ** 3, "lowvram"),   # FLUX-dev bf16 + T5 fp16 on 24 GB
    (34.0 * GB, 23.8 * GB, 9.5 * GB, 32 * 1024 ** 3, "t5-cpu"),    # ... on 32 GB: all but T5 fits
    (17.3 * GB, 11.9 * GB, 4.9 * GB, 24 * 1024 ** 3, "none"),      # FLUX-dev fp8 + T5 fp8 on 24 GB
    (21.8 * GB, 11.9 * GB, 9.5 * GB, 16 * 1024 ** 3, "t5-cpu"),    # FLUX-dev fp8 + T5 fp16 on 16 GB
    (21.8 * GB, 11.9 * GB, 0, 16 * 1024 ** 3, "medvram"),          # the same sizes without a T5
    (17.3 * GB, 11.9 * GB, 4.9 * GB, 12 * 1024 ** 3, "lowvram"),
    (12.0 * GB, 6.8 * GB, 4.9 * GB, 12 * 1024 ** 3, "t5-cpu"),     # FLUX Q4_K GGUF + T5 fp8 on 12 GB
])
def test_auto_picks_by_the_models_size_and_the_cards(total, largest, t5, vram, expected):
    assert auto_mode(int(total), int(largest), vram, int(t5)) == expected
    assert mode_for_model("auto", large=True, sizes=(int(total), int(largest), int(t5)), vram=vram) == expected


def test_auto_on_the_cpu_is_none(mem_engine):
    model = mem_engine.models.require()
    assert model.mode_for("auto") == NONE   # no card: nothing to save
    total, largest, t5 = model.weight_sizes()
    assert total >= largest > 0 and t5 == 0
    assert model.mode_for("t5-cpu") == NONE   # an SD model has no T5 to keep on the CPU


@pytest.mark.parametrize("argv, mode", [
    ([], None), (["--medvram"], "medvram"), (["--lowvram"], "lowvram"), (["--medvram-sdxl"], "medvram-sdxl"),
    (["--medvram", "--lowvram"], "lowvram"), (["--medvram-sdxl", "--medvram"], "medvram"),
])
def test_the_flags_name_a_memory_mode(argv, mode):
    assert flags.memory_mode(flags.parse(argv, environ={})) == mode


def test_the_flag_sets_the_setting_at_start(tmp_path):
    import app

    ctx = app.build(flags.parse(["--lowvram", "--data-dir", str(tmp_path)], environ={}))
    try:
        assert ctx.settings["memory_mode"] == "lowvram"
        assert ctx.engine.models.memory_mode() == "lowvram"
    finally:
        ctx.engine.shutdown()


def test_the_setting_takes_the_modes_and_nothing_else(mem_engine):
    settings = mem_engine.settings
    assert settings.options["memory_mode"].section == "Memory and speed"
    assert settings.options["memory_mode"].choices == ("none", "medvram", "medvram-sdxl", "lowvram", "auto",
                                                      "t5-cpu")
    with pytest.raises(RequestError, match="memory_mode must be one of"):
        settings.validate({"memory_mode": "highvram"})


def test_work_outside_a_job_leaves_the_mode_as_it_is(offloading):
    from engine.runs.generation import GenerationRun
    from engine.job_results import OutputPolicy
    from engine.jobs import Job

    offloading.settings.update({"memory_mode": LOWVRAM})
    offloading.generate(BASE)
    model = offloading.models.require()
    run = GenerationRun(Job(lambda job: None), BASE, model, OutputPolicy(save_images=False), offloading.addons)
    run.run(offloading.writer)  # as the extras tab's face detailer does: no memory mode of its own
    assert model.placement.mode == LOWVRAM


def test_a_checkpoint_loads_into_ram_then_into_its_mode(tiny_models, tmp_path, monkeypatch):
    import functools

    from engine.models import pipelines
    from engine.devices import DeviceConfig
    from engine.files import HashCache
    from engine.models.registry import ModelRegistry

    loaded_on = []
    load = pipelines.load_checkpoint
    monkeypatch.setattr(pipelines, "load_checkpoint",
                        lambda info, device, *args: loaded_on.append(device.device) or load(info, device, *args))
    monkeypatch.setattr(pipelines, "Placement", functools.partial(Placement, offload_on_cpu=True))
    mode = [MEDVRAM]
    manager = pipelines.ModelManager(ModelRegistry([tiny_models.models_dir], HashCache(tmp_path / "cache.json")),
                                     DeviceConfig.choose(use_cpu=True), config_root=tiny_models.config_root,
                                     memory_mode=lambda: mode[0])
    model = manager.load("tiny-sd1")
    assert loaded_on == [torch.device("cpu")] and model.placement.mode == MEDVRAM
    assert hooks_on(model.base.unet) == MEDVRAM
    mode[0] = "medvram-sdxl"
    model = manager.load("tiny-sdxl")
    assert model.placement.mode == MEDVRAM and hooks_on(model.base.unet) == MEDVRAM
    model = manager.load("tiny-sd1")  # not SDXL: none, after loading into RAM like any other
    assert loaded_on[-1] == torch.device("cpu")
    assert model.placement.mode == NONE and hooks_on(model.base.unet) == NONE


@pytest.mark.parametrize("mode", OFFLOAD_MODES)
def test_a_model_set_aside_for_the_checkpoint_cache_comes_back_in_the_current_mode(offloading, mode):
    """What the checkpoint cache does on a GPU: set the model aside in RAM with its hooks off,
    then place it again, maybe in another mode; the picture stays the same."""
    expected = image_in(offloading, NONE)
    model = offloading.models.require()
    model.use_memory_mode(mode)
    model.set_aside()
    assert_no_hooks(model)
    other = LOWVRAM if mode == MEDVRAM else MEDVRAM
    offloading.settings.update({"memory_mode": other})
    assert model.use_memory_mode(other)
    assert hooks_on(model.base.unet) == other
    assert np.array_equal(image_in(offloading, other), expected)
