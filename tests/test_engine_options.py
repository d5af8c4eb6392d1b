"""Engine settings that change how a job runs, not what it asks for: the noise source, the live
preview method, and the memory modes (VAE tiling, attention slicing), on the tiny seeded model."""

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import SlicedAttnProcessor

from engine.output import infotext
from engine.errors import RequestError
from engine.memory.memory_modes import MemoryModes, applied
from engine.request import GenerationRequest
from engine.sampling.noise import ImageNoise, draw_method

BASE = GenerationRequest(prompt="a red cube", negative_prompt="blurry", steps=3, width=64, height=64,
                         sampler_name="Euler a", seed=4242, save_images=False, save_grid=False)
KEYS = ("randn_source", "show_progress_type", "show_progress_every_n_steps", "sd_vae_tiling",
        "attention_slicing")


@pytest.fixture
def settings(engine):
    """The shared engine's settings, put back as they were after the test."""
    before = {key: engine.settings[key] for key in KEYS}
    yield engine.settings
    engine.settings.update(before)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def processor_types(pipe) -> dict:
    return {name: type(p) for name, p in pipe.unet.attn_processors.items()}


# Noise source.
def test_noise_sources_on_a_cpu_machine():
    """GPU (A1111's default) is the CUDA generator where there is one and its NV reproduction
    elsewhere; CPU is torch's CPU generator."""
    assert draw_method("GPU", "cpu") == "nv" and draw_method("GPU", torch.device("cuda")) == "cuda"
    assert draw_method("CPU", torch.device("cuda")) == "cpu" and draw_method("NV", "cuda") == "nv"
    gpu_here = ImageNoise((4, 8, 8), [7, 8], source="GPU").next()
    assert torch.equal(gpu_here, ImageNoise((4, 8, 8), [7, 8], source="NV").next())
    cpu = ImageNoise((4, 8, 8), [7, 8], source="CPU").next()
    assert torch.equal(cpu[1], torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(8)))
    assert not torch.equal(cpu, gpu_here)
    with pytest.raises(ValueError):
        draw_method("TPU", "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_noise_on_a_gpu_is_the_cuda_generators_and_nv_reproduces_it():
    cuda = ImageNoise((4, 8, 8), [7], source="GPU", device="cuda")
    first, step = cuda.next(), cuda.next()
    assert first.device.type == "cuda"
    nv = ImageNoise((4, 8, 8), [7], source="NV")
    assert torch.allclose(first.cpu(), nv.next(), atol=1e-5) and torch.allclose(step.cpu(), nv.next(), atol=1e-5)


def test_randn_source_default_is_a1111s_and_the_infotext_names_only_the_others(engine, settings):
    assert settings["randn_source"] == "GPU"
    assert engine.complete(BASE).randn_source == "GPU"  # fixed into the request when queued
    default = engine.generate(BASE)
    assert "RNG" not in infotext.parse(default.infotexts[0])[2]  # as A1111: its infotexts carry none
    assert infotext.request_fields(default.infotexts[0])["randn_source"] == "GPU"
    nv = engine.generate(BASE.replace(randn_source="NV"))
    assert nv.images[0].tobytes() == default.images[0].tobytes()  # no CUDA here: GPU noise is NV's
    settings.update({"randn_source": "CPU"})
    cpu = engine.generate(BASE)
    assert infotext.parse(cpu.infotexts[0])[2]["RNG"] == "CPU"
    assert np.abs(pixels(cpu.images[0]) - pixels(default.images[0])).max() > 5
    # A request's own choice wins over the setting, and pasting the infotext brings it back.
    assert infotext.parse(engine.generate(BASE.replace(randn_source="NV")).infotexts[0])[2]["RNG"] == "NV"
    assert infotext.request_fields(cpu.infotexts[0])["randn_source"] == "CPU"


def test_unknown_randn_source_is_refused(settings):
    with pytest.raises(RequestError, match="random number source"):
        BASE.replace(randn_source="TPU").validate()
    with pytest.raises(RequestError, match="randn_source must be one of"):
        settings.update({"randn_source": "TPU"})


# Live previews.
def test_full_previews_are_decoded_at_the_image_size(engine, settings):
    settings.update({"show_progress_every_n_steps": 1, "show_progress_type": "Full"})
    job = engine.submit(BASE.replace(width=64, height=96))
    result = job.outcome()
    assert job.preview_id == 3 and job.preview.size == (64, 96)
    # The last preview is the decoded final latents: the image itself, before anything else.
    assert np.abs(pixels(job.preview) - pixels(result.images[0])).max() <= 1
    settings.update({"show_progress_type": "Approx cheap"})
    job = engine.submit(BASE.replace(width=64, height=96))
    job.outcome()
    assert job.preview.size == (8, 12)


# Memory modes.
def test_attention_slicing_gives_the_same_image_and_is_undone(engine, settings, monkeypatch):
    pipe = engine.models.current.base
    before = processor_types(pipe)
    plain = engine.generate(BASE)
    calls = []
    original = SlicedAttnProcessor.__call__
    monkeypatch.setattr(SlicedAttnProcessor, "__call__",
                        lambda self, *args, **kwargs: calls.append(1) or original(self, *args, **kwargs))
    settings.update({"attention_slicing": True})
    sliced = engine.generate(BASE)
    assert calls, "attention slicing was not used"
    assert np.abs(pixels(sliced.images[0]) - pixels(plain.images[0])).max() <= 2
    assert processor_types(pipe) == before
    settings.update({"attention_slicing": False})
    calls.clear()
    engine.generate(BASE)
    assert not calls


def test_vae_tiling_gives_a_close_image_and_is_undone(engine, settings, monkeypatch):
    vae = engine.models.current.base.vae
    # The tiny VAE's tiles default to its configured image size, 64 pixels, which is 8 latents:
    # too small for its group norms to see the same statistics as the whole picture. 128-pixel
    # tiles on a 192-pixel image still tile (2x2, overlapping) and blend close to the real thing.
    monkeypatch.setattr(vae, "tile_sample_min_size", 128)
    monkeypatch.setattr(vae, "tile_latent_min_size", 16)
    request = BASE.replace(width=192, height=192)
    plain = engine.generate(request)
    other_seed = engine.generate(request.replace(seed=99))
    tiled_calls = []
    original = type(vae).tiled_decode
    monkeypatch.setattr(type(vae), "tiled_decode",
                        lambda self, *args, **kwargs: tiled_calls.append(1) or original(self, *args, **kwargs))
    settings.update({"sd_vae_tiling": True})
    tiled = engine.generate(request)
    assert tiled_calls, "the VAE did not decode in tiles"
    difference = np.abs(pixels(tiled.images[0]) - pixels(plain.images[0])).mean()
    unrelated = np.abs(pixels(other_seed.images[0]) - pixels(plain.images[0])).mean()
    assert difference < 6 and difference < unrelated / 5
    assert vae.use_tiling is False
    settings.update({"sd_vae_tiling": False})
    tiled_calls.clear()
    engine.generate(request)
    assert not tiled_calls


def test_memory_modes_are_undone_when_the_job_fails(engine):
    pipe = engine.models.current.base
    before = processor_types(pipe)
    with pytest.raises(RuntimeError, match="boom"):
        with applied(pipe, MemoryModes(vae_tiling=True, attention_slicing=True)):
            assert pipe.vae.use_tiling
            assert all(isinstance(p, SlicedAttnProcessor) for p in pipe.unet.attn_processors.values())
            raise RuntimeError("boom")
    assert pipe.vae.use_tiling is False
    assert processor_types(pipe) == before
