"""Recently used checkpoints stay in RAM: switching back reads nothing and behaves as a fresh load.

Tiny checkpoint files in the format users download, loaded through the engine with the cache wired
to the `sd_checkpoint_cache` setting exactly as app.py does. Reads of a checkpoint are counted
through a wrapper around the real loading function.
"""

from __future__ import annotations

import gc
import os
import shutil
import weakref

import pytest
import torch
from safetensors.torch import save_file

import engine.models.pipelines as pipelines
from engine.addons import AddOns
from engine.models.checkpoint_cache import CheckpointCache
from engine.devices import DeviceConfig
from engine.engine import Engine
from engine.errors import CheckpointError
from engine.models.registry import CheckpointInfo, ModelRegistry
from engine.files import HashCache
from engine.output.writer import OutputWriter
from engine.request import GenerationRequest
from engine.settings.store import Settings
from engine.models.tiny_models import build_tiny_pipeline
from tests.support.ldm_export import export_single_file, vae_to_ldm
from tests.support.lora_files import write_kohya_lora

BASE = GenerationRequest(prompt="a red cube", steps=3, width=64, height=64, sampler_name="Euler",
                         seed=11, save_images=False, save_grid=False)


@pytest.fixture(scope="module")
def checkpoints(tiny_models, tmp_path_factory):
    """a, b: SD 1.x files with different weights; c, d: copies of a (other files, same weights)."""
    folder = tmp_path_factory.mktemp("cache-models")
    shutil.copy(tiny_models.checkpoint("sd1"), folder / "a.safetensors")
    export_single_file(tiny_models.reference_pipeline("sd1", seed=7), folder / "b.safetensors", "sd1")
    for name in ("c", "d"):
        shutil.copy(folder / "a.safetensors", folder / f"{name}.safetensors")
    return folder


@pytest.fixture
def reads(monkeypatch):
    """The names of the checkpoints read from disk, in order."""
    names: list[str] = []
    real = pipelines.load_checkpoint

    def counting(info, *args, **kwargs):
        names.append(info.model_name)
        return real(info, *args, **kwargs)

    monkeypatch.setattr(pipelines, "load_checkpoint", counting)
    return names


def cached_engine(tiny_models, folder, data_dir, keep: int) -> Engine:
    settings = Settings(data_dir / "config.json")
    settings.update({"sd_checkpoint_cache": keep})
    hashes = HashCache(data_dir / "cache.json")
    models = pipelines.ModelManager(ModelRegistry([folder], hashes), DeviceConfig.choose(use_cpu=True),
                                    config_root=tiny_models.config_root,
                                    cache=CheckpointCache(lambda: settings["sd_checkpoint_cache"]))
    return Engine(models, OutputWriter(data_dir / "outputs"), settings, AddOns.in_data_dir(data_dir, hashes))


@pytest.fixture
def make(tiny_models, checkpoints, tmp_path):
    engines: list[Engine] = []

    def build(keep: int = 1, folder=checkpoints) -> Engine:
        engine = cached_engine(tiny_models, folder, tmp_path / f"data{len(engines)}", keep)
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        engine.shutdown()


def switch(engine: Engine, name: str):
    return engine.load_checkpoint(name).outcome()


def cached_names(engine: Engine) -> list[str]:
    return [title.split(".safetensors")[0] for title in engine.models.cache.titles()]


def image(engine: Engine, **changes) -> bytes:
    return engine.generate(BASE.replace(**changes)).images[0].tobytes()


def test_switching_back_reuses_the_model_in_ram_and_makes_the_same_image(make, reads):
    engine = make(keep=1)
    first = switch(engine, "a")
    fresh = image(engine)
    switch(engine, "b")
    assert image(engine) != fresh, "b has other weights"
    back = switch(engine, "a")
    assert back is first and back.base.unet is first.base.unet
    assert reads == ["a", "b"], "a came back without reading its file"
    assert image(engine) == fresh
    assert cached_names(engine) == ["b"]


