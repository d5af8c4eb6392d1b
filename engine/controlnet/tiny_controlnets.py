"""Tiny ControlNets for the demo model and the tests, and writing a ControlNet in lllyasviel's
original single-file layout (what most downloads look like), so the loaders in models.py are
exercised on the layout users have."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.controlnet.layouts import (
    CONFIG_ROOT,
    FAMILIES,
    FAMILY_LABELS,
    LDM_PREFIX,
    TIME_IDS,
    base_config,
    diffusers_to_ldm_keys,
    family_of_config,
    heads_like,
    union_heads,
)


def save_original_layout(controlnet, path: Path) -> None:
    """Write ``controlnet`` as one .safetensors in lllyasviel's original layout (control_model.*)."""
    from safetensors.torch import save_file

    state = controlnet.state_dict()
    names = diffusers_to_ldm_keys(state.keys())
    tensors = {LDM_PREFIX + names[k]: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _family_of_unet(unet) -> str:
    family = family_of_config(dict(unet.config))
    if family not in FAMILIES:
        raise ValueError(f"no ControlNet convention for an {FAMILY_LABELS[family]} UNet")
    return family


@torch.no_grad()
def build_tiny_controlnet(unet, seed: int = 0, conditioning_channels=(4, 8, 16, 32),
                          config_root: Path = CONFIG_ROOT, union_types: int = 0):
    """A ControlNet for ``unet`` (a tiny one from engine.models.tiny_models) with seeded random weights,
    float32 on the CPU.

    ``conditioning_channels`` are the hint encoder's widths (diffusers'
    ``conditioning_embedding_out_channels``); four of them downscale the image 8x like the VAE.
    Widths and depths follow ``unet``. What tensor shapes cannot show (norm groups, attention
    heads, SDXL's micro-conditioning width) follows the family's published config, so that a
    saved single file loads back to the same network with no config beside it. The zero
    convolutions get small non-zero weights: all-zero ones would make the control a no-op.
    `union_types` (SDXL): a ControlNet Union model of that many control types (8: ProMax), its
    control-type transformer as wide as the UNet's first level.
    """
    import diffusers
    from diffusers import ControlNetModel

    from engine.models.tiny_models import _randomize_

    family = _family_of_unet(unet)
    base = base_config(family, config_root)
    with torch.device("meta"):
        shaped = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(conditioning_channels),
                                           load_weights_from_unet=False)
    config = {k: v for k, v in dict(shaped.config).items() if not k.startswith("_")}
    widths = list(config["block_out_channels"])
    config.update(norm_num_groups=base["norm_num_groups"], num_attention_heads=None,
                  attention_head_dim=heads_like(base, widths))
    if family == "sdxl":
        pooled = (unet.config.projection_class_embeddings_input_dim
                  - TIME_IDS * unet.config.addition_time_embed_dim)
        time_dim = base["addition_time_embed_dim"]
        config.update(addition_time_embed_dim=time_dim,
                      projection_class_embeddings_input_dim=TIME_IDS * time_dim + pooled)
    model_class = ControlNetModel
    if union_types:
        config.update(num_control_type=union_types, num_trans_channel=widths[0], num_trans_layer=1,
                      num_proj_channel=widths[0], num_trans_head=union_heads(widths[0]))
        config.pop("mid_block_type", None)   # the Union class has no choice of middle block
        model_class = diffusers.ControlNetUnionModel
    generator = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = model_class.from_config(config)
    _randomize_(model, generator)
    for name, param in model.named_parameters():
        if name.startswith(("controlnet_down_blocks.", "controlnet_mid_block.", "spatial_ch_projs.")):
            param.mul_(0.3)  # small, as after little training, but not zero
        elif name.startswith("controlnet_cond_embedding.conv_out."):
            param.mul_(3.0)
        elif name.startswith("controlnet_cond_embedding.") and name.endswith("weight"):
            # Gain 2 keeps the image's signal alive through the hint encoder's SiLU chain;
            # plain 1/fan_in weights shrink it ~100x, leaving the control image no effect.
            param.mul_(2.0)
    return model.eval()
