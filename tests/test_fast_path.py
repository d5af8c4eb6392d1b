"""The fast path (engine/runs/fast_path.py, engine/memory/compiled.py): on a CUDA device it changes how fast
pictures come, never what they show. Here on the CPU, with the pieces forced on for the tiny
model: same images, undone cleanly, LoRA jobs unfused, compile plumbing and its warm-up message,
step noise and previews that do not wait for the GPU."""

import gc
import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0

from engine.memory import compiled as compiling
from engine.runs import fast_path
from engine.runs.fast_path import FastPath, JobTraits, disabled_from_env
from engine.jobs import Job
from engine.request import GenerationRequest
from engine.settings.store import OPTIONS
from engine.networks.vae import HALF_FIRST, decode
from tests.conftest import make_engine

BASE = GenerationRequest(prompt="a red cube", negative_prompt="blurry", steps=3, width=64, height=64,
                         sampler_name="Euler a", seed=99, save_images=False, save_grid=False)


@pytest.fixture(scope="module")
def fast_engine(tiny_models, tmp_path_factory):
    """An engine of its own (the pieces change its modules), with the pieces allowed on the CPU."""
    engine = make_engine(tiny_models, tmp_path_factory.mktemp("fast-path"))
    engine.fast_path = FastPath("cpu", any_device=True)
    engine.fast_path.disabled = set(fast_path.PIECES)
    yield engine
    engine.shutdown()


@pytest.fixture
def pieces(fast_engine):
    """Which pieces are on for a test; all off again after it."""
    def use(*names):
        fast_engine.fast_path.disabled = set(fast_path.PIECES) - set(names)
    yield use
    fast_engine.fast_path.disabled = set(fast_path.PIECES)
    fast_engine.fast_path.undo(fast_engine.models.current)
    fast_engine.settings.update({"torch_compile": False})


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def processor_types(unet) -> set:
    return {type(p) for p in unet.attn_processors.values()}


def test_settings_and_devices():
    options = {o.key: o for o in OPTIONS}
    assert options["torch_compile"].default is False
    assert options["torch_compile"].section == "Memory and speed"
    assert options["torch_compile_mode"].default in options["torch_compile_mode"].choices
    settings = {"torch_compile": True}
    assert FastPath("cpu").pieces(settings) == set(), "nothing on a CPU"
    assert FastPath("cuda").pieces(settings) == set(fast_path.PIECES)
    assert FastPath("cuda").pieces({"torch_compile": False}) == set(fast_path.PIECES) - {"compile"}
    assert disabled_from_env("-fused_qkv, -compile") == {"fused_qkv", "compile"}
    assert disabled_from_env("off") == set(fast_path.PIECES)
    with pytest.raises(ValueError):
        disabled_from_env("-warp_drive")


def test_lasting_pieces_keep_the_image_and_are_undone(fast_engine, pieces):
    before = pixels(fast_engine.generate(BASE))
    pipe = fast_engine.models.current.base
    pieces("channels_last", "fused_qkv", "half_vae")
    after = pixels(fast_engine.generate(BASE))
    assert np.abs(before - after).max() <= 1
    assert processor_types(pipe.unet) == {FusedAttnProcessor2_0}
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert getattr(pipe.vae, HALF_FIRST) is True
    fast_engine.fast_path.undo(fast_engine.models.current)
    assert processor_types(pipe.unet) == {AttnProcessor2_0}
    assert pipe.unet.conv_in.weight.is_contiguous()
    assert getattr(pipe.vae, HALF_FIRST) is False
    # The same numbers (the q/k/v weights stay views of the fused one, which lie elsewhere in
    # memory: the CPU's matrix kernels may then round the last bit differently).
    assert np.abs(pixels(fast_engine.generate(BASE)) - before).max() <= 1


def test_fused_projections_share_the_separate_weights(fast_engine, pieces):
    pieces("fused_qkv")
    fast_engine.generate(BASE)
    attention = next(m for name, m in fast_engine.models.current.base.unet.named_modules()
                     if name.endswith("attn1"))
    fused = attention.to_qkv.weight
    assert attention.to_q.weight.data_ptr() == fused.data_ptr()
    assert attention.to_v.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
    rows = attention.to_q.weight.shape[0]
    assert torch.equal(attention.to_k.weight, fused[rows:2 * rows])


