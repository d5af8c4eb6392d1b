"""Automatic VAE tiling: a decode or encode that would not fit in the memory free runs one image at a
time or in tiles, and the picture stays close to the whole decode; one that fits is untouched."""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from engine.networks import vae as vae_module
from engine.memory import vae_budget
from engine.models.loading import CONFIG_ROOT
from engine.request import GenerationRequest

BASE = GenerationRequest(prompt="a red cube", negative_prompt="blurry", steps=3, width=192, height=192,
                         sampler_name="Euler a", seed=4242, save_images=False, save_grid=False)
GiB = 2**30


@pytest.fixture(scope="module")
def sd_vae():
    """SD 1.5's VAE shape (weights never touched: built on the meta device)."""
    with torch.device("meta"):
        return AutoencoderKL.from_config(AutoencoderKL.load_config(str(CONFIG_ROOT / "sd1" / "vae")))


def test_the_estimate_follows_pixels_and_precision(sd_vae):
    one = vae_budget.bytes_needed(sd_vae, 512, 512, decoding=True)
    assert 0.8 * GiB < one < 1.2 * GiB  # what a float32 512x512 decode was measured to take
    assert vae_budget.bytes_needed(sd_vae, 1024, 1024, decoding=True) == pytest.approx(4 * one, rel=1e-6)
    assert vae_budget.bytes_needed(sd_vae, 512, 512, decoding=False) < one
    upcast = sd_vae.config.force_upcast
    half = sd_vae.to(torch.float16)  # in place: the module-wide fixture is restored below
    try:
        assert vae_budget.bytes_needed(half, 512, 512, decoding=True) == one  # force_upcast: decodes in fp32
        half.register_to_config(force_upcast=False)
        assert vae_budget.bytes_needed(half, 512, 512, decoding=True) == pytest.approx(one / 2, rel=1e-6)
    finally:
        half.register_to_config(force_upcast=upcast)
        sd_vae.to(torch.float32)


@pytest.mark.parametrize("free_gib, batch, expected", [
    (8, 2, (False, False)),    # fits
    (2, 2, (True, False)),     # one image fits, the batch does not: one at a time
    (1, 1, (False, True)),     # one image does not fit (1 GiB needed, 0.8 usable): tiles
    (1, 4, (True, True)),
])
def test_the_plan_splits_only_what_does_not_fit(sd_vae, free_gib, batch, expected):
    plan = vae_budget.plan(sd_vae, batch, 512, 512, torch.device("cpu"), decoding=True, free=free_gib * GiB)
    assert (plan.one_at_a_time, plan.tiles) == expected


def test_unknown_free_memory_changes_nothing(sd_vae, monkeypatch):
    monkeypatch.setattr(vae_budget, "free_bytes", lambda device: None)
    assert not vae_budget.plan(sd_vae, 4, 4096, 4096, torch.device("cpu"), decoding=True).changes_anything


def test_free_memory_on_this_machine_is_known():
    assert vae_budget.free_bytes("cpu") > 0


def calls_to(monkeypatch, vae, method: str) -> list:
    calls = []
    original = getattr(type(vae), method)
    monkeypatch.setattr(type(vae), method,
                        lambda self, *args, **kwargs: calls.append(args[0].shape) or original(self, *args, **kwargs))
    return calls


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


@pytest.fixture
def small_tiles(engine, monkeypatch):
    """The tiny VAE with 128-pixel tiles (its own 64 are too small for its group norms: see
    test_vae_tiling_gives_a_close_image_and_is_undone)."""
    vae = engine.models.require().base.vae
    monkeypatch.setattr(vae, "tile_sample_min_size", 128)
    monkeypatch.setattr(vae, "tile_latent_min_size", 16)
    return vae


def test_a_decode_that_would_not_fit_is_tiled_and_close_to_the_whole(engine, small_tiles, monkeypatch):
    plain = engine.generate(BASE)
    other_seed = engine.generate(BASE.replace(seed=99))
    tiled = calls_to(monkeypatch, small_tiles, "tiled_decode")
    monkeypatch.setattr(vae_budget, "free_bytes", lambda device: 1024)
    squeezed = engine.generate(BASE)
    assert tiled, "the VAE did not decode in tiles"
    difference = np.abs(pixels(squeezed) - pixels(plain)).mean()
    assert difference < 6 and difference < np.abs(pixels(other_seed) - pixels(plain)).mean() / 5
    assert (small_tiles.use_tiling, small_tiles.use_slicing) == (False, False)
    assert not squeezed.warnings  # planned, not a failed attempt: nothing to tell


def test_a_decode_that_fits_is_left_whole(engine, small_tiles, monkeypatch):
    tiled = calls_to(monkeypatch, small_tiles, "tiled_decode")
    monkeypatch.setattr(vae_budget, "free_bytes", lambda device: 64 * GiB)
    engine.generate(BASE)
    assert not tiled


def test_a_batch_that_would_not_fit_is_decoded_one_image_at_a_time(engine, small_tiles, monkeypatch):
    request = BASE.replace(width=64, height=64, batch_size=2)
    plain = engine.generate(request)
    one = vae_budget.bytes_needed(small_tiles, 64, 64, decoding=True)
    monkeypatch.setattr(vae_budget, "free_bytes", lambda device: int(1.5 * one / vae_budget.HEADROOM))
    decodes = calls_to(monkeypatch, small_tiles, "_decode")
    split = engine.generate(request)
    assert [shape[0] for shape in decodes] == [1, 1]
    for a, b in zip(plain.images, split.images):
        assert np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max() <= 1


def test_an_encode_that_would_not_fit_is_tiled(engine, small_tiles, monkeypatch):
    picture = engine.generate(BASE).images[0]
    images = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    plain = vae_module.encode(small_tiles, images)
    other = vae_module.encode(small_tiles, images.flip(-1))
    tiled = calls_to(monkeypatch, small_tiles, "_tiled_encode")
    monkeypatch.setattr(vae_budget, "free_bytes", lambda device: 1024)
    squeezed = vae_module.encode(small_tiles, images)
    assert tiled, "the VAE did not encode in tiles"
    difference = (squeezed - plain).abs().mean()
    assert difference < (other - plain).abs().mean() / 3
    assert small_tiles.use_tiling is False
