"""Running out of memory (issue 8): whatever the stage, the job ends with a message that says what
to change, everything the job patched is put back, and the next job makes the image a clean run
makes. Faults are injected on the tiny CPU models through a FaultPlan handed to the engine's
add-ons, as app.py hands it the one SD_STUDIO_FAULTS describes."""

import hashlib
import weakref

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from engine.addons import AddOns
from engine.engine import Engine
from engine.memory import memory_guard
from engine.memory.memory_guard import FaultPlan
from engine.files import HashCache
from engine.networks import vae as vae_module
from engine.prompts.conditioning import PromptEncoder
from engine.controlnet.units import ControlUnit
from engine.errors import OutOfMemoryUserError
from engine.postprocess.extras import ExtrasRequest
from engine.jobs import Job
from engine.request import GenerationRequest
from tests.support.addon_engines import engine_with_addons
from tests.support.face_image import picture_with_a_face
from tests.support.server import AppServer

BASE = GenerationRequest(prompt="a red cube", steps=3, width=64, height=64, sampler_name="Euler",
                         seed=77, save_images=False, save_grid=False)
# Every per-job patch at once: a LoRA, a ControlNet unit, tiling (circular padding), attention
# slicing (overrides below), hires fix (a second pass) and restore faces.
HIRES = {"enabled": True, "upscaler": "Lanczos", "scale": 1.5, "steps": 2, "denoising_strength": 0.5}
FULL = BASE.replace(
    prompt="a red cube <lora:oom-lora:1>",
    extensions={"tiling": {"enabled": True}, "hires_fix": HIRES, "restore_faces": {"enabled": True}})
OVERRIDES = {"attention_slicing": True}
GENERAL_ADVICE = ("Out of GPU memory", "To make it fit:", "`sd_vae_tiling`", "`attention_slicing`",
                  "Settings > Memory and speed")


def control_drawing() -> Image.Image:
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).rectangle((12, 12, 50, 50), outline="black", width=4)
    return image


@pytest.fixture(scope="module")
def faults() -> FaultPlan:
    """The plan of memory faults the engines below fire."""
    return FaultPlan()


@pytest.fixture(autouse=True)
def no_faults_left(faults):
    yield
    faults.clear()


@pytest.fixture(scope="module")
def oom_engine(engine, tmp_path_factory, faults):
    """The session engine's model and queue, with a LoRA and a tiny ControlNet of its own."""
    return engine_with_addons(engine, tmp_path_factory.mktemp("oom"), lora="oom-lora", controlnet="tiny-cn",
                              faults=faults)


@pytest.fixture(scope="module")
def faulty(engine, tmp_path_factory, faults):
    """The session engine's model, settings and queue, firing `faults`."""
    data = tmp_path_factory.mktemp("faulty")
    return Engine(engine.models, engine.writer, engine.settings,
                  AddOns.in_data_dir(data, HashCache(data / "cache.json"), faults=faults), queue=engine.queue)


def full_request():
    unit = ControlUnit(enabled=True, module="canny", model="tiny-cn", image=control_drawing())
    return FULL.replace(controlnet_units=(unit,))


@pytest.fixture(scope="module")
def clean_full(oom_engine) -> bytes:
    """The full job's image when nothing runs out."""
    return oom_engine.generate(full_request(), overrides=OVERRIDES).images[0].tobytes()


def model_state(engine) -> dict:
    """What a job may patch and must put back."""
    pipe = engine.models.require().base
    unet, vae = pipe.unet, pipe.vae
    convs = [m for m in (*unet.modules(), *vae.modules()) if isinstance(m, torch.nn.Conv2d)]
    return {
        "attention processors": {name: type(p) for name, p in unet.attn_processors.items()},
        "unet forward": unet.__dict__.get("forward"),
        "weights": [hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in part.parameters()))
                    .hexdigest() for part in (unet, pipe.text_encoder)],
        "unet parameters": len(list(unet.parameters())),
        "padding": [conv.padding_mode for conv in convs],
        "vae": (vae.use_tiling, vae.use_slicing, vae.tile_latent_min_size, vae.tile_sample_min_size),
        "extension errors": [entry.error for entry in engine.addons.extensions.entries],
    }


def failure(job: Job) -> OutOfMemoryUserError:
    with pytest.raises(OutOfMemoryUserError) as caught:
        job.outcome()
    error = caught.value
    assert error.status == 507
    for words in GENERAL_ADVICE:
        assert words in error.message
    return error


