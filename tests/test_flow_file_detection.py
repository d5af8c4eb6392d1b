"""FLUX.1 and SD 3.x files and folders are recognised and named exactly; the variants with no
config kept (FLUX.1 Depth/Canny, Chroma, Kontext) are refused as not supported
yet through the engine and the API, the current model staying loaded and the file staying in the
checkpoint list. (Loading the supported ones: tests/test_flow_pipelines_loading.py.)"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest

from engine.errors import CheckpointError
from engine import families
from engine.models.loading import CONFIG_ROOT, detect_layout, read_shapes
from tests.conftest import make_engine
from tests.support.flow_files import flux_keys, sd3_keys, write_flow_file

NOT_YET = "not supported yet in this version"

# file name -> (how it is written, family, variant, config folder, text encoders inside, VAE inside)
FILES = {
    "flux1-dev-aio.safetensors": (
        {"transformer": flux_keys(), "text_encoders": ("clip_l", "t5xxl"), "vae": "vae"},
        "flux", "FLUX.1-dev", "flux-dev", ("CLIP-L", "T5-XXL"), True),
    "flux1-dev.safetensors": (  # BFL's own release: bare transformer keys
        {"transformer": flux_keys(), "prefix": ""}, "flux", "FLUX.1-dev", "flux-dev", (), False),
    "flux1-schnell-prefixed.safetensors": (
        {"transformer": flux_keys(guidance=False)}, "flux", "FLUX.1-schnell", "flux-schnell", (), False),
    "flux1-fill-dev.safetensors": (
        {"transformer": flux_keys(img_in_channels=384), "prefix": ""}, "flux", "FLUX.1 Fill", "flux-fill", (), False),
    "flux1-depth-dev.safetensors": (
        {"transformer": flux_keys(img_in_channels=128), "prefix": ""}, "flux", "FLUX.1 Depth/Canny", None, (), False),
    "sd3.5_large.safetensors": (  # Stability's release: MMDiT and VAE, no text encoders
        {"transformer": sd3_keys(38), "vae": "first_stage_model"}, "sd3", "SD 3.5 Large", "sd3.5-large", (), True),
    "sd3.5_large_all.safetensors": (
        {"transformer": sd3_keys(38), "text_encoders": ("clip_l", "clip_g", "t5xxl"), "vae": "first_stage_model"},
        "sd3", "SD 3.5 Large", "sd3.5-large", ("CLIP-L", "CLIP-G", "T5-XXL"), True),
    "sd3.5_medium_incl_clips.safetensors": (
        {"transformer": sd3_keys(24, dual_attention_blocks=13), "text_encoders": ("clip_l", "clip_g"),
             "vae": "first_stage_model"},
        "sd3", "SD 3.5 Medium", "sd3.5-medium", ("CLIP-L", "CLIP-G"), True),
    "chroma-unlocked.safetensors": (
        {"transformer": {**flux_keys(guidance=False), "distilled_guidance_layer.in_proj.weight": (1,)}},
        "flux", "Chroma (FLUX.1-based)", None, (), False),
    "sd3_medium.safetensors": (
        {"transformer": sd3_keys(24), "prefix": ""}, "sd3", "SD 3 Medium", "sd3-medium", (), False),
}


@pytest.fixture(scope="module")
def flow_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("flow-files")
    for name, (layout, *_) in FILES.items():
        write_flow_file(folder / name, **layout)
    return folder


@pytest.mark.parametrize("name", sorted(FILES))
def test_each_file_kind_is_recognised(flow_files, name):
    _, family, variant, config_name, encoders, vae = FILES[name]
    found = families.recognise_flow_file(read_shapes(flow_files / name, False))
    assert (found.family, found.variant, found.config_name) == (family, variant, config_name)
    assert (found.text_encoders, found.has_vae) == (encoders, vae)
    if config_name is not None:
        assert (CONFIG_ROOT / config_name / "model_index.json").is_file()


# file name -> the words its description (and, for a variant not supported, its refusal) must say
MESSAGES = {
    "flux1-dev-aio.safetensors": "is a FLUX.1-dev all-in-one checkpoint (transformer, the CLIP-L text "
                                 "encoder, the T5-XXL text encoder and the VAE)",
    "flux1-dev.safetensors": "is a FLUX.1-dev transformer-only file: it needs a CLIP-L text encoder, a "
                             "T5-XXL text encoder and the FLUX VAE (ae.safetensors) picked beside it",
    "flux1-schnell-prefixed.safetensors": "is a FLUX.1-schnell transformer-only file",
    "flux1-fill-dev.safetensors": "is a FLUX.1 Fill transformer-only file: it needs a CLIP-L text encoder, a "
                                  "T5-XXL text encoder and the FLUX VAE (ae.safetensors) picked beside it",
    "sd3_medium.safetensors": "is an SD 3 Medium transformer-only file: it needs a CLIP-L text encoder, a CLIP-G "
                              "text encoder, a T5-XXL text encoder and the SD3 VAE picked beside it",
    "chroma-unlocked.safetensors": "is a Chroma (FLUX.1-based) transformer-only file: it needs a T5-XXL "
                                   "text encoder and the FLUX VAE (ae.safetensors) picked beside it",
    "sd3.5_large.safetensors": "is an SD 3.5 Large single file with the VAE; it needs a CLIP-L text encoder, "
                               "a CLIP-G text encoder and a T5-XXL text encoder picked beside it",
    "sd3.5_large_all.safetensors": "is an SD 3.5 Large all-in-one checkpoint",
    "sd3.5_medium_incl_clips.safetensors": "is an SD 3.5 Medium single file with the CLIP-L text encoder, "
                                           "the CLIP-G text encoder and the VAE; it needs a T5-XXL text encoder",
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_the_description_names_the_variant_and_what_is_missing(flow_files, name):
    found = families.recognise_flow_file(read_shapes(flow_files / name, False))
    assert f"'{name}' is {found.describe()}".startswith(f"'{name}' {MESSAGES[name]}")
    if found.supported:   # loaded by flow_pipelines.py, with the missing parts picked beside it
        assert detect_layout(read_shapes(flow_files / name, False), name) == found
        return
    with pytest.raises(CheckpointError) as caught:
        detect_layout(read_shapes(flow_files / name, False), name)
    message = caught.value.message
    assert message.startswith(f"'{name}' {MESSAGES[name]}")
    assert f"{found.variant} models are {NOT_YET}" in message
    assert caught.value.status == 400


@pytest.mark.parametrize("name", ["flux1-depth-dev.safetensors", "chroma-unlocked.safetensors"])
def test_variants_with_no_config_kept_are_not_supported_yet(flow_files, name):
    with pytest.raises(CheckpointError, match=re.escape(f"{FILES[name][2]} models are {NOT_YET}")):
        detect_layout(read_shapes(flow_files / name, False), name)


# The parts of a FLUX / SD 3 setup, on their own, in the layouts they are published in.
COMPONENTS = {
    "t5xxl_fp16.safetensors": ({"shared.weight": (1,), "encoder.block.0.layer.0.SelfAttention.q.weight": (1,)},
                               "is a T5-XXL text encoder, not a checkpoint: it belongs in models/text_encoder"),
    "clip_l.safetensors": ({"text_model.encoder.layers.0.self_attn.q_proj.weight": (768, 768)},
                           "is a CLIP-L text encoder, not a checkpoint: it belongs in models/text_encoder"),
    "clip_g.safetensors": ({"text_model.encoder.layers.0.self_attn.q_proj.weight": (1280, 1280)},
                           "is a CLIP-G text encoder, not a checkpoint: it belongs in models/text_encoder"),
    "ae.safetensors": ({"decoder.conv_in.weight": (512, 16, 3, 3), "encoder.conv_out.weight": (32, 512, 3, 3)},
                       "is a 16-channel VAE (FLUX.1 / SD 3), not a checkpoint: it belongs in models/VAE"),
    "sdxl_vae.safetensors": ({"decoder.conv_in.weight": (512, 4, 3, 3)},
                             "is a VAE (SD 1.x / 2.x / SDXL), not a checkpoint: it belongs in models/VAE"),
}


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_a_text_encoder_or_vae_in_the_checkpoint_folder_is_named(tmp_path, name):
    keys, words = COMPONENTS[name]
    path = write_flow_file(tmp_path / name, keys, prefix="")
    with pytest.raises(CheckpointError) as caught:
        detect_layout(read_shapes(path, False), name)
    assert caught.value.message.startswith(f"'{name}' {words}")


def copy_config_folder(config_name: str, target: Path) -> Path:
    """A diffusers folder as the hub lays it out (configs only: it must be refused before any
    weights are read)."""
    shutil.copytree(CONFIG_ROOT / config_name, target)
    return target


@pytest.mark.parametrize("config_name, variant", [
    ("flux-dev", "FLUX.1-dev"), ("flux-schnell", "FLUX.1-schnell"),
    ("sd3.5-large", "SD 3.5 Large"), ("sd3.5-medium", "SD 3.5 Medium"),
    ("flux-fill", "FLUX.1 Fill"), ("sd3-medium", "SD 3 Medium"),
])
def test_diffusers_folders_are_told_by_their_pipeline_class(tmp_path, config_name, variant):
    found = families.recognise_flow_folder(copy_config_folder(config_name, tmp_path / config_name))
    assert (found.variant, found.config_name, found.folder) == (variant, config_name, True)
    assert families.recognise_flow_folder(CONFIG_ROOT / "sdxl") is None   # two text encoders, still SDXL
    assert families.recognise_flow_folder(CONFIG_ROOT / "sd1") is None


def test_fill_and_kontext_folders_are_named_by_their_class(tmp_path):
    for class_name, variant, config_name in (("FluxFillPipeline", "FLUX.1 Fill", "flux-fill"),
                                             ("FluxKontextPipeline", "FLUX.1 Kontext", None)):
        folder = copy_config_folder("flux-dev", tmp_path / class_name)
        index = folder / "model_index.json"
        index.write_text(index.read_text(encoding="utf-8").replace("FluxPipeline", class_name), encoding="utf-8")
        found = families.recognise_flow_folder(folder)
        assert (found.family, found.variant, found.config_name) == ("flux", variant, config_name)


def test_the_engine_refuses_what_it_cannot_load_and_keeps_the_loaded_model(tiny_models, tmp_path, flow_files):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    shutil.copy(tiny_models.checkpoint("sd1"), models_dir / "good.safetensors")
    shutil.copy(flow_files / "flux1-depth-dev.safetensors", models_dir / "flux1-depth-dev.safetensors")
    shutil.copy(flow_files / "flux1-dev.safetensors", models_dir / "flux1-dev.safetensors")
    copy_config_folder("flux-dev", models_dir / "FLUX.1-dev")
    copy_config_folder("sd3.5-large", models_dir / "stable-diffusion-3.5-large")
    engine = make_engine(tiny_models, tmp_path, checkpoint=None)
    engine.models.registry.folders = [models_dir]
    engine.models.registry.refresh()
    try:
        names = {info.name for info in engine.models.registry.checkpoints}
        assert {"flux1-dev.safetensors", "FLUX.1-dev", "stable-diffusion-3.5-large"} <= names
        engine.load_checkpoint("good").outcome()
        # A variant with no config; a supported file whose config folder this (tiny) config root
        # lacks; diffusers folders with configs and no weights.
        for wanted, words in (("flux1-depth-dev", f"FLUX.1 Depth/Canny models are {NOT_YET}"),
                              ("flux1-dev", "Missing config folder"),
                              ("FLUX.1-dev", "Could not load diffusers folder 'FLUX.1-dev' as FLUX.1-dev"),
                              ("stable-diffusion-3.5-large", "Could not load diffusers folder "
                                                             "'stable-diffusion-3.5-large' as SD 3.5 Large")):
            with pytest.raises(CheckpointError) as caught:
                engine.load_checkpoint(wanted).outcome()
            assert words in caught.value.message
            assert engine.models.current.info.name == "good.safetensors"
    finally:
        engine.shutdown()


def test_the_api_lists_them_and_refuses_an_unsupported_one_with_a_400(demo_server, flow_files):
    api = httpx.Client(base_url=demo_server.url + "/sdapi/v1", timeout=120)
    target = demo_server.data_dir / "models" / "Stable-diffusion" / "flux1-depth-dev.safetensors"
    shutil.copy(flow_files / "flux1-depth-dev.safetensors", target)
    try:
        api.post("/refresh-checkpoints")
        titles = [model["title"] for model in api.get("/sd-models").json()]
        assert any(title.startswith("flux1-depth-dev.safetensors") for title in titles)
        response = api.post("/options", json={"sd_model_checkpoint": "flux1-depth-dev"})
        assert response.status_code == 400
        assert "FLUX.1 Depth/Canny transformer-only file" in response.text and NOT_YET in response.text
        assert api.get("/options").json()["sd_model_checkpoint"].startswith("demo-tiny")
        assert api.post("/txt2img", json={"prompt": "a cat", "steps": 1, "width": 64,
                                          "height": 64}).status_code == 200
    finally:
        target.unlink()
        api.post("/refresh-checkpoints")
        api.close()
