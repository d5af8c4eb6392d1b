"""FLUX.1 and SD 3.5 checkpoints load through ModelManager into diffusers pipelines, offline, in
every layout users download: all-in-one files, transformer-only files with the text encoders and
VAE picked from models/text_encoder and models/VAE (automatically when there is one of each),
fp8 and GGUF weights, and diffusers folders. Each part's weights are checked against the tiny
components the files were written from (bit for bit; fp8: the fp8 cast; GGUF: the reference
Q8_0 rounding), and encode_prompt against a plain diffusers pipeline built from those components."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline

from engine.devices import DeviceConfig
from engine.errors import CheckpointError
from engine.files import HashCache
from engine.families.sd3 import SD3
from engine.models.flow_pipelines import _scheduler, _tokenizers
from engine.models.pipelines import ModelManager
from engine.models.prediction import FLOW
from engine.models.registry import ModelRegistry
from engine.models.text_encoders import TextEncoderLibrary
from tests.support.flow_tree import write_flow_tree
from tests.support.flow_writers import (assert_same_weights as assert_same, encoder_state, flux_to_bfl,
                                        to_fp8, write)

PIPELINES = {"flux": FluxPipeline, "sd3": StableDiffusion3Pipeline}


@pytest.fixture(autouse=True)
def offline(no_network):
    """No hub and no sockets: everything comes from the files and config folders written here."""


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A data folder with checkpoints, text encoders and VAEs written from the tiny models, and a
    tiny config root (tests/support/flow_tree.py)."""
    root = tmp_path_factory.mktemp("flow-load")
    tiny, configs = write_flow_tree(root)
    return root, tiny, configs


def manager(root: Path, configs: Path, **kwargs) -> ModelManager:
    registry = ModelRegistry([root / "models" / "Stable-diffusion"], HashCache(root / "cache.json"))
    return ModelManager(registry, DeviceConfig.choose(use_cpu=True), config_root=configs, **kwargs)


@pytest.fixture(scope="module")
def models(tree):
    root, _, configs = tree
    return manager(root, configs)


def reference_pipeline(layout: str, components: dict, configs: Path):
    """A plain diffusers pipeline of the tiny components, with the config folder's tokenizers."""
    family = "flux" if layout.startswith("flux") else "sd3"
    parts = {**components, **_tokenizers(configs / layout, family), "scheduler": _scheduler(configs / layout)}
    return PIPELINES[family](**parts)


def assert_same_prompt_encoding(pipe, reference) -> None:
    kwargs = {"prompt": "a photo of a cat", "device": torch.device("cpu"), "max_sequence_length": 24}
    if isinstance(pipe, StableDiffusion3Pipeline):
        kwargs.update(prompt_2=None, prompt_3=None, do_classifier_free_guidance=False)
    else:
        kwargs.update(prompt_2=None)
    with torch.no_grad():
        ours, theirs = pipe.encode_prompt(**kwargs), reference.encode_prompt(**kwargs)
    for mine, want in zip(ours, theirs):
        if want is not None:
            # The weights are equal bit for bit (asserted beside); a projection matmul may still
            # take another vectorised path on other memory, a last-bit difference.
            torch.testing.assert_close(mine, want, rtol=1e-6, atol=1e-6)