def test_a_model_used_with_a_lora_a_vae_and_every_patch_comes_back_as_a_fresh_load(make, reads):
    """What jobs do to a model (LoRA adapters, another VAE, VAE tiling, attention slicing, the
    tiling extension) is undone after each job, so the cached model makes what a fresh one does."""
    engine = make(keep=1)
    model = switch(engine, "a")
    fresh = image(engine)
    lora = engine.addons.loras.folder / "shiny.safetensors"
    write_kohya_lora(model.base, lora)
    engine.addons.loras.refresh()
    vae = build_tiny_pipeline("sd1", model.base.tokenizer, seed=99).vae
    save_file({k: v.contiguous() for k, v in vae_to_ldm(vae).items()},
              str(engine.addons.vaes.folder / "bright.vae.safetensors"))
    engine.addons.vaes.refresh()
    engine.settings.update({"sd_vae_tiling": True, "attention_slicing": True})
    patched = image(engine, prompt="a red cube <lora:shiny:1>", vae="bright.vae.safetensors",
                    extensions={"tiling": {"enabled": True}})
    assert patched != fresh
    engine.settings.update({"sd_vae_tiling": False, "attention_slicing": False})
    switch(engine, "b")
    assert switch(engine, "a") is model and reads == ["a", "b"]
    assert image(engine) == fresh
    assert engine.addons.loras.merged_weights(model.base).changed == 0


def test_a_request_overriding_the_checkpoint_switches_back_from_ram(make, reads):
    engine = make(keep=1)
    switch(engine, "a")
    fresh = image(engine)
    for _ in range(2):
        engine.generate(BASE, overrides={"sd_model_checkpoint": "b"})
        assert engine.models.current.info.model_name == "a"
    assert reads == ["a", "b"], "each checkpoint was read once"
    assert image(engine) == fresh


def test_the_count_limit_drops_the_least_recently_used(make, reads):
    engine = make(keep=2)
    for name in ("a", "b", "c"):
        switch(engine, name)
    assert cached_names(engine) == ["a", "b"]
    switch(engine, "a")  # from RAM: now the most recently used
    assert cached_names(engine) == ["b", "c"]
    switch(engine, "d")
    assert cached_names(engine) == ["c", "a"], "b was used longest ago"
    switch(engine, "b")
    assert reads == ["a", "b", "c", "d", "b"]


def test_lowering_the_setting_applies_at_the_next_switch_and_zero_turns_caching_off(make, reads):
    engine = make(keep=2)
    for name in ("a", "b", "c"):
        switch(engine, name)
    engine.settings.update({"sd_checkpoint_cache": 0})
    switch(engine, "d")
    assert cached_names(engine) == []
    switch(engine, "a")
    assert reads == ["a", "b", "c", "d", "a"] and cached_names(engine) == []


def test_the_setting_is_for_the_whole_server_not_one_request(make):
    engine = make(keep=1)
    switch(engine, "a")
    result = engine.generate(BASE, overrides={"sd_checkpoint_cache": 3})
    assert result.ignored_settings == ["sd_checkpoint_cache"]  # left alone, and named
    assert engine.settings["sd_checkpoint_cache"] == 1


def folder_of(checkpoints, folder, **names):
    """A models folder of its own (the test changes it): name -> which of `checkpoints`."""
    folder.mkdir()
    for name, source in names.items():
        shutil.copy(checkpoints / f"{source}.safetensors", folder / f"{name}.safetensors")
    return folder


def test_a_file_changed_on_disk_is_read_again(make, checkpoints, tmp_path, reads):
    folder = folder_of(checkpoints, tmp_path / "models", a="a", b="b")
    engine = make(keep=1, folder=folder)
    old = switch(engine, "a")
    old_image = image(engine)
    switch(engine, "b")
    # Replaced the way a download does (a new file renamed over the old one), same size.
    shutil.copy(checkpoints / "b.safetensors", folder / "new.tmp")
    os.replace(folder / "new.tmp", folder / "a.safetensors")
    engine.models.registry.refresh()
    new = switch(engine, "a")
    assert new is not old and reads == ["a", "b", "a"]
    assert image(engine) != old_image and cached_names(engine) == ["b"]


