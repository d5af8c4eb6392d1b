"""The config-only diffusers folders under engine/models/model_configs/.

`from_single_file(path, config=<folder>, local_files_only=True)` reads these folders instead of
the Hugging Face hub, so they must describe exactly the architectures of the original
checkpoints. Every model is built from its config on the meta device (no memory, no weights)
and its parameter count compared with the published model's; the tokenizers are checked
against the ids CLIP was trained with. No network, no weights, a few seconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "engine" / "models" / "model_configs"

# Parameter counts of the released models (float parameters, buffers excluded).
# UNets: SD 1.5 859,520,964; SD 2.x 865,910,724 (same for 768-v and 512-base);
# SDXL base 2,567,463,684. VAE (all families, same architecture): 83,653,863.
# Text towers, worked out by hand (embeddings + layers * per-layer + final LayerNorm [+ projection]):
#   CLIP ViT-L/14 text, 12 x 768, MLP 3072:
#     49408*768 + 77*768 + 12*(4*(768*768+768) + 2*768*3072+3072+768 + 4*768) + 2*768 = 123,060,480
#   OpenCLIP ViT-H/14 text as diffusers keeps it (23 of 24 layers), 1024 wide, MLP 4096:
#     49408*1024 + 77*1024 + 23*(4*(1024^2+1024) + 2*1024*4096+4096+1024 + 4*1024) + 2*1024 = 340,387,840
#   OpenCLIP ViT-bigG/14 text, 32 x 1280, MLP 5120, plus a 1280x1280 bias-free projection:
#     49408*1280 + 77*1280 + 32*(4*(1280^2+1280) + 2*1280*5120+5120+1280 + 4*1280) + 2*1280
#     + 1280*1280 = 694,659,840
UNET_SD1 = 859_520_964
UNET_SD2 = 865_910_724
UNET_SDXL = 2_567_463_684
VAE = 83_653_863
CLIP_L = 123_060_480
OPENCLIP_H_23 = 340_387_840
OPENCLIP_BIGG = 694_659_840

EXPECTED_PARAMS = {
    "sd1": {"unet": UNET_SD1, "vae": VAE, "text_encoder": CLIP_L},
    "sd2": {"unet": UNET_SD2, "vae": VAE, "text_encoder": OPENCLIP_H_23},
    "sd2-base": {"unet": UNET_SD2, "vae": VAE, "text_encoder": OPENCLIP_H_23},
    "sdxl": {"unet": UNET_SDXL, "vae": VAE, "text_encoder": CLIP_L, "text_encoder_2": OPENCLIP_BIGG},
}

# folder -> tokenizer subfolder -> pad id
PAD_IDS = {
    "sd1": {"tokenizer": 49407},
    "sd2": {"tokenizer": 0},
    "sd2-base": {"tokenizer": 0},
    "sdxl": {"tokenizer": 49407, "tokenizer_2": 0},
}

PIPELINE_CLASS = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sd2-base": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
}

FAMILIES = sorted(EXPECTED_PARAMS)
A_PHOTO_OF_A_CAT = [49406, 320, 1125, 539, 320, 2368, 49407]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def model_index(family: str) -> dict:
    return read_json(CONFIG_ROOT / family / "model_index.json")


def components(family: str) -> dict[str, tuple[str, str]]:
    """The (library, class) pairs of model_index.json that name a real component."""
    out = {}
    for name, value in model_index(family).items():
        if name.startswith("_") or not isinstance(value, list):
            continue
        if value[0] is None:
            continue
        out[name] = (value[0], value[1])
    return out


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_on_meta(family: str, name: str) -> torch.nn.Module:
    import diffusers
    import transformers

    library, class_name = components(family)[name]
    folder = CONFIG_ROOT / family / name
    with torch.device("meta"):
        if library == "diffusers":
            cls = getattr(diffusers, class_name)
            return cls.from_config(cls.load_config(folder))
        cls = getattr(transformers, class_name)
        return cls(cls.config_class.from_pretrained(folder, local_files_only=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_listed_component_has_a_folder(family):
    index = model_index(family)
    assert index["_class_name"] == PIPELINE_CLASS[family]
    comps = components(family)
    assert set(comps) >= {"scheduler", "text_encoder", "tokenizer", "unet", "vae"}
    for name, (library, class_name) in comps.items():
        folder = CONFIG_ROOT / family / name
        assert folder.is_dir(), f"{family}: {name} is listed but {folder} is missing"
        if name.startswith("tokenizer"):
            for f in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
                assert (folder / f).is_file(), f"{family}/{name}/{f} missing"
        elif name == "scheduler":
            assert read_json(folder / "scheduler_config.json")["_class_name"] == class_name
        else:
            config = read_json(folder / "config.json")
            if library == "diffusers":
                assert config["_class_name"] == class_name
            else:
                assert config["architectures"] == [class_name]
    # no weights in these folders, only configs and tokenizer data
    for path in (CONFIG_ROOT / family).rglob("*"):
        if path.is_file():
            assert path.suffix in {".json", ".txt"}, path


@pytest.mark.parametrize("family", FAMILIES)
def test_sd1_and_sd2_have_no_safety_checker(family):
    index = model_index(family)
    assert index.get("feature_extractor", [None, None]) == [None, None]
    if index["_class_name"] == "StableDiffusionPipeline":
        assert index["safety_checker"] == [None, None]
        assert index["requires_safety_checker"] is False


@pytest.mark.parametrize(
    "family,name",
    [(family, name) for family in FAMILIES for name in EXPECTED_PARAMS[family]],
)
def test_parameter_counts(family, name):
    model = build_on_meta(family, name)
    assert count_params(model) == EXPECTED_PARAMS[family][name]


@pytest.mark.parametrize("family", FAMILIES)
def test_configs_load_with_their_classes(family):
    import diffusers
    import transformers

    pipeline_cls = getattr(diffusers, PIPELINE_CLASS[family])
    config = pipeline_cls.load_config(CONFIG_ROOT / family)
    assert config["_class_name"] == PIPELINE_CLASS[family]
    diffusers.DiffusionPipeline.load_config(CONFIG_ROOT / family)

    for name, (library, class_name) in components(family).items():
        folder = CONFIG_ROOT / family / name
        if library == "diffusers":
            cls = getattr(diffusers, class_name)
            cfg = cls.load_config(folder)
            if name == "scheduler":
                scheduler = cls.from_config(cfg)
                assert scheduler.config.num_train_timesteps == 1000
        elif name.startswith("tokenizer"):
            getattr(transformers, class_name).from_pretrained(folder)
        else:
            cfg = transformers.CLIPTextConfig.from_pretrained(folder)
            assert cfg.vocab_size == 49408 and cfg.max_position_embeddings == 77


def test_family_specific_values():
    def cfg(family, name, file="config.json"):
        return read_json(CONFIG_ROOT / family / name / file)

    sched = {f: cfg(f, "scheduler", "scheduler_config.json") for f in FAMILIES}
    for f in FAMILIES:
        s = sched[f]
        assert (s["beta_start"], s["beta_end"], s["beta_schedule"]) == (0.00085, 0.012, "scaled_linear")
        assert s["num_train_timesteps"] == 1000 and s["steps_offset"] == 1
    assert sched["sd1"]["_class_name"] == "PNDMScheduler"
    assert sched["sd1"]["skip_prk_steps"] is True and sched["sd1"]["set_alpha_to_one"] is False
    assert sched["sd1"]["prediction_type"] == "epsilon"
    assert sched["sd2"]["prediction_type"] == "v_prediction"
    assert sched["sd2-base"]["prediction_type"] == "epsilon"
    assert sched["sdxl"]["_class_name"] == "EulerDiscreteScheduler"
    assert sched["sdxl"]["timestep_spacing"] == "leading"

    assert cfg("sd1", "unet")["sample_size"] == 64
    assert cfg("sd2", "unet")["sample_size"] == 96
    assert cfg("sd2-base", "unet")["sample_size"] == 64
    assert cfg("sdxl", "unet")["sample_size"] == 128
    for f in ("sd2", "sd2-base"):
        assert cfg(f, "unet")["use_linear_projection"] is True
        assert cfg(f, "unet")["attention_head_dim"] == [5, 10, 20, 20]
        assert cfg(f, "text_encoder")["hidden_act"] == "gelu"
        assert cfg(f, "text_encoder")["num_hidden_layers"] == 23
    assert cfg("sd1", "text_encoder")["hidden_act"] == "quick_gelu"

    unet = cfg("sdxl", "unet")
    assert unet["addition_embed_type"] == "text_time"
    assert unet["addition_time_embed_dim"] == 256
    assert unet["projection_class_embeddings_input_dim"] == 2816
    assert unet["transformer_layers_per_block"] == [1, 2, 10]
    assert unet["cross_attention_dim"] == 2048
    vae = cfg("sdxl", "vae")
    assert vae["scaling_factor"] == 0.13025 and vae["force_upcast"] is True
    for f in ("sd1", "sd2", "sd2-base"):
        assert cfg(f, "vae")["scaling_factor"] == 0.18215
    assert model_index("sdxl")["force_zeros_for_empty_prompt"] is True


@pytest.mark.parametrize(
    "family,name",
    [(family, name) for family in FAMILIES for name in PAD_IDS[family]],
)
def test_tokenizers(family, name):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(CONFIG_ROOT / family / name)
    assert len(tok) == 49408
    assert tok.model_max_length == 77
    assert tok.bos_token_id == 49406 and tok.eos_token_id == 49407
    assert tok("a photo of a cat").input_ids == A_PHOTO_OF_A_CAT
    padded = tok("a photo of a cat", padding="max_length", max_length=tok.model_max_length).input_ids
    pad_id = PAD_IDS[family][name]
    assert tok.pad_token_id == pad_id
    assert padded == A_PHOTO_OF_A_CAT + [pad_id] * (77 - len(A_PHOTO_OF_A_CAT))
    long = tok("cat " * 100, truncation=True, max_length=77).input_ids
    assert len(long) == 77 and long[0] == 49406 and long[-1] == 49407


def test_tokenizer_data_is_shared():
    """Every tokenizer folder holds the same vocabulary and merges (only the pad token differs)."""
    folders = [CONFIG_ROOT / f / n for f in FAMILIES for n in PAD_IDS[f]]
    for file in ("vocab.json", "merges.txt"):
        contents = {(folder / file).read_bytes() for folder in folders}
        assert len(contents) == 1, f"{file} differs between tokenizer folders"
    vocab = read_json(folders[0] / "vocab.json")
    assert len(vocab) == 49408
    assert vocab["!"] == 0 and vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    merges = (folders[0] / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 48894
