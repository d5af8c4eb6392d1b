"""Tiny upscaler networks (compact Real-ESRGAN, SwinIR, SCUNet) with weights drawn from a seed in
key order, so the same weights can be given to another implementation of the same layout."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engine.postprocess.upscaler_models.compact import CompactNet
from engine.postprocess.upscaler_models.scunet import SCUNet
from engine.postprocess.upscaler_models.swinir import SwinIR

TINY_SWINIR = dict(in_ch=3, embed_dim=16, depths=(2, 2), heads=(2, 2), window=4, mlp_ratio=2.0, scale=4,
                   upsampler="nearest+conv", three_conv=True, img_size=16)
TINY_SCUNET = dict(in_ch=3, depths=(2, 1, 1, 2, 1, 1, 2), dim=64)  # 64: one 32-channel head at the top
TINY_COMPACT = dict(in_ch=3, feat=16, convs=2, scale=4)


def seeded(model: nn.Module, seed: int, std: float) -> nn.Module:
    """Every parameter drawn from N(0, std) in sorted name order (LayerNorm scales around 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            param.copy_(torch.randn(param.shape, generator=generator) * std)
            if isinstance(_owner(model, name), nn.LayerNorm) and name.endswith("weight"):
                param.add_(1.0)
    return model.eval()


def _owner(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rsplit(".", 1)[0])


def tiny_swinir(seed: int = 0) -> SwinIR:
    return seeded(SwinIR(**TINY_SWINIR), seed, 0.05)


def tiny_scunet(seed: int = 0) -> SCUNet:
    return seeded(SCUNet(**TINY_SCUNET), seed, 0.02)


def tiny_compact(seed: int = 0, scale: int = 4) -> CompactNet:
    return seeded(CompactNet(**{**TINY_COMPACT, "scale": scale}), seed, 0.1)


def save_published_way(model: nn.Module, path: Path, wrapper: str | None) -> Path:
    """As the published files are: SwinIR under "params_ema", the v3 compact models under
    "params", SCUNet's as the bare state dict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    torch.save({wrapper: state} if wrapper else state, path)
    return path