def assert_flow_model(model, family: str) -> None:
    assert isinstance(model.base, PIPELINES[family]) and model.family == family
    assert type(model.base.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert model.detected.prediction_type == FLOW and model.prediction.prediction_type == FLOW
    assert not model.is_inpainting and model.vae_scale_factor == 8 and model.latent_space == family
    assert all(model.pipeline_for(task) is model.base for task in ("txt2img", "img2img", "inpaint"))
    assert any(module is model.base.transformer for module in model.modules())
    assert not any(p.is_meta for module in model.modules() for p in module.parameters())


def test_a_flux_all_in_one_file_loads_every_part(tree, models):
    _, tiny, configs = tree
    components = tiny["flux-dev"]
    model = models.load("flux1-dev-aio")
    assert_flow_model(model, "flux")
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        assert_same(components[name].state_dict(), getattr(model.base, name).state_dict())
    assert model.module_files == ()
    assert model.base.text_encoder_2.encoder.embed_tokens.weight is model.base.text_encoder_2.shared.weight
    assert_same_prompt_encoding(model.base, reference_pipeline("flux-dev", components, configs))


def test_an_sd35_all_in_one_file_loads_every_part(tree, models):
    _, tiny, configs = tree
    components = tiny["sd3.5-medium"]
    model = models.load("sd3.5_medium_all.safetensors")
    assert_flow_model(model, "sd3")
    for name in ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae"):
        assert_same(components[name].state_dict(), getattr(model.base, name).state_dict())
    assert_same_prompt_encoding(model.base, reference_pipeline("sd3.5-medium", components, configs))


def test_a_flux_transformer_alone_takes_the_one_file_of_each_part(tree, models):
    root, tiny, configs = tree
    components = tiny["flux-dev"]
    model = models.load("flux1-dev.safetensors", modules=[])
    assert sorted(model.module_files) == ["ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"]
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        assert_same(components[name].state_dict(), getattr(model.base, name).state_dict())
    assert_same_prompt_encoding(model.base, reference_pipeline("flux-dev", components, configs))
    # The same choice again keeps the model; a path inside the folders is as good as a name.
    assert models.load("flux1-dev.safetensors") is model
    picked = [str(root / "models" / "text_encoder" / "clip_l.safetensors"), "t5xxl_fp16", "ae.safetensors"]
    again = models.load("flux1-dev.safetensors", modules=picked)
    assert again is not model and sorted(again.module_files) == sorted(model.module_files)


def test_sd35_large_takes_its_text_encoders_from_the_folder(tree, models):
    _, tiny, _ = tree
    large, dev = tiny["sd3.5-large"], tiny["flux-dev"]
    model = models.load("sd3.5_large", modules=["clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"])
    assert_flow_model(model, "sd3")
    assert model.module_files == ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors")
    for name in ("transformer", "text_encoder_2", "vae"):
        assert_same(large[name].state_dict(), getattr(model.base, name).state_dict())
    # SD 3 takes CLIP-L's pooled output unprojected, whatever the file holds.
    clip_l = {**encoder_state(dev["text_encoder"]), "text_projection.weight": torch.eye(32)}
    assert_same(clip_l, model.base.text_encoder.state_dict())
    assert_same(dev["text_encoder_2"].state_dict(), model.base.text_encoder_3.state_dict())


def test_fp8_weights_load_as_their_cast_to_the_compute_dtype(tree, models, tmp_path):
    root, tiny, _ = tree
    components = tiny["flux-dev"]
    fp8_t5 = root / "models" / "text_encoder" / "t5xxl_fp8_e4m3fn.safetensors"
    write(to_fp8(encoder_state(components["text_encoder_2"])), fp8_t5)
    try:
        model = models.load("flux1-dev-fp8", modules=["clip_l", "t5xxl_fp8_e4m3fn.safetensors", "ae.safetensors"])
        assert "t5xxl_fp8_e4m3fn.safetensors" in model.module_files
        for name in ("transformer", "text_encoder_2"):
            assert_same(components[name].state_dict(), getattr(model.base, name).state_dict(), cast=torch.float8_e4m3fn)
            assert {p.dtype for p in getattr(model.base, name).parameters()} == {torch.float32}
    finally:
        models.unload()
        fp8_t5.unlink()


def test_a_q8_0_gguf_flux_transformer_loads_and_is_listed(tree, models):
    pytest.importorskip("gguf")
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    from tests.support.gguf_files import is_quantised, q8_0_round_trip, write_gguf
    root, tiny, _ = tree
    components = tiny["flux-schnell"]
    path = write_gguf(flux_to_bfl(components["transformer"]), root / "models" / "Stable-diffusion" /
                      "flux1-schnell-Q8_0.gguf", "flux")
    try:
        models.registry.refresh()
        info = models.registry.find("flux1-schnell-Q8_0")
        assert (info.kind, info.name, info.model_name) == ("gguf", "flux1-schnell-Q8_0.gguf", "flux1-schnell-Q8_0")
        model = models.load("flux1-schnell-Q8_0.gguf", modules=())
        assert model.info.title == f"flux1-schnell-Q8_0.gguf [{model.info.short_hash}]" and model.info.short_hash
        loaded = {key: dequantize_gguf_tensor(value) for key, value in model.base.transformer.state_dict().items()}
        original = components["transformer"].state_dict()
        assert sorted(original) == sorted(loaded)
        assert any(is_quantised(value) for value in original.values())
        for key, value in original.items():
            want = q8_0_round_trip(value) if is_quantised(value) else value
            assert torch.equal(want, loaded[key].float().reshape(value.shape)), key
        assert model.base.transformer.config.guidance_embeds is False
    finally:
        models.unload()
        path.unlink()
        models.registry.refresh()


def test_a_q8_0_gguf_sd35_transformer_takes_every_other_part_from_the_folders(tree, models):
    pytest.importorskip("gguf")
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    from tests.support.flow_writers import sd3_to_original
    from tests.support.gguf_files import is_quantised, q8_0_round_trip, write_gguf
    root, tiny, configs = tree
    medium, dev, large = tiny["sd3.5-medium"], tiny["flux-dev"], tiny["sd3.5-large"]
    path = write_gguf(sd3_to_original(medium["transformer"]), root / "models" / "Stable-diffusion" /
                      "sd3.5_medium-Q8_0.gguf", "sd3")
    try:
        models.registry.refresh()
        model = models.load("sd3.5_medium-Q8_0", modules=["clip_l", "clip_g", "t5xxl_fp16", "ae"])
        assert_flow_model(model, "sd3")
        assert model.module_files == ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors",
                                      "ae.safetensors")
        for key, value in medium["transformer"].state_dict().items():
            want = q8_0_round_trip(value) if is_quantised(value) else value
            got = dequantize_gguf_tensor(model.base.transformer.state_dict()[key])
            assert torch.equal(want, got.float().reshape(value.shape)), key
        assert_same(dev["vae"].state_dict(), model.base.vae.state_dict())
        assert_same(large["text_encoder_2"].state_dict(), model.base.text_encoder_2.state_dict())
        assert_same(dev["text_encoder_2"].state_dict(), model.base.text_encoder_3.state_dict())
    finally:
        models.unload()
        path.unlink()
        models.registry.refresh()


