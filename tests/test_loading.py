"""Checkpoints load offline through the same code a user's file takes, or fail with a clear reason."""

import hashlib
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.errors import CheckpointError, NotFoundError
from engine.files import HashCache
from engine.models.registry import ModelRegistry
from tests.conftest import FAMILIES, make_engine
from tests.support.ldm_export import UNET_PREFIX, ldm_state_dict, save_ldm_state_dict

COMPONENTS = {"sd1": ("unet", "vae", "text_encoder"), "sd2": ("unet", "vae", "text_encoder"),
              "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2")}


def assert_same_weights(loaded, reference, family):
    for name in COMPONENTS[family]:
        ours = getattr(loaded, name).state_dict()
        theirs = getattr(reference, name).state_dict()
        theirs = {k: v for k, v in theirs.items() if not k.endswith("position_ids")}
        for key, value in theirs.items():
            assert key in ours, f"{name}.{key} missing"
            assert torch.equal(ours[key], value), f"{name}.{key} differs"


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_checkpoint_loads_offline_with_identical_weights(family, tiny_models, tmp_path,
                                                                     no_network):
    engine = make_engine(tiny_models, tmp_path, checkpoint=None)
    try:
        engine.load_checkpoint(f"tiny-{family}.safetensors").outcome()
        model = engine.models.current
        assert model.family == family
        assert_same_weights(model.base, tiny_models.reference_pipeline(family), family)
        if family == "sd2":
            assert model.scheduler_config["prediction_type"] == "epsilon"  # from the .yaml beside it
    finally:
        engine.shutdown()


def _load_on_cpu(path, tiny_models):
    """A single file loaded by the app's loader, without an engine around it."""
    from engine.devices import DeviceConfig
    from engine.models.loading import load_single_file
    from engine.models.registry import CheckpointInfo
    return load_single_file(CheckpointInfo(path.name, str(path), "safetensors"),
                            DeviceConfig.choose(use_cpu=True), tiny_models.config_root, False).pipe


def test_a_safetensors_file_on_the_cpu_is_used_in_place_not_copied(tiny_models):
    """The weights are the file's memory-mapped pages: loading makes no copy of the model."""
    path = tiny_models.checkpoint("sd1")
    pipe = _load_on_cpu(path, tiny_models)
    with open("/proc/self/maps") as maps:
        mapped = [tuple(int(end, 16) for end in line.split()[0].split("-"))
                  for line in maps if line.rstrip().endswith(str(path))]
    assert mapped, "the file is memory-mapped"
    for name in COMPONENTS["sd1"]:
        for key, tensor in getattr(pipe, name).state_dict().items():
            assert any(start <= tensor.data_ptr() < end for start, end in mapped), f"{name}.{key} is a copy"


def test_half_precision_and_mixed_files_load_without_extra_rounding(tiny_models, tmp_path):
    """A float16 file becomes float32 weights equal to its values; in a file that mixes types
    (a float16 UNet, a float32 VAE and text encoder) nothing float32 goes through float16."""
    reference = tiny_models.reference_pipeline("sd1")
    state = ldm_state_dict(reference, "sd1")
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    mixed = {k: v.half() if k.startswith(UNET_PREFIX) else v for k, v in state.items()}
    for name, tensors, halved in (("half", half, COMPONENTS["sd1"]), ("mixed", mixed, ("unet",))):
        path = tmp_path / f"{name}.safetensors"
        save_ldm_state_dict(tensors, path)
        loaded = _load_on_cpu(path, tiny_models)
        for part in COMPONENTS["sd1"]:
            ours = getattr(loaded, part).state_dict()
            for key, value in getattr(reference, part).state_dict().items():
                if key.endswith("position_ids"):
                    continue
                expected = value.half().float() if part in halved else value
                assert ours[key].dtype == torch.float32
                assert torch.equal(ours[key], expected), f"{name}: {part}.{key}"


def test_sd2_v_prediction_is_taken_from_the_yaml_beside_the_file(tiny_models, tmp_path):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    shutil.copy(tiny_models.checkpoint("sd2"), models_dir / "v-model.safetensors")
    (models_dir / "v-model.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    engine = make_engine(tiny_models, tmp_path, checkpoint=None)
    engine.models.registry.folders = [models_dir]
    engine.models.registry.refresh()
    try:
        engine.load_checkpoint("v-model").outcome()
        assert engine.models.current.scheduler_config["prediction_type"] == "v_prediction"
    finally:
        engine.shutdown()


def test_generation_matches_plain_diffusers_on_the_same_weights(engine, tiny_models):
    from engine.request import GenerationRequest

    result = engine.generate(GenerationRequest(prompt="a cat", steps=3, width=64, height=64, sampler_name="Euler",
                                               seed=42, save_images=False, randn_source="CPU"))
    reference = tiny_models.reference_pipeline("sd1")
    reference.set_progress_bar_config(disable=True)
    from diffusers import EulerDiscreteScheduler
    reference.scheduler = EulerDiscreteScheduler.from_config(
        reference.scheduler.config, timestep_spacing="linspace")
    expected = reference("a cat", num_inference_steps=3, width=64, height=64, guidance_scale=7.0,
                         latents=torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(42))).images[0]
    # The same picture; on some CPUs a value may round differently (the UNet's convolutions run
    # in another arrangement inside the engine's pipeline), so a pixel may be off by one.
    difference = np.abs(np.asarray(result.images[0], dtype=int) - np.asarray(expected, dtype=int))
    assert difference.max() <= 1


