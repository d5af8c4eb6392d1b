"""Tiny live-preview decoder files, written as the published ones are: a TAESD decoder in the
layout of madebyollin/taesd's `taesd_decoder.pth` (the state dict of one nn.Sequential whose
layer 0 is the weightless tanh clamp), built from a tiny diffusers AutoencoderTiny; and an
Approx NN model in the layout of the web UI's `model.pt` (conv1 ... conv8)."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from diffusers import AutoencoderTiny
from torch import nn

# The web UI's VAEApprox: (in, out, kernel) of conv1 ... conv8.
APPROX_NN_SHAPES = ((4, 8, 7), (8, 16, 5), (16, 32, 3), (32, 64, 3), (64, 32, 3), (32, 16, 3), (16, 8, 3), (8, 3, 3))


def tiny_taesd(seed: int = 0, blocks: tuple[int, ...] = (2, 1, 1, 1), channels: int = 8) -> AutoencoderTiny:
    """A seeded AutoencoderTiny with few channels (the published one has 64 and blocks 3, 3, 3, 1)."""
    torch.manual_seed(seed)
    model = AutoencoderTiny(encoder_block_out_channels=(channels,) * 4, decoder_block_out_channels=(channels,) * 4,
                            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=blocks)
    with torch.no_grad():  # pixels around mid-grey with some spread, not all clamped to black
        last = model.decoder.layers[-1]
        last.weight.mul_(6.0)
        last.bias.copy_(0.5 + 0.1 * torch.randn(last.bias.shape))
    return model.eval().requires_grad_(False)


def published_taesd_decoder_state(model: AutoencoderTiny) -> dict[str, torch.Tensor]:
    """The decoder's weights keyed as in taesd_decoder.pth: DecoderTiny's layers[i] is the
    published Sequential's layer i + 1 (layer 0 there is the clamp, which DecoderTiny does in
    its forward)."""
    state = {}
    for key, value in model.decoder.state_dict().items():
        index, rest = key.removeprefix("layers.").split(".", 1)
        state[f"{int(index) + 1}.{rest}"] = value.clone()
    return state


def published_taesd_sequential(state: dict[str, torch.Tensor]) -> nn.Sequential:
    """madebyollin/taesd's decoder architecture (Clamp, conv, ReLU, then blocks, upsamplings and
    convs), shaped by `state`: a file it loads into strictly is in the published layout."""

    class Clamp(nn.Module):
        def forward(self, x):
            return torch.tanh(x / 3) * 3

    class Block(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(width, width, 3, padding=1))
            self.skip, self.fuse = nn.Identity(), nn.ReLU()

        def forward(self, x):
            return self.fuse(self.conv(x) + self.skip(x))

    first = state["1.weight"]
    width, count = first.shape[0], 1 + max(int(key.split(".")[0]) for key in state)
    layers: list[nn.Module] = [Clamp(), nn.Conv2d(first.shape[1], width, 3, padding=1), nn.ReLU()]
    for index in range(3, count):
        if f"{index}.conv.0.weight" in state:
            layers.append(Block(width))
        elif index == count - 1:
            layers.append(nn.Conv2d(width, state[f"{index}.weight"].shape[0], 3, padding=1))
        elif f"{index}.weight" in state:
            layers.append(nn.Conv2d(width, width, 3, padding=1, bias=False))
        else:
            layers.append(nn.Upsample(scale_factor=2))
    sequential = nn.Sequential(*layers)
    sequential.load_state_dict(state, strict=True)
    return sequential.eval()


def approx_nn_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded weights in the web UI's VAEApprox layout (its real size: about 50 000 numbers)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for number, (inputs, outputs, kernel) in enumerate(APPROX_NN_SHAPES, start=1):
        fan_in = inputs * kernel * kernel
        state[f"conv{number}.weight"] = torch.randn(outputs, inputs, kernel, kernel, generator=generator) / fan_in ** 0.5
        state[f"conv{number}.bias"] = torch.randn(outputs, generator=generator) * 0.1
    return state


def saved(state: dict[str, torch.Tensor]) -> bytes:
    """What torch.save writes for `state` (the published files are plain torch.save output)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def write(path: Path, state: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(saved(state))
    return path
