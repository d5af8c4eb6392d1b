"""Tiling: seamless textures. For one job, every convolution of the UNet and the VAE pads
circularly, so the picture's left edge continues its right edge and its top its bottom."""

from __future__ import annotations

import contextlib

import torch

from engine.extensions import Extension, Field


@contextlib.contextmanager
def circular_padding(*modules: torch.nn.Module):
    """Switch every Conv2d inside `modules` to circular padding; put each back on exit.

    The modules are shared with every pipeline made by from_pipe, so restoring them, on error
    too, is what keeps the change inside this job.
    """
    convs = [m for module in modules if module is not None for m in module.modules()
             if isinstance(m, torch.nn.Conv2d)]
    before = [conv.padding_mode for conv in convs]
    try:
        for conv in convs:
            conv.padding_mode = "circular"
        yield
    finally:
        for conv, mode in zip(convs, before):
            conv.padding_mode = mode


class Tiling(Extension):
    name = "tiling"
    title = "Tiling"
    order = 10
    modes = ("txt2img", "img2img")
    fields = (Field("enabled", "Tiling (a seamless, repeatable texture)", False),)
    description = "Pads the model's convolutions circularly so the picture tiles without seams."

    def patch(self, pipe, request, options):
        return circular_padding(pipe.unet, pipe.vae)

    def infotext(self, request, options):
        return {"Tiling": True}


extension = Tiling()
