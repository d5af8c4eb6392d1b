"""Tiny, architecture-faithful FLUX.1 and Stable Diffusion 3.x models.

The same component classes and block kinds as the real models (FluxTransformer2DModel with
double- and single-stream blocks, rotary axes and, for dev and Fill, the guidance embedder; Fill's
taking the masked picture and the mask beside the latents; SD3Transformer2DModel with joint
blocks, for SD 3.5 RMS q/k norms and, for 3.5 Medium, the second attention in its first blocks
(SD 3 Medium has neither); a 16-channel four-level AutoencoderKL without quant convs; CLIP-L,
CLIP-G with its projection, and a gated-GELU T5 encoder with T5's real vocabulary), at widths of
a few dozen channels. Weights are random but reproducible: the same seed gives bit-identical
weights (the SD families' tiny_models.py does the same, and its randomiser is shared).

SD 3.x keeps the real block counts (38 for Large, 24 for Medium, 13 of them with the second
attention in 3.5 Medium), since the family is told from the file by counting blocks; at 16 channels that is
still only a few hundred thousand weights.

Runtime code: it must not import gradio or pytest.
"""

from __future__ import annotations

import copy

import torch

from engine.models.tiny_models import REAL_CLIP_VOCAB_SIZE, _randomize_

FLUX_DEV, FLUX_SCHNELL, FLUX_FILL = "flux-dev", "flux-schnell", "flux-fill"
SD35_LARGE, SD35_MEDIUM, SD3_MEDIUM = "sd3.5-large", "sd3.5-medium", "sd3-medium"
FLOW_LAYOUTS = (FLUX_DEV, FLUX_SCHNELL, FLUX_FILL, SD35_LARGE, SD35_MEDIUM, SD3_MEDIUM)
REAL_T5_VOCAB_SIZE = 32128

# Widths: CLIP-L 32 (real 768), CLIP-G 64 with a 48 projection (real 1280 / 1280), T5 32 (4096).
_CLIP_L, _CLIP_G, _CLIP_G_PROJECTION, _T5 = 32, 64, 48, 32


