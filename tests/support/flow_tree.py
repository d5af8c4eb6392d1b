"""A data folder as a FLUX.1 / SD 3.5 user has it, written from the tiny flow models: checkpoints in
models/Stable-diffusion in each published layout, text encoders in models/text_encoder, VAEs in
models/VAE, and a tiny config root (configs for the tiny widths; the real tokenizers and scheduler
configs copied from engine/models/model_configs). Test-only."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.flow_files import write_tiny_config_folder
from engine.models.tiny_flow_models import build_tiny_flow_components
from tests.support.flow_files import flux_keys, write_flow_file
from tests.support.flow_writers import encoder_state, single_file_state, to_fp8, write
from tests.support.ldm_export import vae_to_ldm

LAYOUTS = ("flux-dev", "flux-schnell", "sd3.5-large", "sd3.5-medium")


def write_config_root(tiny: dict, configs: Path) -> Path:
    """A config folder per layout in `tiny` (its tiny components by layout)."""
    for layout in tiny:
        write_tiny_config_folder(layout, tiny[layout], configs / layout)
    return configs


def write_flow_tree(root: Path, seed: int = 5) -> tuple[dict, Path]:
    """(the tiny components by layout, the config root) of the tree written under `root`:
    models/Stable-diffusion/ flux1-dev-aio (all-in-one), flux1-dev (transformer only, BFL keys),
    flux1-dev-fp8, sd3.5_medium_all (every part), sd3.5_large (MMDiT + VAE), flux1-depth-dev (no
    config kept); models/text_encoder/ clip_l, clip_g, t5xxl_fp16; models/VAE/ ae, sd_vae (4-channel)."""
    tiny = {layout: build_tiny_flow_components(layout, seed=seed) for layout in LAYOUTS}
    configs = write_config_root(tiny, root / "configs")
    ckpts, encoders, vaes = (root / "models" / name for name in ("Stable-diffusion", "text_encoder", "VAE"))
    dev, large, medium = tiny["flux-dev"], tiny["sd3.5-large"], tiny["sd3.5-medium"]
    write(single_file_state("flux", dev, ("clip_l", "t5xxl")), ckpts / "flux1-dev-aio.safetensors")
    write(single_file_state("flux", dev, vae=False, prefix=""), ckpts / "flux1-dev.safetensors")
    write(to_fp8(single_file_state("flux", dev, vae=False, prefix="")), ckpts / "flux1-dev-fp8.safetensors")
    write(single_file_state("sd3", medium, ("clip_l", "clip_g", "t5xxl")), ckpts / "sd3.5_medium_all.safetensors")
    write(single_file_state("sd3", large), ckpts / "sd3.5_large.safetensors")   # MMDiT + VAE, no encoders
    write_flow_file(ckpts / "flux1-depth-dev.safetensors", flux_keys(img_in_channels=128), prefix="")
    write(encoder_state(dev["text_encoder"]), encoders / "clip_l.safetensors")
    write(encoder_state(large["text_encoder_2"]), encoders / "clip_g.safetensors")
    write(encoder_state(dev["text_encoder_2"]), encoders / "t5xxl_fp16.safetensors")
    write(vae_to_ldm(dev["vae"]), vaes / "ae.safetensors")
    write({"decoder.conv_in.weight": torch.zeros(8, 4, 3, 3)}, vaes / "sd_vae.safetensors")
    return tiny, configs
