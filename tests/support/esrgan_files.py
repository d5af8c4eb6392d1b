"""Tiny ESRGAN (RRDBNet) models with seeded weights, for upscaler tests."""

import torch

from engine.postprocess.esrgan import RRDBNet


def tiny_rrdbnet(scale: int = 4, seed: int = 0) -> RRDBNet:
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        model = RRDBNet(in_ch=3 * (4 // scale) ** 2 if scale < 4 else 3, feat=8, blocks=2, grow=4, scale=scale)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(0.5)
    return model.eval()