def _clip_config(hidden: int, projection: int, hidden_act: str, architecture: str) -> dict:
    return {"architectures": [architecture], "vocab_size": REAL_CLIP_VOCAB_SIZE, "hidden_size": hidden,
            "intermediate_size": 4 * hidden, "projection_dim": projection, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 77, "hidden_act": hidden_act,
            "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}


def _t5_config() -> dict:
    # T5 v1.1 (the XXL encoder FLUX and SD3 use): gated GELU, no tied embeddings, relative buckets.
    return {"architectures": ["T5EncoderModel"], "vocab_size": REAL_T5_VOCAB_SIZE, "d_model": _T5,
            "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4, "feed_forward_proj": "gated-gelu",
            "dense_act_fn": "gelu_new", "is_gated_act": True, "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6, "tie_word_embeddings": False,
            "is_encoder_decoder": True, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}


def _vae_config(scaling_factor: float, shift_factor: float) -> dict:
    return {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [8, 16, 16, 16],
            "layers_per_block": 2, "act_fn": "silu", "latent_channels": 16, "norm_num_groups": 4,
            "sample_size": 64, "scaling_factor": scaling_factor, "shift_factor": shift_factor,
            "use_quant_conv": False, "use_post_quant_conv": False, "force_upcast": True}


def _flux_transformer_config(guidance: bool, fill: bool = False) -> dict:
    # 16 latent channels x 2x2 patches = 64 inputs, as the real model; 2 heads of 16 (real 24 x 128),
    # rotary axes summing to the head width as (16, 56, 56) does to 128. Fill packs the masked
    # picture's 16 latent channels and the mask's 8x8 = 64 pixel channels the same way beside
    # them: 64 + 64 + 256 = 384 inputs, 64 outputs, as the real Fill.
    config = {"patch_size": 1, "in_channels": 64, "num_layers": 1, "num_single_layers": 2,
              "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": _T5,
              "pooled_projection_dim": _CLIP_L, "guidance_embeds": guidance, "axes_dims_rope": [4, 6, 6]}
    if fill:
        config.update(in_channels=64 + 64 + 256, out_channels=64)
    return config


def _sd3_transformer_config(layers: int, dual_attention_layers: tuple[int, ...], qk_norm: str | None) -> dict:
    # Pooled input = CLIP-L's projection + CLIP-G's (real 768 + 1280), context = T5's width.
    # SD 3 Medium has neither the q/k norms nor the second attention SD 3.5 added.
    return {"sample_size": 8, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": layers,
            "attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": _T5,
            "caption_projection_dim": 16, "pooled_projection_dim": _CLIP_L + _CLIP_G_PROJECTION,
            "pos_embed_max_size": 16, "qk_norm": qk_norm, "dual_attention_layers": list(dual_attention_layers)}


# component -> (library, class name), per layout; the names are the diffusers folders' subfolders.
FLOW_COMPONENT_CLASSES = {
    "flux": {"transformer": ("diffusers", "FluxTransformer2DModel"), "vae": ("diffusers", "AutoencoderKL"),
             "text_encoder": ("transformers", "CLIPTextModel"), "text_encoder_2": ("transformers", "T5EncoderModel")},
    "sd3": {"transformer": ("diffusers", "SD3Transformer2DModel"), "vae": ("diffusers", "AutoencoderKL"),
            "text_encoder": ("transformers", "CLIPTextModelWithProjection"),
            "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
            "text_encoder_3": ("transformers", "T5EncoderModel")},
}


def _check_layout(layout: str) -> str:
    if layout not in FLOW_LAYOUTS:
        raise ValueError(f"unknown flow model layout {layout!r}; expected one of {FLOW_LAYOUTS}")
    return "flux" if layout.startswith("flux") else "sd3"


def tiny_flow_configs(layout: str) -> dict[str, dict]:
    """The config of each component of the tiny model of `layout` (diffusers configs for the
    transformer and VAE, transformers config keyword arguments for the text encoders)."""
    if _check_layout(layout) == "flux":
        return {"transformer": _flux_transformer_config(guidance=layout != FLUX_SCHNELL, fill=layout == FLUX_FILL),
                "vae": _vae_config(0.3611, 0.1159),
                "text_encoder": _clip_config(_CLIP_L, _CLIP_L, "quick_gelu", "CLIPTextModel"),
                "text_encoder_2": _t5_config()}
    layers, dual = (38, ()) if layout == SD35_LARGE else (24, () if layout == SD3_MEDIUM else tuple(range(13)))
    qk_norm = None if layout == SD3_MEDIUM else "rms_norm"
    return {"transformer": _sd3_transformer_config(layers, dual, qk_norm), "vae": _vae_config(1.5305, 0.0609),
            "text_encoder": _clip_config(_CLIP_L, _CLIP_L, "quick_gelu", "CLIPTextModelWithProjection"),
            "text_encoder_2": _clip_config(_CLIP_G, _CLIP_G_PROJECTION, "gelu", "CLIPTextModelWithProjection"),
            "text_encoder_3": _t5_config()}


def _build(library: str, class_name: str, config: dict) -> torch.nn.Module:
    if library == "diffusers":
        import diffusers
        return getattr(diffusers, class_name).from_config(copy.deepcopy(config))
    import transformers
    config_class = transformers.T5Config if class_name.startswith("T5") else transformers.CLIPTextConfig
    return getattr(transformers, class_name)(config_class(**config))


def build_tiny_flow_components(layout: str, seed: int = 0) -> dict[str, torch.nn.Module]:
    """The tiny components of `layout` ("flux-dev", "flux-schnell", "flux-fill", "sd3.5-large",
    "sd3.5-medium", "sd3-medium")
    with seeded random weights (float32), in eval mode."""
    family = _check_layout(layout)
    generator = torch.Generator().manual_seed(int(seed))
    components = {}
    # fork_rng keeps the default initialisers from disturbing the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for name, config in tiny_flow_configs(layout).items():
            model = _build(*FLOW_COMPONENT_CLASSES[family][name], config)
            _randomize_(model, generator)
            components[name] = model.eval()
    if family == "sd3":
        # SD 3's CLIP-L pooled output is taken unprojected (identity projection), which is also
        # what diffusers' single-file loader gives it whatever the file holds.
        with torch.no_grad():
            components["text_encoder"].text_projection.weight.copy_(torch.eye(_CLIP_L))
    return components