def test_a_lora_job_runs_unfused_and_gets_the_lora(fast_engine, pieces):
    from tests.support.lora_files import write_kohya_lora

    pipe = fast_engine.models.current.base
    write_kohya_lora(pipe, fast_engine.addons.loras.folder / "sharp.safetensors")
    fast_engine.addons.loras.refresh()
    with_lora = BASE.replace(prompt="a red cube <lora:sharp:1>")
    plain = pixels(fast_engine.generate(with_lora))
    pieces("fused_qkv")
    assert JobTraits.of(with_lora, fast_engine.addons, fast_engine._policy(with_lora, False).memory).loras
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(processor_types(module)))
    try:
        fused = pixels(fast_engine.generate(with_lora))
    finally:
        hook.remove()
    assert seen and all(kinds == {AttnProcessor2_0} for kinds in seen)
    assert np.abs(plain - fused).max() <= 1
    assert processor_types(pipe.unet) == {FusedAttnProcessor2_0}, "fused again after the job"


def test_half_first_decodes_in_fp16_and_still_falls_back_on_nan(tiny_models):
    vae = tiny_models.reference_pipeline("sd1").vae.to(torch.float16)
    vae.register_to_config(force_upcast=True)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    setattr(vae, HALF_FIRST, True)
    assert decode(vae, latents).dtype == torch.float16, "tried in fp16, and it was fine"
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(3e4)  # fine in fp32, inf/NaN in fp16
    images = decode(vae, latents)
    assert images.dtype == torch.float32 and not torch.isnan(images).any()
    setattr(vae, HALF_FIRST, False)
    vae.to(torch.float16)
    assert decode(vae, latents).dtype == torch.float32, "without the fast path the config's upcast holds"


def test_a_pending_preview_is_made_by_whoever_looks():
    job = Job(lambda job: None)
    calls = []

    def pending():
        calls.append(1)
        return "image"

    job.set_preview(pending)
    assert job.preview_id == 1
    assert job.preview == "image" and job.preview == "image"
    assert calls == [1], "made once, then kept"


def test_prompts_are_encoded_once_per_job_not_per_batch(fast_engine):
    calls = []
    encoder = fast_engine.models.current.base.text_encoder
    hook = encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        fast_engine.generate(BASE.replace(n_iter=3))
    finally:
        hook.remove()
    assert len(calls) == 2, "the prompt and the negative prompt, once each"


class FakeCompiler:
    """Stands in for torch.compile: runs the function as is and notes what it saw."""

    def __init__(self):
        self.modes, self.calls = [], 0

    def __call__(self, function, mode, dynamic):
        self.modes.append((mode, dynamic))

        def run(*args, **kwargs):
            self.calls += 1
            return function(*args, **kwargs)
        return run


def test_the_first_call_per_shape_is_announced_as_a_warm_up():
    module = torch.nn.Conv2d(4, 4, 1)
    job = SimpleNamespace(textinfo="Step 1/3")
    seen = []

    def compiler(function, mode, dynamic):
        return lambda module, x: (seen.append(job.textinfo), function(module, x))[1]

    compiled = compiling.CompiledForward(module, "UNet", "default", compiler)
    with compiling.installed(module, compiled, job):
        module(torch.zeros(1, 4, 8, 8))
        module(torch.zeros(1, 4, 8, 8))
        module(torch.zeros(2, 4, 16, 8))
    assert seen[0].startswith("Compiling the UNet for 8x8 latents (batch 1)")
    assert seen[1] == "Step 1/3"
    assert seen[2].startswith("Compiling the UNet for 8x16 latents (batch 2)")
    assert job.textinfo == "Step 1/3", "the warm-up message goes when the compile is done"
    assert len(compiled.warmups) == 2
    assert "forward" not in module.__dict__


def test_a_compiled_forward_does_not_keep_an_unloaded_model_alive():
    module = torch.nn.Conv2d(4, 4, 1)
    alive = weakref.ref(module)
    compiled = compiling.CompiledForward(module, "UNet", "default", FakeCompiler())
    del module
    gc.collect()
    assert alive() is None and compiled.module() is None