@pytest.mark.parametrize("stage, times, words", [
    ("text_encoding", 1, ["while encoding the prompt", "lower the batch size"]),
    ("denoise", 1, ["while denoising.", "make the picture smaller"]),
    ("vae_decode", 2, ["while decoding the image (VAE), even in tiles", "make the picture smaller"]),
    ("vae_encode", 1, ["while encoding the init image (VAE) (in the hires fix pass)", "fewer hires steps"]),
    ("hires_fix", 1, ["while running the hires fix pass", "fewer hires steps or a lower hires upscale"]),
    ("face_restore", 1, ["while restoring faces", "turn face restoration off"]),
])
def test_running_out_in_a_stage_ends_the_job_with_advice_and_undoes_its_patches(
        oom_engine, clean_full, faults, stage, times, words):
    before = model_state(oom_engine)
    faults.inject(stage, times)
    error = failure(oom_engine.submit(full_request(), overrides=OVERRIDES))
    for phrase in words:
        assert phrase in error.message
    assert model_state(oom_engine) == before
    assert not faults.pending(), "every injected fault fired"
    again = oom_engine.generate(full_request(), overrides=OVERRIDES)
    assert again.images[0].tobytes() == clean_full
    assert not again.warnings


def test_a_decode_that_runs_out_is_done_again_in_tiles_and_says_so(oom_engine, clean_full, faults):
    before = model_state(oom_engine)
    faults.inject("vae_decode", 1)
    result = oom_engine.generate(full_request(), overrides=OVERRIDES)
    # 64x64 fits in one of the tiny VAE's tiles, so the retry decodes it whole: the same image.
    assert result.images[0].tobytes() == clean_full
    assert result.warnings == [vae_module.TILED_NOTE]
    assert "sd_vae_tiling" in result.warnings[0]
    assert model_state(oom_engine) == before


def count_tiled_decodes(monkeypatch, vae) -> list:
    calls = []
    original = type(vae).tiled_decode
    monkeypatch.setattr(type(vae), "tiled_decode",
                        lambda self, *args, **kwargs: calls.append(1) or original(self, *args, **kwargs))
    return calls


def test_the_retry_decodes_a_big_image_in_tiles_close_to_the_whole(faulty, faults, monkeypatch):
    engine = faulty
    vae = engine.models.require().base.vae
    # As in test_vae_tiling_gives_a_close_image_and_is_undone: 128-pixel tiles on 192 pixels.
    monkeypatch.setattr(vae, "tile_sample_min_size", 128)
    monkeypatch.setattr(vae, "tile_latent_min_size", 16)
    request = BASE.replace(width=192, height=192)
    plain = engine.generate(request)
    calls = count_tiled_decodes(monkeypatch, vae)
    faults.inject("vae_decode", 1)
    retried = engine.generate(request)
    assert calls, "the retry did not decode in tiles"
    difference = np.abs(np.asarray(retried.images[0], dtype=np.int16) - np.asarray(plain.images[0], dtype=np.int16))
    assert difference.mean() < 6
    assert (vae.use_tiling, vae.use_slicing, vae.tile_latent_min_size) == (False, False, 16)


def test_latents_that_fit_one_tile_are_retried_in_smaller_tiles(faulty, faults, monkeypatch):
    engine = faulty
    vae = engine.models.require().base.vae
    own = (vae.tile_latent_min_size, vae.tile_sample_min_size)
    monkeypatch.setattr(vae_module, "MIN_RETRY_TILE", 4)  # the tiny VAE's 8-latent tiles, halved
    calls = count_tiled_decodes(monkeypatch, vae)
    faults.inject("vae_decode", 1)
    assert engine.generate(BASE).images[0].size == (64, 64)
    assert calls
    assert (vae.tile_latent_min_size, vae.tile_sample_min_size) == own


def test_extras_upscale_runs_out_then_works(faulty, faults):
    engine = faulty
    picture = Image.fromarray(np.random.default_rng(5).integers(0, 256, (16, 32, 3), dtype=np.uint8))
    request = ExtrasRequest(picture, upscaler="Lanczos", scale=2)
    clean = engine.extras(request, save=False).outcome().image.tobytes()
    faults.inject("upscale")
    error = failure(engine.extras(request, save=False))
    assert "while upscaling" in error.message and "upscale by a smaller factor" in error.message
    assert engine.extras(request, save=False).outcome().image.tobytes() == clean


def test_extras_face_restoration_runs_out_then_works(faulty, faults):
    engine = faulty
    request = ExtrasRequest(picture_with_a_face(), upscaler="None", scale=1, face_detailer_visibility=1.0)
    faults.inject("face_restore")
    error = failure(engine.extras(request, save=False))
    assert "while restoring faces" in error.message
    first = engine.extras(request, save=False).outcome().image.tobytes()
    assert engine.extras(request, save=False).outcome().image.tobytes() == first


