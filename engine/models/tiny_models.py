"""Tiny, architecture-faithful Stable Diffusion models.

These models have the same component *types* and block layout as SD 1.x, SD 2.x and SDXL
(UNet2DConditionModel with cross-attention where the real model has it, a four-level
AutoencoderKL so the latent is 1/8 of the image, CLIP text encoder(s)), but only a few
thousand channels in total, so a 64x64 image takes a fraction of a second on a CPU.

They serve the app's ``--demo`` mode (no model download needed) and the tests. The weights are
random but reproducible: the same ``seed`` gives bit-identical weights.

This module is runtime code: it must not import gradio or pytest.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil

import torch

FAMILIES = ("sd1", "sd2", "sdxl")
# Besides the families: the SDXL refiner's layout, one (OpenCLIP bigG) text encoder and the five
# micro-conditioning numbers of aesthetic-score conditioning (tests/test_refiner.py).
SDXL_REFINER = "sdxl-refiner"
LAYOUTS = FAMILIES + (SDXL_REFINER,)

# The real CLIP BPE tokenizer has 49408 tokens.
REAL_CLIP_VOCAB_SIZE = 49408

# Image size the tiny models are configured for (UNet sample_size * VAE scale factor 8).
TINY_IMAGE_SIZE = 64

_PIPELINE_CLASS = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl-refiner": "StableDiffusionXLImg2ImgPipeline",
}

_SCHEDULER_CLASS = {
    # SD 1.5's repository ships PNDM, SD 2.x's DDIM, SDXL base's Euler.
    "sd1": "PNDMScheduler",
    "sd2": "DDIMScheduler",
    "sdxl": "EulerDiscreteScheduler",
    "sdxl-refiner": "EulerDiscreteScheduler",
}

# Component name -> (library, class name), per family.
COMPONENT_CLASSES = {
    "sd1": {
        "unet": ("diffusers", "UNet2DConditionModel"),
        "vae": ("diffusers", "AutoencoderKL"),
        "text_encoder": ("transformers", "CLIPTextModel"),
    },
    "sd2": {
        "unet": ("diffusers", "UNet2DConditionModel"),
        "vae": ("diffusers", "AutoencoderKL"),
        "text_encoder": ("transformers", "CLIPTextModel"),
    },
    "sdxl": {
        "unet": ("diffusers", "UNet2DConditionModel"),
        "vae": ("diffusers", "AutoencoderKL"),
        "text_encoder": ("transformers", "CLIPTextModel"),
        "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
    },
    "sdxl-refiner": {
        "unet": ("diffusers", "UNet2DConditionModel"),
        "vae": ("diffusers", "AutoencoderKL"),
        "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
    },
}

# Text encoder sizes.  SDXL's second (OpenCLIP bigG) encoder is wider than the first (CLIP-L)
# just as in the real model (1280 vs 768).  This is needed, not just faithful:
# diffusers' single-file loader picks the weights for each encoder by comparing the width of
# the position embedding in the file with the model's, so two encoders of the same width would
# both be loaded from the first encoder's weights.
_TE_HIDDEN = 32
_TE2_HIDDEN = 64
_TE2_PROJECTION = 48  # deliberately != _TE2_HIDDEN so a transposed projection cannot pass unnoticed
_TE_HEADS = 4
_TE_LAYERS = 3

_SDXL_TIME_EMBED_DIM = 8  # real: 256


def _check_family(family: str) -> None:
    if family not in LAYOUTS:
        raise ValueError(f"unknown model family {family!r}; expected one of {LAYOUTS}")


def _clip_text_config(vocab_size, hidden, hidden_act, projection_dim, architecture):
    return {
        "architectures": [architecture],
        "vocab_size": int(vocab_size),
        "hidden_size": hidden,
        "intermediate_size": 4 * hidden,
        "projection_dim": projection_dim,
        "num_hidden_layers": _TE_LAYERS,
        "num_attention_heads": _TE_HEADS,
        "max_position_embeddings": 77,
        "hidden_act": hidden_act,
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
        # The values of the real SD text encoder configs.  eos_token_id == 2 makes transformers
        # pool at the highest token id (argmax), which is <|endoftext|> for every CLIP tokenizer.
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    }


def _xl_unet(context_dim: int, time_numbers: int, transformer_layers) -> dict:
    """The SDXL-style UNet's own keys: no attention in the first level, linear projections, and
    the "text_time" added embedding (the pooled text embedding + `time_numbers` micro-conditioning
    numbers)."""
    return {
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "cross_attention_dim": context_dim,
        "attention_head_dim": [2, 4],
        "transformer_layers_per_block": transformer_layers,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": _SDXL_TIME_EMBED_DIM,
        "projection_class_embeddings_input_dim": time_numbers * _SDXL_TIME_EMBED_DIM + _TE2_PROJECTION,
    }


def tiny_component_configs(family: str, vocab_size: int = REAL_CLIP_VOCAB_SIZE,
                           vocab_size_2: int | None = None, unet_in_channels: int = 4) -> dict[str, dict]:
    """The config dicts of each model component of the tiny model of ``family``.

    Returns ``{"unet": ..., "vae": ..., "text_encoder": ...}`` plus ``"text_encoder_2"`` for
    ``sdxl``.  The UNet/VAE dicts are diffusers configs (``Class.from_config(d)``), the text
    encoder dicts are ``CLIPTextConfig(**d)`` keyword arguments; ``COMPONENT_CLASSES[family]``
    names the classes.  ``vocab_size`` (and ``vocab_size_2`` for SDXL's second encoder; it
    defaults to ``vocab_size``) must equal the length of the tokenizer used with the model.
    ``unet_in_channels=9`` makes a dedicated inpainting model (latents + mask + masked image).
    """
    _check_family(family)
    if vocab_size_2 is None:
        vocab_size_2 = vocab_size
    unet = {
        "sample_size": TINY_IMAGE_SIZE // 8,
        "in_channels": unet_in_channels,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "block_out_channels": [32, 64],
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 8,
        "norm_eps": 1e-5,
        "upcast_attention": False,
    }
    vae = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [8, 16, 16, 16],
        "layers_per_block": 2,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": 4,
        "sample_size": TINY_IMAGE_SIZE,
        "scaling_factor": 0.13025 if family.startswith("sdxl") else 0.18215,
        "force_upcast": True,
    }
    configs = {"unet": unet, "vae": vae}

    if family == "sd1":
        # SD 1.x: cross-attention in the first three of four levels, 8 heads, conv proj_in/out.
        unet.update({
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "cross_attention_dim": _TE_HIDDEN,
            "attention_head_dim": 8,
            "use_linear_projection": False,
        })
        configs["text_encoder"] = _clip_text_config(vocab_size, _TE_HIDDEN, "quick_gelu", _TE_HIDDEN, "CLIPTextModel")
    elif family == "sd2":
        # SD 2.x: same layout as 1.x, linear proj_in/out, a constant head width (64 real, 16 here).
        unet.update({
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "cross_attention_dim": _TE_HIDDEN,
            "attention_head_dim": [2, 4],
            "use_linear_projection": True,
        })
        configs["text_encoder"] = _clip_text_config(vocab_size, _TE_HIDDEN, "gelu", _TE_HIDDEN, "CLIPTextModel")
    elif family == "sdxl-refiner":
        # The refiner: context = the second encoder's hidden states alone, "text_time" with
        # five numbers (original size, crop, aesthetic score) besides the pooled embedding.
        unet.update(_xl_unet(_TE2_HIDDEN, time_numbers=5, transformer_layers=2))
        configs["text_encoder_2"] = _clip_text_config(
            vocab_size_2, _TE2_HIDDEN, "gelu", _TE2_PROJECTION, "CLIPTextModelWithProjection")
    else:
        # SDXL: no attention in the first level, several transformer layers deeper down,
        # context = both encoders' hidden states concatenated, "text_time" added embedding
        # (pooled text embedding + 6 micro-conditioning numbers).
        unet.update(_xl_unet(_TE_HIDDEN + _TE2_HIDDEN, time_numbers=6, transformer_layers=[1, 2]))
        # The first encoder is CLIP ViT-L (quick_gelu), the second OpenCLIP bigG (gelu).
        configs["text_encoder"] = _clip_text_config(vocab_size, _TE_HIDDEN, "quick_gelu", _TE_HIDDEN, "CLIPTextModel")
        configs["text_encoder_2"] = _clip_text_config(
            vocab_size_2, _TE2_HIDDEN, "gelu", _TE2_PROJECTION, "CLIPTextModelWithProjection")
    return configs


def tiny_scheduler_config(family: str, prediction_type: str = "epsilon") -> tuple[str, dict]:
    """``(scheduler class name, config dict)`` with the values of the real family's scheduler."""
    _check_family(family)
    common = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "trained_betas": None,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "prediction_type": prediction_type,
    }
    if family.startswith("sdxl"):
        common.update({
            "interpolation_type": "linear",
            "sample_max_value": 1.0,
            "timestep_spacing": "leading",
            "use_karras_sigmas": False,
        })
    return _SCHEDULER_CLASS[family], common