def test_a_diffusers_folder_loads(tree, models):
    root, tiny, configs = tree
    components = tiny["flux-schnell"]
    folder = root / "models" / "Stable-diffusion" / "FLUX.1-schnell-tiny"
    reference_pipeline("flux-schnell", components, configs).save_pretrained(folder)
    try:
        models.registry.refresh()
        model = models.load("FLUX.1-schnell-tiny")
        assert_flow_model(model, "flux")
        for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
            assert_same(components[name].state_dict(), getattr(model.base, name).state_dict())
    finally:
        models.unload()
        shutil.rmtree(folder)
        models.registry.refresh()


def test_memory_modes_place_a_flux_pipeline(tree, models):
    _, tiny, configs = tree
    model = models.load("flux1-dev-aio", modules=())
    model.placement.offload_on_cpu = True
    reference = reference_pipeline("flux-dev", tiny["flux-dev"], configs)
    try:
        for mode in ("medvram", "lowvram", "t5-cpu", "none"):
            model.use_memory_mode(mode)
            assert model.placement.mode == mode
            assert_same_prompt_encoding(model.base, reference)
        model.set_aside()
        assert model.placement.mode == "none"
    finally:
        model.placement.offload_on_cpu = False
        models.unload()


def test_auto_keeps_t5_on_the_cpu_when_all_else_fits_on_the_card(tree, models, monkeypatch):
    """auto on a card that holds every weight but T5's (with the working room left): t5-cpu,
    which leaves the T5 encoder on the CPU and the rest on the card; the pictures' conditioning
    is the same as with every weight in one place."""
    from engine.memory import memory_modes
    from engine.models import pipelines

    _, tiny, configs = tree
    model = models.load("flux1-dev-aio", modules=())
    model.placement.offload_on_cpu = True
    try:
        total, largest, t5 = model.weight_sizes()
        assert t5 == sum(p.numel() * p.element_size() for p in model.base.text_encoder_2.state_dict().values())
        monkeypatch.setattr(memory_modes, "AUTO_WORKING_ROOM", 0)
        below = total - t5 - 1
        for vram, expected in ((total, "none"), (total - t5, "t5-cpu"),
                               (below, "medvram" if largest <= below else "lowvram")):
            monkeypatch.setattr(pipelines, "device_memory", lambda device, vram=vram: vram)
            assert model.mode_for("auto") == expected, vram
        model.use_memory_mode("t5-cpu")
        assert model.base.text_encoder_2.device.type == "cpu" and model.placement.resting_device == model.device
        assert_same_prompt_encoding(model.base, reference_pipeline("flux-dev", tiny["flux-dev"], configs))
    finally:
        model.placement.offload_on_cpu = False
        models.unload()


