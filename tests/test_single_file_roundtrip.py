"""Tiny SD models survive a trip through the original single-file (LDM) checkpoint layout.

For each family a seeded tiny pipeline is exported as one A1111-style ``.safetensors`` file and
loaded back with diffusers' ``from_single_file(..., config=<local config folder>)`` fully
offline; every parameter and buffer must come back bit for bit.
"""

from __future__ import annotations

import os

import diffusers
import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import CLIPTokenizer

from engine.models.tiny_models import (
    FAMILIES,
    build_demo_pipeline,
    build_tiny_pipeline,
    tiny_component_configs,
    write_config_folder,
)
from tests.support.ldm_export import (
    export_single_file,
    ldm_state_dict,
    save_ldm_state_dict,
)
from tests.support.tiny_tokenizer import write_tiny_clip_tokenizer

MODEL_COMPONENTS = {
    "sd1": ("unet", "vae", "text_encoder"),
    "sd2": ("unet", "vae", "text_encoder"),
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2"),
}


def _pipeline_class(family):
    return diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {
        # SD 1.x and SDXL's first tokenizer pad with <|endoftext|>, SD 2.x and SDXL's second with "!".
        "eot": write_tiny_clip_tokenizer(root / "eot"),
        "bang": write_tiny_clip_tokenizer(root / "bang", pad_token="!"),
    }


class _Exported:
    def __init__(self, family, pipe, folder, path):
        self.family, self.pipe, self.folder, self.path = family, pipe, folder, path


@pytest.fixture(scope="module")
def exported(tokenizer_dirs, tmp_path_factory):
    """``exported(family)``: the tiny pipeline, its config folder and its single-file export
    (built once per family for the whole module)."""
    cache = {}

    def get(family):
        if family not in cache:
            root = tmp_path_factory.mktemp(family)
            tok_dir = tokenizer_dirs["bang" if family == "sd2" else "eot"]
            tok2_dir = tokenizer_dirs["bang"] if family == "sdxl" else None
            tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
            tokenizer_2 = CLIPTokenizer.from_pretrained(tok2_dir) if tok2_dir else None
            pipe = build_tiny_pipeline(family, tokenizer, tokenizer_2, seed=1234)
            pipe.set_progress_bar_config(disable=True)
            folder = write_config_folder(family, root / "config", tok_dir, tok2_dir)
            path = export_single_file(pipe, root / f"tiny-{family}.safetensors", family)
            cache[family] = _Exported(family, pipe, folder, path)
        return cache[family]

    return get


