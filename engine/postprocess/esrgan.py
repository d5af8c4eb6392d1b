"""ESRGAN-family model upscalers (ESRGAN, Real-ESRGAN, their many community fine-tunes): the
RRDBNet architecture, written here, and reading its weight files in both key layouts users have.

The "new" layout (Real-ESRGAN) names layers conv_first, body.N.rdbK.convJ, conv_body, conv_up1,
conv_up2, conv_hr, conv_last; the "old" one (original ESRGAN) numbers them model.0,
model.1.sub.N.RDBK.convJ.0, model.3, model.6, model.8 and so on. Everything about the network
(width, depth, scale) is read from the tensors' shapes.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from engine.errors import RequestError


class DenseBlock(nn.Module):
    """Five convolutions, each seeing every earlier output (a residual dense block)."""

    def __init__(self, feat: int, grow: int):
        super().__init__()
        for index in range(1, 6):
            out = feat if index == 5 else grow
            setattr(self, f"conv{index}", nn.Conv2d(feat + (index - 1) * grow, out, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for index in range(1, 5):
            features.append(F.leaky_relu(getattr(self, f"conv{index}")(torch.cat(features, 1)), 0.2))
        return x + 0.2 * self.conv5(torch.cat(features, 1))


class RRDB(nn.Module):
    def __init__(self, feat: int, grow: int):
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = DenseBlock(feat, grow), DenseBlock(feat, grow), DenseBlock(feat, grow)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """x4 (two nearest x2 upsamplings); x2 and x1 models take a pixel-unshuffled input."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, feat: int = 64, blocks: int = 23,
                 grow: int = 32, scale: int = 4):
        super().__init__()
        self.scale = scale
        self.conv_first = nn.Conv2d(in_ch, feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(feat, grow) for _ in range(blocks)])
        self.conv_body = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(feat, out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale in (1, 2):
            x = F.pixel_unshuffle(x, 4 // self.scale)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


_OLD_BODY = re.compile(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_OLD_TOP = {"model.0": "conv_first", "model.3": "conv_up1", "model.6": "conv_up2",
            "model.8": "conv_hr", "model.10": "conv_last"}


def to_new_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old ESRGAN keys renamed to the Real-ESRGAN layout (new-layout files pass through)."""
    if "conv_first.weight" in state:
        return {k.removeprefix("module."): v for k, v in state.items()}
    out = {}
    body_count = 1 + max((int(m.group(1)) for k in state if (m := _OLD_BODY.match(k))), default=-1)
    for key, value in state.items():
        if match := _OLD_BODY.match(key):
            block, rdb, conv, kind = match.groups()
            out[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = value
        elif key.startswith(f"model.1.sub.{body_count}."):
            out["conv_body." + key.rsplit(".", 1)[1]] = value
        elif "." in key:
            prefix, kind = key.rsplit(".", 1)
            if prefix in _OLD_TOP:
                out[f"{_OLD_TOP[prefix]}.{kind}"] = value
    return out


def build_from_state(state: dict[str, torch.Tensor], name: str) -> RRDBNet:
    state = to_new_layout(state)
    try:
        first = state["conv_first.weight"]
        blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("body."))
        grow = state["body.0.rdb1.conv1.weight"].shape[0]
        out_ch = state["conv_last.weight"].shape[0]
    except (KeyError, ValueError) as error:
        raise RequestError(f"'{name}' is not an ESRGAN (RRDBNet) model this app can read "
                           f"(missing {error})", "upscaler") from error
    in_ch = first.shape[1]
    scale = {3: 4, 12: 2, 48: 1}.get(in_ch, 4)  # pixel-unshuffled inputs tell x2 and x1 apart
    model = RRDBNet(in_ch, out_ch, first.shape[0], blocks, grow, scale)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise RequestError(f"'{name}' does not match the RRDBNet layout: {str(error).splitlines()[0]}",
                           "upscaler") from error
    return model.eval()


def read_state(path: Path, field: str = "upscaler") -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or .pth file (a pickle is read with weights_only=True)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as error:  # a truncated or damaged file
            raise RequestError(f"'{path.name}' could not be read as .safetensors ({error})", field) from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise RequestError(f"'{path.name}' could not be read as plain weights ({error})", field) from error
    for key in ("params_ema", "params", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state