def test_torch_compile_setting_compiles_plain_jobs_once_per_size(fast_engine, pieces):
    compiler = FakeCompiler()
    fast_engine.fast_path.compiler = compiler
    unet = fast_engine.models.current.base.unet
    before = pixels(fast_engine.generate(BASE))
    pieces("compile")
    fast_engine.settings.update({"torch_compile": True, "torch_compile_mode": "max-autotune-no-cudagraphs"})
    try:
        first = pixels(fast_engine.generate(BASE))
        fast_engine.generate(BASE.replace(seed=5))
        fast_engine.generate(BASE.replace(width=128))
        calls = compiler.calls
        fast_engine.generate(BASE.replace(extensions={"tiling": {"enabled": True}}))
    finally:
        fast_engine.fast_path.compiler = torch.compile
    assert np.array_equal(first, before)
    assert ("max-autotune-no-cudagraphs", False) in compiler.modes
    assert len(fast_engine.fast_path.warmups(unet)) == 2, "64x64 and 128x64: one warm-up each"
    assert compiler.calls == calls, "a job that patches the UNet (tiling) runs uncompiled"
    assert "forward" not in unet.__dict__, "the compiled forward is the job's only"


def test_dynamo_traces_the_tiny_unet_and_the_image_stays(fast_engine, pieces):
    """torch.compile itself (dynamo, with the eager backend: Inductor would need minutes here)."""
    before = pixels(fast_engine.generate(BASE.replace(steps=2)))
    torch._dynamo.reset()
    fast_engine.fast_path.compiler = lambda fn, mode, dynamic: torch.compile(fn, backend="eager", dynamic=dynamic)
    pieces("compile")
    fast_engine.settings.update({"torch_compile": True, "torch_compile_mode": "default"})
    try:
        after = pixels(fast_engine.generate(BASE.replace(steps=2)))
    finally:
        fast_engine.fast_path.compiler = torch.compile
        torch._dynamo.reset()
    assert np.abs(before - after).max() <= 1


# What only a CUDA machine can check (skipped elsewhere).
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda_only
def test_on_cuda_previews_are_the_numbers_a_plain_copy_gives():
    from engine.runs.preview import PendingPreview, latents_to_rgb

    cuda = torch.device("cuda")
    latents = torch.randn(1, 4, 64, 64, device=cuda)
    assert np.array_equal(np.asarray(PendingPreview(latents, "sd1")()), np.asarray(latents_to_rgb(latents, "sd1")[0]))


@cuda_only
def test_on_cuda_the_fast_path_keeps_the_tiny_models_image(tiny_models, tmp_path):
    from engine.addons import AddOns
    from engine.devices import DeviceConfig
    from engine.engine import Engine
    from engine.files import HashCache
    from engine.models.registry import ModelRegistry
    from engine.output.writer import OutputWriter
    from engine.models.pipelines import ModelManager
    from engine.settings.store import Settings

    hashes = HashCache(tmp_path / "cache.json")
    models = ModelManager(ModelRegistry([tiny_models.models_dir], hashes), DeviceConfig.choose(),
                          config_root=tiny_models.config_root)
    engine = Engine(models, OutputWriter(tmp_path / "outputs"), Settings(tmp_path / "config.json"),
                    AddOns.in_data_dir(tmp_path, hashes))
    try:
        engine.load_checkpoint("tiny-sd1").outcome()
        engine.fast_path.disabled = set(fast_path.PIECES)
        before = pixels(engine.generate(BASE))
        engine.fast_path.disabled = set()
        after = pixels(engine.generate(BASE))
        assert np.abs(before - after).mean() < 1 and np.abs(before - after).max() <= 8  # fp16 rounding
    finally:
        engine.shutdown()


@pytest.mark.parametrize("mode", ["medvram", "lowvram"])
def test_an_offload_mode_turns_the_fast_path_off_and_none_turns_it_back_on(fast_engine, pieces, mode):
    """Offload hooks must wrap the plain modules: the pieces come off before the weights move,
    and the picture is the one the plain model makes."""
    model = fast_engine.models.current
    before = pixels(fast_engine.generate(BASE))
    pieces("channels_last", "fused_qkv", "half_vae")
    model.placement.offload_on_cpu = True  # RAM stands in for VRAM, so the hooks really run
    try:
        fast_engine.settings.update({"memory_mode": mode})
        offloaded = pixels(fast_engine.generate(BASE))
        assert model.placement.mode == mode
        assert processor_types(model.base.unet) == {AttnProcessor2_0}
        assert model.base.unet.conv_in.weight.is_contiguous()
        assert np.abs(offloaded - before).max() <= 1
        fast_engine.settings.update({"memory_mode": "none"})
        again = pixels(fast_engine.generate(BASE))
        assert model.placement.mode == "none"
        assert processor_types(model.base.unet) == {FusedAttnProcessor2_0}
        assert np.abs(again - before).max() <= 1
    finally:
        fast_engine.settings.update({"memory_mode": "none"})
        model.placement.offload_on_cpu = False