def too_much_for_torch():
    torch.empty(2**50, dtype=torch.uint8)  # a PiB: torch's CPU allocator says RuntimeError


def too_much_for_python():
    raise MemoryError()


@pytest.mark.parametrize("run_out", [too_much_for_torch, too_much_for_python])
def test_system_memory_running_out_is_said_and_the_jobs_tensors_are_let_go(engine, monkeypatch, run_out):
    clean = engine.generate(BASE).images[0].tobytes()
    held = []

    def greedy(self, *args, **kwargs):
        taken = torch.zeros(4096)
        held.append(weakref.ref(taken))
        run_out()

    with monkeypatch.context() as patched:
        patched.setattr(PromptEncoder, "encode_schedules", greedy)
        job = engine.submit(BASE)
        job.wait()
    assert isinstance(job.error, OutOfMemoryUserError)
    assert job.error.message.startswith("Out of system memory while encoding the prompt")
    assert held and held[0]() is None, "the failed job's frames still hold its tensors"
    assert engine.generate(BASE).images[0].tobytes() == clean


def test_out_of_memory_outside_any_stage_still_becomes_the_message(engine, monkeypatch):
    freed = []
    monkeypatch.setattr(memory_guard, "free_memory", lambda: freed.append(1))

    def work(job):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; ...)")

    job = engine.queue.submit(Job(work, kind="load"))
    job.wait()
    assert isinstance(job.error, OutOfMemoryUserError) and freed
    assert job.error.message.startswith("Out of GPU memory (it tried to allocate 20.00 MiB). To make it fit:")
    assert engine.generate(BASE).images  # the lane goes on


def test_faults_fire_only_from_the_plan_a_stage_is_given():
    with memory_guard.stage("denoise"):  # no plan: nothing injected
        pass
    plan = FaultPlan.parse("denoise:2, vae_decode")  # SD_STUDIO_FAULTS' syntax, as app.py reads it
    assert plan.pending() == {"denoise": 2, "vae_decode": 1}
    with pytest.raises(ValueError, match="unknown stage 'denoize'"):
        FaultPlan.parse("denoize:1")
    assert not FaultPlan.parse("") and not FaultPlan.parse(None) and FaultPlan.parse(None).pending() == {}
    with memory_guard.stage("denoise"), memory_guard.stage("denoise", faults=FaultPlan()):
        pass  # another plan (another engine's) and no plan leave this one alone
    assert plan.pending() == {"denoise": 2, "vae_decode": 1}
    with pytest.raises(OutOfMemoryUserError, match="^Out of GPU memory while denoising"), \
            memory_guard.stage("denoise", faults=plan):
        pass
    with pytest.raises(OutOfMemoryUserError, match="while decoding the image"), \
            memory_guard.stage("vae_decode_tiled", fault="vae_decode", faults=plan):
        pass
    assert plan.pending() == {"denoise": 1}
    plan.clear()
    assert not plan


def test_the_message_names_the_innermost_stage_first_and_gives_each_advice_once():
    text = memory_guard.describe("GPU", ("denoise", "hires_fix"), "1.50 GiB")
    assert text.startswith("Out of GPU memory while denoising (in the hires fix pass) (it tried to allocate 1.50 GiB).")
    assert text.count("make the picture smaller") == 1 and "fewer hires steps" in text


def test_only_out_of_memory_errors_are_turned_into_the_message():
    assert memory_guard.is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not memory_guard.is_out_of_memory(RuntimeError("shapes do not match"))
    with pytest.raises(RuntimeError, match="shapes do not match"), memory_guard.stage("denoise"):
        raise RuntimeError("shapes do not match")
    with pytest.raises(OutOfMemoryUserError, match="^Out of GPU memory while upscaling"), \
            memory_guard.stage("upscale"):
        raise RuntimeError("CUDA error: out of memory")


def test_the_api_answers_507_with_the_message_and_the_next_request_works(tmp_path):
    small = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 5}
    with AppServer(tmp_path, "--demo", "--api", env={memory_guard.FAULTS_ENV: "denoise:1"}) as server, \
            httpx.Client(base_url=server.url + "/sdapi/v1", timeout=120) as api:
        failed = api.post("/txt2img", json=small)
        assert failed.status_code == 507, failed.text
        body = failed.json()
        assert body["error"] == "OutOfMemoryUserError"
        assert body["detail"].startswith("Out of GPU memory while denoising")
        assert "make the picture smaller" in body["detail"] and "attention_slicing" in body["detail"]
        worked = api.post("/txt2img", json=small)
        assert worked.status_code == 200 and len(worked.json()["images"]) == 1
