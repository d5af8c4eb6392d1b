"""SRVGGNetCompact (Real-ESRGAN's small network), written here so the "R-ESRGAN General 4xV3",
"General WDN 4xV3" and "AnimeVideo" files load without basicsr.

How it works: a plain stack of 3x3 convolutions, each followed by a PReLU, working at the small
size; the last one makes scale*scale times the colour channels, which a pixel shuffle turns into
the big picture, added to a nearest-neighbour enlargement (the network learns only the detail).

Keys follow the reference: body.0 (first conv), body.1 (its PReLU), body.2 ... and the last
convolution at body.{2 * convs + 2}; width, depth and scale are read from the shapes.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class CompactNet(nn.Module):
    def __init__(self, in_ch: int = 3, feat: int = 64, convs: int = 32, scale: int = 4):
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(in_ch, feat, 3, 1, 1), nn.PReLU(feat)]
        for _ in range(convs):
            layers += [nn.Conv2d(feat, feat, 3, 1, 1), nn.PReLU(feat)]
        layers.append(nn.Conv2d(feat, in_ch * scale * scale, 3, 1, 1))
        self.body = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return F.pixel_shuffle(out, self.scale) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def compact_from_state(state: dict[str, torch.Tensor]) -> CompactNet:
    """The network a state dict describes, loaded strictly. KeyError/ValueError if it is not one."""
    convs = sorted(int(k.split(".")[1]) for k, v in state.items()
                   if k.startswith("body.") and k.endswith(".weight") and v.ndim == 4)
    if not convs or state["body.1.weight"].ndim != 1:
        raise ValueError("not a compact (SRVGGNet) model with PReLU activations")
    first, last = state["body.0.weight"], state[f"body.{convs[-1]}.weight"]
    in_ch, feat = first.shape[1], first.shape[0]
    scale = math.isqrt(last.shape[0] // in_ch)
    model = CompactNet(in_ch, feat, len(convs) - 2, scale)
    model.load_state_dict(state, strict=True)
    return model.eval()