def test_unload_frees_the_loaded_and_every_cached_model(make, reads):
    engine = make(keep=2)
    models = [weakref.ref(switch(engine, name).base.unet) for name in ("a", "b", "c")]
    assert len(engine.models.cache) == 2
    engine.unload_checkpoint().outcome()
    assert engine.models.current is None and len(engine.models.cache) == 0
    gc.collect()
    assert all(ref() is None for ref in models), "no model is left in memory"
    switch(engine, "a")
    assert reads == ["a", "b", "c", "a"]


def test_a_failed_load_brings_the_previous_model_back_from_ram(make, checkpoints, tmp_path, reads):
    engine = make(keep=1, folder=folder_of(checkpoints, tmp_path / "models", a="a", broken="b"))
    model = switch(engine, "a")

    def fail(info, *args, **kwargs):
        reads.append(info.model_name)
        raise CheckpointError("Could not load 'broken': it is broken", "checkpoint")

    real = pipelines.load_checkpoint
    pipelines.load_checkpoint = fail
    try:
        with pytest.raises(CheckpointError):
            switch(engine, "broken")
    finally:
        pipelines.load_checkpoint = real
    assert engine.models.current is model and reads == ["a", "broken"]


# Free RAM, with a stand-in for the machine's available memory.


class _StubModel:
    """What the cache needs of a LoadedModel, on a pretend GPU."""

    def __init__(self, name: str, device: str = "cuda"):
        self.info = CheckpointInfo(f"{name}.safetensors", f"/models/{name}.safetensors", "safetensors")
        self.device = torch.device(device)
        self.layer = torch.nn.Linear(256, 256)  # 256*256*4 + 256*4 bytes
        self.moved_to: list[str] = []

    def modules(self):
        return [self.layer]

    def set_aside(self):
        self.moved_to.append("cpu")


SIZE = 256 * 256 * 4 + 256 * 4


def test_a_model_on_the_gpu_is_kept_only_if_its_copy_leaves_the_margin_free():
    free = {"bytes": 10 * SIZE}
    cache = CheckpointCache(lambda: 3, margin=9 * SIZE, available=lambda: free["bytes"])
    fits, too_big = _StubModel("fits"), _StubModel("too-big")
    assert cache.keep(fits) and fits.moved_to == ["cpu"]
    free["bytes"] = 9 * SIZE + SIZE // 2  # the copy would eat into the margin
    assert not cache.keep(too_big) and too_big.moved_to == []
    assert cache.titles() == [], "the cached one went first, trying to make room"


def test_when_free_ram_runs_short_the_oldest_go_first():
    free = {"bytes": 100 * SIZE}
    cache = CheckpointCache(lambda: 3, margin=10 * SIZE, available=lambda: free["bytes"])
    for name in ("a", "b", "c"):
        assert cache.keep(_StubModel(name, device="cpu"))  # in RAM already: nothing to copy
    calls = iter([9 * SIZE, 9 * SIZE, 11 * SIZE])  # dropping two gives enough back
    cache._available = lambda: next(calls)
    cache.trim()
    assert [title.split(".")[0] for title in cache.titles()] == ["c"]


def test_after_unload_the_next_job_loads_the_chosen_checkpoint_again(make, reads):
    engine = make(keep=1)
    switch(engine, "b")
    before = image(engine)
    engine.unload_checkpoint().outcome()
    assert engine.models.current is None
    assert image(engine) == before  # the job loaded "b" again first, as the mature UI does
    assert engine.models.current.info.model_name == "b" and reads == ["b", "b"]


def test_with_checkpoints_on_disk_the_no_model_message_does_not_send_the_user_to_demo(make):
    from engine.errors import NoModelError

    engine = make(keep=1)
    engine.models.unload()
    with pytest.raises(NoModelError) as refused:
        engine.models.require()
    assert "pick one in the checkpoint list" in refused.value.message and "--demo" not in refused.value.message