def _load_single_file(family, path, folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = _pipeline_class(family).from_single_file(
        os.fspath(path), config=os.fspath(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tensors(module):
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _mismatches(family, original, loaded):
    """Names of parameters/buffers of ``loaded`` that differ from ``original`` in any way."""
    bad = []
    for component in MODEL_COMPONENTS[family]:
        a, b = _tensors(getattr(original, component)), _tensors(getattr(loaded, component))
        if type(getattr(original, component)) is not type(getattr(loaded, component)):
            bad.append(f"{component}: class")
        for name in sorted(set(a) | set(b)):
            x, y = a.get(name), b.get(name)
            if (
                x is None or y is None
                or y.device.type == "meta"  # left uninitialised by the loader
                or x.dtype != y.dtype
                or x.shape != y.shape
                or not torch.equal(x, y)
            ):
                bad.append(f"{component}.{name}")
    return bad


def _generate(pipe, seed=7):
    return pipe(
        "a photo of a cat",
        negative_prompt="a dog",
        num_inference_steps=2,
        height=64,
        width=64,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images


def test_tiny_tokenizer_reads_and_encodes_ascii(tokenizer_dirs):
    tok = CLIPTokenizer.from_pretrained(tokenizer_dirs["eot"])
    assert tok.model_max_length == 77
    assert tok.convert_ids_to_tokens(tok("a photo of the cat").input_ids) == [
        "<|startoftext|>", "a</w>", "photo</w>", "of</w>", "the</w>", "cat</w>", "<|endoftext|>"]
    text = "".join(chr(c) for c in range(32, 127)) + "\tTabs\nand newlines"
    ids = tok(text).input_ids
    assert tok.unk_token_id not in ids[1:-1]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id == len(tok) - 1
    bang = CLIPTokenizer.from_pretrained(tokenizer_dirs["bang"])
    assert bang.pad_token == "!" and bang("cat", padding="max_length").input_ids[-1] == bang.convert_tokens_to_ids("!")


def test_same_seed_gives_identical_weights(tokenizer_dirs):
    tok = CLIPTokenizer.from_pretrained(tokenizer_dirs["eot"])
    torch.manual_seed(99)
    before = torch.rand(3)
    torch.manual_seed(99)
    a = build_tiny_pipeline("sdxl", tok, seed=5)
    assert torch.equal(torch.rand(3), before), "building must not disturb the global RNG"
    b = build_tiny_pipeline("sdxl", tok, seed=5)
    c = build_tiny_pipeline("sdxl", tok, seed=6)
    assert _mismatches("sdxl", a, b) == []
    different = _mismatches("sdxl", a, c)
    # A different seed changes every parameter (no parameter is left at a constant init).
    n_params = sum(len(list(getattr(a, m).parameters())) for m in MODEL_COMPONENTS["sdxl"])
    assert len(different) == n_params


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_configs_are_faithful_in_type(family, exported):
    pipe = exported(family).pipe
    unet = pipe.unet.config
    assert len(unet.block_out_channels) == 2 and pipe.vae_scale_factor == 8
    assert pipe.vae.config.latent_channels == 4
    assert pipe.vae.config.scaling_factor == (0.13025 if family == "sdxl" else 0.18215)
    if family == "sdxl":
        assert list(unet.down_block_types) == ["DownBlock2D", "CrossAttnDownBlock2D"]
        assert unet.addition_embed_type == "text_time"
        assert unet.cross_attention_dim == pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
        assert unet.projection_class_embeddings_input_dim == (
            6 * unet.addition_time_embed_dim + pipe.text_encoder_2.config.projection_dim)
        assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
        # diffusers' single-file loader tells SDXL's two encoders apart by their width.
        assert pipe.text_encoder_2.config.hidden_size != pipe.text_encoder.config.hidden_size
        assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
        assert pipe.scheduler.config.timestep_spacing == "leading"
    else:
        assert list(unet.down_block_types) == ["CrossAttnDownBlock2D", "DownBlock2D"]
        assert unet.use_linear_projection == (family == "sd2")
        assert pipe.text_encoder.config.hidden_act == ("quick_gelu" if family == "sd1" else "gelu")
        assert pipe.safety_checker is None and pipe.config.requires_safety_checker is False
    te = pipe.text_encoder.config
    assert (te.hidden_size, te.num_attention_heads, te.num_hidden_layers, te.max_position_embeddings) == (32, 4, 3, 77)
    assert te.vocab_size == len(pipe.tokenizer)
    cfg = tiny_component_configs(family, vocab_size=49408)
    assert cfg["text_encoder"]["vocab_size"] == 49408
    assert pipe.scheduler.config.prediction_type == "epsilon"
    # The config folder has the shape of a real diffusers repository.
    folder = exported(family).folder
    expected = ["model_index.json", "scheduler/scheduler_config.json", "unet/config.json", "vae/config.json",
                "text_encoder/config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
                "tokenizer/tokenizer_config.json"]
    if family == "sdxl":
        expected += ["text_encoder_2/config.json", "tokenizer_2/vocab.json"]
    for rel in expected:
        assert os.path.isfile(os.path.join(folder, rel)), rel


# Keys every real checkpoint of the family has (at tiny-model indices), and keys it must not have.
_LAYOUT = {
    "sd1": {
        "present": [
            "model.diffusion_model.time_embed.0.weight",
            "model.diffusion_model.input_blocks.0.0.weight",
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
            "model.diffusion_model.input_blocks.3.0.op.weight",
            "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
            "model.diffusion_model.middle_block.1.proj_in.weight",
            "model.diffusion_model.middle_block.2.out_layers.3.weight",
            "model.diffusion_model.output_blocks.2.1.conv.weight",
            "model.diffusion_model.output_blocks.5.1.proj_out.weight",
            "model.diffusion_model.out.2.weight",
            "first_stage_model.encoder.down.0.block.1.conv2.weight",
            "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
            "first_stage_model.encoder.mid.attn_1.q.weight",
            "first_stage_model.decoder.up.3.upsample.conv.weight",
            "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
            "first_stage_model.decoder.up.0.block.2.conv1.weight",
            "first_stage_model.post_quant_conv.weight",
            "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
            "cond_stage_model.transformer.text_model.embeddings.position_ids",
            "cond_stage_model.transformer.text_model.encoder.layers.2.mlp.fc2.weight",
            "cond_stage_model.transformer.text_model.final_layer_norm.weight",
        ],
        "absent": [
            "model.diffusion_model.input_blocks.6.0.op.weight",
            "first_stage_model.decoder.up.0.upsample.conv.weight",
            "first_stage_model.encoder.down.3.downsample.conv.weight",
            "model.diffusion_model.label_emb.0.0.weight",
        ],
        "shapes": {
            "first_stage_model.decoder.mid.attn_1.proj_out.weight": (16, 16, 1, 1),
            "model.diffusion_model.input_blocks.1.1.proj_in.weight": (32, 32, 1, 1),
            "cond_stage_model.transformer.text_model.embeddings.position_ids": (1, 77),
        },
    },
    "sd2": {
        "present": [
            "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
            "model.diffusion_model.output_blocks.2.1.conv.weight",
            "cond_stage_model.model.token_embedding.weight",
            "cond_stage_model.model.positional_embedding",
            "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_bias",
            "cond_stage_model.model.transformer.resblocks.2.mlp.c_proj.weight",
            "cond_stage_model.model.transformer.resblocks.3.ln_2.bias",  # the unused last layer
            "cond_stage_model.model.ln_final.weight",
            "cond_stage_model.model.text_projection",
            "cond_stage_model.model.logit_scale",
        ],
        "absent": ["cond_stage_model.transformer.text_model.final_layer_norm.weight",
                   "cond_stage_model.model.transformer.resblocks.4.ln_1.weight"],
        "shapes": {
            "model.diffusion_model.input_blocks.1.1.proj_in.weight": (32, 32),
            "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight": (96, 32),
        },
    },
    "sdxl": {
        "present": [
            "model.diffusion_model.label_emb.0.0.weight",
            "model.diffusion_model.label_emb.0.2.bias",
            "model.diffusion_model.input_blocks.3.0.op.weight",
            "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_v.weight",
            "model.diffusion_model.middle_block.1.transformer_blocks.1.ff.net.2.weight",
            "model.diffusion_model.output_blocks.2.2.conv.weight",
            "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
            "conditioner.embedders.1.model.positional_embedding",
            "conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_weight",
            "conditioner.embedders.1.model.text_projection",
            "conditioner.embedders.1.model.logit_scale",
        ],
        "absent": ["model.diffusion_model.input_blocks.1.1.proj_in.weight",
                   "model.diffusion_model.output_blocks.2.1.conv.weight",
                   "conditioner.embedders.1.model.transformer.resblocks.3.ln_1.weight"],
        "shapes": {
            "model.diffusion_model.label_emb.0.0.weight": (128, 96),
            "conditioner.embedders.1.model.text_projection": (64, 48),  # (width, embed_dim)
            "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (64, 96),
        },
    },
}


@pytest.mark.parametrize("family", FAMILIES)
def test_export_has_the_original_key_layout(family, exported):
    with safe_open(os.fspath(exported(family).path), "pt") as f:
        keys = set(f.keys())
        layout = _LAYOUT[family]
        missing = [k for k in layout["present"] if k not in keys]
        assert missing == []
        assert [k for k in layout["absent"] if k in keys] == []
        for k, shape in layout["shapes"].items():
            assert tuple(f.get_slice(k).get_shape()) == shape, k
    prefixes = {"sd1": ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."),
                "sd2": ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.model."),
                "sdxl": ("model.diffusion_model.", "first_stage_model.", "conditioner.embedders.0.transformer.text_model.",
                         "conditioner.embedders.1.model.")}[family]
    assert all(k.startswith(prefixes) for k in keys)
    assert not any(".down_blocks." in k or ".up_blocks." in k or "mid_block" in k for k in keys)


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_roundtrip_is_bit_exact(family, exported, monkeypatch):
    ex = exported(family)
    loaded = _load_single_file(family, ex.path, ex.folder, monkeypatch)
    assert type(loaded) is type(ex.pipe)
    assert _mismatches(family, ex.pipe, loaded) == []
    assert type(loaded.scheduler) is type(ex.pipe.scheduler)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}
    assert public(loaded.scheduler.config) == public(ex.pipe.scheduler.config)
    assert len(loaded.tokenizer) == len(ex.pipe.tokenizer)

    original_images = _generate(ex.pipe)
    loaded_images = _generate(loaded)
    assert original_images.shape == (1, 64, 64, 3)
    assert np.isfinite(original_images).all() and original_images.std() > 0
    assert np.array_equal(original_images, loaded_images)


def _swap(a, b):
    def mutate(state):
        state[a], state[b] = state[b], state[a]
    return mutate


def _drop(key):
    def mutate(state):
        del state[key]
    return mutate


def _rename(key, new_key):
    def mutate(state):
        state[new_key] = state.pop(key)
    return mutate


@pytest.mark.parametrize(
    "family,mutate",
    [
        ("sd1", _drop("cond_stage_model.transformer.text_model.encoder.layers.2.layer_norm2.bias")),
        ("sd1", _rename("model.diffusion_model.middle_block.1.norm.bias", "model.diffusion_model.middle_block.1.nrm.bias")),
        ("sd2", _swap("first_stage_model.decoder.up.1.block.0.conv1.weight",
                      "first_stage_model.decoder.up.2.block.0.conv1.weight")),
        ("sdxl", _swap("model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight",
                       "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight")),
        ("sdxl", _drop("conditioner.embedders.1.model.text_projection")),
    ],
    ids=["drop-clip-key", "misname-unet-key", "swap-vae-levels", "swap-transformer-layers", "drop-openclip-proj"],
)
def test_a_damaged_export_is_detected(family, mutate, exported, tmp_path, monkeypatch):
    """The bit-exact comparison above would catch an exporter that drops or misnames a key."""
    ex = exported(family)
    state = ldm_state_dict(ex.pipe, family)
    mutate(state)
    path = save_ldm_state_dict(state, tmp_path / "damaged.safetensors")
    try:
        loaded = _load_single_file(family, path, ex.folder, monkeypatch)
    except Exception:  # some damage makes diffusers' loader itself fail: detected as well
        return
    assert _mismatches(family, ex.pipe, loaded) != []


def test_prediction_type_is_a_parameter(tokenizer_dirs, tmp_path):
    tok = CLIPTokenizer.from_pretrained(tokenizer_dirs["bang"])
    pipe = build_tiny_pipeline("sd2", tok, prediction_type="v_prediction")
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    folder = write_config_folder("sd2", tmp_path / "cfg", tokenizer_dirs["bang"], prediction_type="v_prediction")
    scheduler = diffusers.DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    assert scheduler.config.prediction_type == "v_prediction"


def test_demo_pipeline_generates(tokenizer_dirs):
    pipe = build_demo_pipeline(tokenizer_dirs["eot"])
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe, diffusers.StableDiffusionPipeline)
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    images = pipe("a photo of a cat", num_inference_steps=2, height=64, width=64,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
    again = build_demo_pipeline(tokenizer_dirs["eot"])
    assert _mismatches("sd1", pipe, again) == []