def _write_pickle(path, state):
    torch.save({"state_dict": state}, path)


def test_pickled_checkpoint_is_refused_unless_allowed(tiny_models, tmp_path):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    _write_pickle(models_dir / "old.ckpt", ldm_state_dict(tiny_models.reference_pipeline("sd1"), "sd1"))
    for allow in (False, True):
        engine = make_engine(tiny_models, tmp_path / str(allow), checkpoint=None, allow_unsafe=allow)
        engine.models.registry.folders = [models_dir]
        engine.models.registry.refresh()
        try:
            if not allow:
                with pytest.raises(CheckpointError, match="--allow-unsafe-checkpoints"):
                    engine.load_checkpoint("old.ckpt").outcome()
                assert engine.models.current is None
            else:
                engine.load_checkpoint("old.ckpt").outcome()
                assert_same_weights(engine.models.current.base, tiny_models.reference_pipeline("sd1"), "sd1")
        finally:
            engine.shutdown()


class _RunsCode:
    """An object whose unpickling would create a file: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_that_would_run_code_is_refused_even_when_allowed(tiny_models, tmp_path):
    marker = tmp_path / "pwned"
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    state = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1), "x": _RunsCode(marker)}
    torch.save(state, models_dir / "evil.ckpt")
    engine = make_engine(tiny_models, tmp_path, checkpoint=None, allow_unsafe=True)
    engine.models.registry.folders = [models_dir]
    engine.models.registry.refresh()
    try:
        with pytest.raises(CheckpointError, match="weights-only"):
            engine.load_checkpoint("evil.ckpt").outcome()
        assert not marker.exists(), "unpickling ran code"
    finally:
        engine.shutdown()


@pytest.mark.parametrize("content, words", [
    (b"\x00" * 100, "not a valid .safetensors file"),
    (None, "not a Stable Diffusion checkpoint"),
])
def test_corrupt_or_foreign_files_fail_clearly_and_keep_the_loaded_model(tiny_models, tmp_path,
                                                                         content, words):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    shutil.copy(tiny_models.checkpoint("sd1"), models_dir / "good.safetensors")
    bad = models_dir / "bad.safetensors"
    if content is None:
        save_file({"lora_unet_down.weight": torch.zeros(2, 2)}, str(bad))  # a LoRA, not a checkpoint
    else:
        bad.write_bytes(content)
    engine = make_engine(tiny_models, tmp_path, checkpoint=None)
    engine.models.registry.folders = [models_dir]
    engine.models.registry.refresh()
    try:
        engine.load_checkpoint("good").outcome()
        with pytest.raises(CheckpointError) as caught:
            engine.load_checkpoint("bad").outcome()
        assert words in caught.value.message and "bad.safetensors" in caught.value.message
        assert engine.models.current.info.name == "good.safetensors"
        bad.unlink()
        with pytest.raises(CheckpointError, match="not found"):
            engine.models.load("bad")  # deleted after the scan
    finally:
        engine.shutdown()


def test_model_hash_is_computed_once_and_cached(tiny_models, tmp_path, monkeypatch):
    path = tiny_models.checkpoint("sd1")
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    engine = make_engine(tiny_models, tmp_path)
    try:
        info = engine.models.current.info
        assert info.sha256 == expected and info.short_hash == expected[:10]
        assert info.title == f"tiny-sd1.safetensors [{expected[:10]}]"
    finally:
        engine.shutdown()

    def no_hashing(*args):
        raise AssertionError("hash computed again")

    monkeypatch.setattr(hashlib, "sha256", no_hashing)
    registry = ModelRegistry([tiny_models.models_dir], HashCache(tmp_path / "cache.json"))
    cached = registry.find("tiny-sd1")
    assert cached.sha256 == expected
    assert registry.with_hash(cached) is cached
    # Any of the names users and clients use finds it.
    for name in (cached.title, "tiny-sd1.safetensors", "tiny-sd1", expected[:10],
                 "tiny-sd1.safetensors [0123456789]"):
        assert registry.find(name) == cached


def test_unknown_checkpoint_name_is_not_found(engine):
    with pytest.raises(NotFoundError, match="Checkpoint not found: 'nope'"):
        engine.load_checkpoint("nope")


def test_diffusers_folder_loads_and_task_pipelines_share_its_weights(tiny_models, tmp_path):
    models_dir = tmp_path / "models"
    tiny_models.reference_pipeline("sd1").save_pretrained(models_dir / "folder-model")
    engine = make_engine(tiny_models, tmp_path, checkpoint=None)
    engine.models.registry.folders = [models_dir]
    engine.models.registry.refresh()
    try:
        engine.load_checkpoint("folder-model").outcome()
        model = engine.models.current
        assert model.info.kind == "diffusers" and model.family == "sd1"
        assert model.info.short_hash
        assert_same_weights(model.base, tiny_models.reference_pipeline("sd1"), "sd1")
        img2img = model.pipeline_for("img2img")
        assert img2img is not model.base
        assert img2img.unet is model.base.unet and img2img.vae is model.base.vae
        assert model.pipeline_for("img2img") is img2img
    finally:
        engine.shutdown()