def test_automatic_picking_needs_exactly_one_file_of_each_part(tree, tmp_path):
    root, _, configs = tree
    shutil.copytree(root / "models", tmp_path / "models")
    mine = manager(tmp_path, configs)
    encoders = tmp_path / "models" / "text_encoder"
    shutil.copy(encoders / "t5xxl_fp16.safetensors", encoders / "t5xxl_other.safetensors")
    with pytest.raises(CheckpointError, match=r"a T5-XXL text encoder \(several found, pick one of "
                                              r"t5xxl_fp16.safetensors, t5xxl_other.safetensors\)"):
        mine.load("flux1-dev")
    (tmp_path / "models" / "VAE" / "ae.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"16-channel VAE \(ae.safetensors\) \(none found: put one in models/VAE\)"):
        mine.load("flux1-dev", modules=["clip_l", "t5xxl_other"])
    assert mine.current is None
    assert mine.load("flux1-dev-aio").module_files == ()   # all in one: nothing to pick


@pytest.mark.parametrize("choice, words", [
    (["sd_vae.safetensors"], r"'sd_vae.safetensors' is a VAE \(SD 1.x / 2.x / SDXL\)"),
    (["/etc/hostname"], r"'/etc/hostname' is outside the module folders"),
    (["../Stable-diffusion/flux1-dev-aio.safetensors"], "is outside the module folders"),
    (["nothing.safetensors"], r"'nothing.safetensors' not found. Available: clip_g.safetensors, clip_l"),
    (["t5xxl_fp16", "t5xxl_fp16.safetensors"], "are both a T5-XXL text encoder"),
    (["clip_l", "t5xxl_fp16"], r"needs a 16-channel VAE \(ae.safetensors\) \(pick ae.safetensors\)"),
])
def test_a_bad_modules_choice_is_refused_and_the_model_stays(tree, models, choice, words):
    models.load("sd3.5_medium_all")
    with pytest.raises(CheckpointError, match=words):
        models.load("flux1-dev", modules=choice)
    assert models.current.info.name == "sd3.5_medium_all.safetensors"


def test_outside_paths_are_refused_by_the_library_itself(tree, tmp_path):
    root, _, _ = tree
    library = TextEncoderLibrary(root / "models" / "text_encoder", root / "models" / "VAE")
    elsewhere = write(encoder_state(tree[1]["flux-dev"]["text_encoder"]), tmp_path / "clip_l.safetensors")
    with pytest.raises(CheckpointError, match="outside the module folders"):
        library.find(str(elsewhere))
    assert library.choices() == ["clip_g.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"]
    assert library.find(str(root / "models" / "VAE" / "ae.safetensors")).name == "ae.safetensors"


def test_the_choice_is_kept_across_checkpoints_and_parts_a_model_does_not_use_are_left_out(tree, models):
    every_part = ["clip_l", "clip_g", "t5xxl_fp16", "ae"]
    sd3 = models.load("sd3.5_large", modules=every_part)
    # A chosen part replaces the one in the file (as Forge's modules do): here the VAE.
    assert sd3.module_files == ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors")
    assert_same(tree[1]["flux-dev"]["vae"].state_dict(), sd3.base.vae.state_dict())
    flux = models.load("flux1-dev")   # no choice given: the last one, CLIP-G left out
    assert flux.module_files == ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors")
    assert flux.modules_choice == tuple(every_part) and models.modules_choice == tuple(every_part)
    models.load("flux1-dev-aio", modules=())


def test_a_cached_flow_model_comes_back_only_for_the_same_modules(tree):
    from engine.models.checkpoint_cache import CheckpointCache
    root, _, configs = tree
    mine = manager(root, configs, cache=CheckpointCache(lambda: 2, margin=0, available=lambda: 2**40))
    flux = mine.load("flux1-dev", modules=())
    mine.load("sd3.5_medium_all")
    assert mine.load("flux1-dev") is flux   # from RAM: the same choice
    other = mine.load("flux1-dev", modules=["clip_l", "t5xxl_fp16", "ae"])
    assert other is not flux and other.modules_choice == ("clip_l", "t5xxl_fp16", "ae")
    assert all(model.info.name != "flux1-dev.safetensors" for model in mine.cache._entries.values())
    mine.unload()


def test_variants_with_no_config_are_not_supported_yet(tree, models):
    with pytest.raises(CheckpointError, match="'flux1-depth-dev.safetensors' is a FLUX.1 Depth/Canny "
                                              "transformer-only file.*FLUX.1 Depth/Canny models are not supported yet"):
        models.load("flux1-depth-dev")


def test_the_tokenizers_come_from_the_config_folder(tree, models):
    model = models.load("sd3.5_medium_all")
    import transformers
    for name, class_name in SD3.tokenizers.items():   # transformers 5: T5TokenizerFast is T5Tokenizer
        assert isinstance(getattr(model.base, name), getattr(transformers, class_name))
    assert model.base.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