def _component_class(library: str, name: str):
    if library == "diffusers":
        import diffusers
        return getattr(diffusers, name)
    import transformers
    return getattr(transformers, name)


@torch.no_grad()
def _randomize_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every parameter a seeded random value (no parameter is left constant).

    Matrices and kernels get N(0, 1/fan_in) so activations keep a sane scale; 1-D weights
    (norm scales) get 1 + N(0, 0.1^2), biases N(0, 0.1^2).
    """
    for name, p in module.named_parameters():
        if p.ndim >= 2:
            fan_in = p[0].numel()
            value = torch.randn(p.shape, generator=generator) / math.sqrt(fan_in)
        elif p.ndim == 1 and name.endswith("weight"):
            value = 1.0 + 0.1 * torch.randn(p.shape, generator=generator)
        else:
            value = 0.1 * torch.randn(p.shape, generator=generator)
        p.copy_(value.to(p.dtype))


def build_tiny_components(family: str, vocab_size: int, vocab_size_2: int | None = None,
                          seed: int = 0, unet_in_channels: int = 4) -> dict[str, torch.nn.Module]:
    """The tiny model components of ``family`` with seeded random weights (float32)."""
    configs = tiny_component_configs(family, vocab_size, vocab_size_2, unet_in_channels)
    generator = torch.Generator().manual_seed(int(seed))
    components = {}
    # fork_rng keeps the default initialisers from disturbing the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            if name not in configs:
                continue
            library, class_name = COMPONENT_CLASSES[family][name]
            cls = _component_class(library, class_name)
            if library == "diffusers":
                model = cls.from_config(copy.deepcopy(configs[name]))
            else:
                from transformers import CLIPTextConfig
                model = cls(CLIPTextConfig(**configs[name]))
            _randomize_(model, generator)
            model.eval()
            components[name] = model
    return components


def build_scheduler(family: str, prediction_type: str = "epsilon"):
    import diffusers
    class_name, config = tiny_scheduler_config(family, prediction_type)
    return getattr(diffusers, class_name).from_config(config)


def build_tiny_pipeline(family: str, tokenizer, tokenizer_2=None, seed: int = 0,
                        torch_dtype: torch.dtype = torch.float32, prediction_type: str = "epsilon",
                        unet_in_channels: int = 4):
    """A ``StableDiffusionPipeline`` (sd1, sd2) or ``StableDiffusionXLPipeline`` (sdxl) with tiny,
    seeded random weights.  ``tokenizer_2`` (SDXL only) defaults to ``tokenizer``.
    With ``unet_in_channels=9`` the UNet is an inpainting one (export it; the pipeline class is
    the plain one)."""
    _check_family(family)
    import diffusers

    if family.startswith("sdxl") and tokenizer_2 is None:
        tokenizer_2 = tokenizer
    components = build_tiny_components(
        family, len(tokenizer) if tokenizer is not None else len(tokenizer_2),
        len(tokenizer_2) if tokenizer_2 is not None else None, seed=seed,
        unet_in_channels=unet_in_channels)
    if torch_dtype is not None and torch_dtype != torch.float32:
        for module in components.values():
            # nn.Module.to: diffusers' ModelMixin.to warns about "modules that should be kept in
            # float32: []" on every dtype cast in 0.42, although these models have none.
            torch.nn.Module.to(module, dtype=torch_dtype)
    scheduler = build_scheduler(family, prediction_type)
    if family == "sdxl-refiner":
        pipe = diffusers.StableDiffusionXLImg2ImgPipeline(
            vae=components["vae"], text_encoder=None, text_encoder_2=components["text_encoder_2"],
            tokenizer=None, tokenizer_2=tokenizer_2, unet=components["unet"], scheduler=scheduler,
            requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    elif family == "sdxl":
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=components["vae"],
            text_encoder=components["text_encoder"],
            text_encoder_2=components["text_encoder_2"],
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=components["unet"],
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
        )
    else:
        pipe = diffusers.StableDiffusionPipeline(
            vae=components["vae"],
            text_encoder=components["text_encoder"],
            tokenizer=tokenizer,
            unet=components["unet"],
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    return pipe


def _model_index(family: str) -> dict:
    import diffusers
    te = COMPONENT_CLASSES[family]
    index = {
        "_class_name": _PIPELINE_CLASS[family],
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "scheduler": ["diffusers", _SCHEDULER_CLASS[family]],
        "text_encoder": list(te.get("text_encoder", [None, None])),
        "tokenizer": ["transformers", "CLIPTokenizer"] if "text_encoder" in te else [None, None],
        "unet": list(te["unet"]),
        "vae": list(te["vae"]),
    }
    if family.startswith("sdxl"):
        index["force_zeros_for_empty_prompt"] = family == "sdxl"
        index["text_encoder_2"] = list(te["text_encoder_2"])
        index["tokenizer_2"] = ["transformers", "CLIPTokenizer"]
        if family == "sdxl-refiner":
            index["requires_aesthetics_score"] = True
    else:
        index["requires_safety_checker"] = False
        index["safety_checker"] = [None, None]
    return dict(sorted(index.items()))


def _write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def _full_diffusers_config(class_name: str, config: dict) -> dict:
    """The complete config diffusers would save for ``config`` (defaults filled in)."""
    cls = _component_class("diffusers", class_name)
    with torch.device("meta"):  # no memory, no initialisation work
        model = cls.from_config(copy.deepcopy(config))
    return json.loads(model.to_json_string())


def write_config_folder(family: str, dest_dir, tokenizer_dir, tokenizer_2_dir=None,
                        prediction_type: str = "epsilon") -> str:
    """Write a diffusers-layout, config-only folder describing the tiny model of ``family``.

    The folder has ``model_index.json``, ``scheduler/scheduler_config.json``,
    ``unet/config.json``, ``vae/config.json``, ``text_encoder/config.json`` and ``tokenizer/``
    (copied from ``tokenizer_dir``), plus ``text_encoder_2/`` and ``tokenizer_2/`` for SDXL
    (``tokenizer_2_dir`` defaults to ``tokenizer_dir``): what
    ``from_single_file(file, config=dest_dir)`` reads.  Returns ``dest_dir``.
    """
    _check_family(family)
    from transformers import CLIPTextConfig, CLIPTokenizer

    dest_dir = os.fspath(dest_dir)
    tokenizer_dir = os.fspath(tokenizer_dir)
    if family.startswith("sdxl") and tokenizer_2_dir is None:
        tokenizer_2_dir = tokenizer_dir
    vocab_size = len(CLIPTokenizer.from_pretrained(tokenizer_dir))
    vocab_size_2 = len(CLIPTokenizer.from_pretrained(os.fspath(tokenizer_2_dir))) if tokenizer_2_dir else None
    configs = tiny_component_configs(family, vocab_size, vocab_size_2)

    os.makedirs(dest_dir, exist_ok=True)
    _write_json(os.path.join(dest_dir, "model_index.json"), _model_index(family))

    import diffusers
    sched_name, sched_config = tiny_scheduler_config(family, prediction_type)
    scheduler = getattr(diffusers, sched_name).from_config(sched_config)
    _write_json(os.path.join(dest_dir, "scheduler", "scheduler_config.json"), json.loads(scheduler.to_json_string()))

    for name in ("unet", "vae"):
        class_name = COMPONENT_CLASSES[family][name][1]
        _write_json(os.path.join(dest_dir, name, "config.json"), _full_diffusers_config(class_name, configs[name]))

    for name, tok_dir in (("text_encoder", tokenizer_dir), ("text_encoder_2", tokenizer_2_dir)):
        if name not in configs:
            continue
        CLIPTextConfig(**configs[name]).save_pretrained(os.path.join(dest_dir, name))
        tok_dest = os.path.join(dest_dir, "tokenizer" if name == "text_encoder" else "tokenizer_2")
        shutil.copytree(os.fspath(tok_dir), tok_dest, dirs_exist_ok=True)
    return dest_dir


def build_demo_pipeline(tokenizer_dir):
    """The ``--demo`` model: the tiny SD 1.x pipeline, seed 0, with the tokenizer in ``tokenizer_dir``."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(os.fspath(tokenizer_dir))
    return build_tiny_pipeline("sd1", tokenizer, seed=0)
