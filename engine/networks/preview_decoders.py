"""The small networks the "TAESD" and "Approx NN" live previews decode latents with, built from
the files the ecosystem's web UI uses (engine/models/preview_models.py finds and downloads them).

TAESD: the tiny autoencoder's decoder, run as diffusers' AutoencoderTiny decoder (DecoderTiny).
The published `taesd_decoder.pth` / `taesdxl_decoder.pth` are the state dict of one
nn.Sequential: [0] the tanh clamp (no weights), [1] the first conv, [2] ReLU, then the residual
blocks, upsamplings and convs. DecoderTiny does the clamp in its forward and starts its
`layers` at the first conv, so published layer i is DecoderTiny's layers[i - 1]. The diffusers
layout (`decoder.layers.N...`, AutoencoderTiny's own state dict) is read too. TAESD takes the
latents the UNet works in (already times the VAE's scaling factor: AutoencoderTiny's
scaling_factor is 1.0) and returns pixels in [-1, 1].

Approx NN: the web UI's VAEApprox, eight unpadded convolutions over the latents upscaled 2x and
padded by 11, each followed by a leaky ReLU (0.1); the output, in [-1, 1], is a quarter of the
image's size.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers.models.autoencoders.vae import DecoderTiny
from torch import nn
from torch.nn import functional

from engine.errors import CheckpointError

# VAEApprox's convolutions: (in, out, kernel). The padding of 11 is what the kernels take away.
APPROX_NN_LAYERS = ((4, 8, 7), (8, 16, 5), (16, 32, 3), (32, 64, 3), (64, 32, 3), (32, 16, 3), (16, 8, 3), (8, 3, 3))
APPROX_NN_PADDING = 11


class ApproxNN(nn.Module):
    """The web UI's VAEApprox, with its state-dict layout (conv1.weight ... conv8.bias)."""

    def __init__(self):
        super().__init__()
        for index, (inputs, outputs, kernel) in enumerate(APPROX_NN_LAYERS, start=1):
            self.add_module(f"conv{index}", nn.Conv2d(inputs, outputs, kernel))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = functional.interpolate(latents, (latents.shape[2] * 2, latents.shape[3] * 2))
        x = functional.pad(x, (APPROX_NN_PADDING,) * 4)
        for index in range(1, len(APPROX_NN_LAYERS) + 1):
            x = functional.leaky_relu(getattr(self, f"conv{index}")(x), 0.1)
        return x


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A weights file's tensors: .safetensors, or a pickled .pth/.pt opened with weights_only
    (tensors and plain containers only, never code)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a cut or foreign file: say which, whatever the reader raised
        raise CheckpointError(f"{path.name} is not a readable weights file ({error})") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path.name} holds no state dict of tensors")
    return state


def approx_nn_from_state_dict(state: dict[str, torch.Tensor], name: str = "the file") -> ApproxNN:
    model = ApproxNN()
    _load_strict(model, state, name, "an Approx NN (VAEApprox) model")
    return model.eval().requires_grad_(False)


_DIFFUSERS_PREFIX = re.compile(r"^(?:decoder\.)?layers\.(\d+)\.(.+)$")
_PUBLISHED = re.compile(r"^(\d+)\.(.+)$")


def taesd_layers_state(state: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """The decoder's weights by DecoderTiny layer index, from either layout (encoder weights in
    a whole-autoencoder file are left out)."""
    layers: dict[int, dict[str, torch.Tensor]] = {}
    diffusers = any(key.startswith(("decoder.layers.", "layers.")) for key in state)
    for key, value in state.items():
        match = (_DIFFUSERS_PREFIX if diffusers else _PUBLISHED).match(key)
        if match is None:
            continue
        index = int(match.group(1)) - (0 if diffusers else 1)
        layers.setdefault(index, {})[match.group(2)] = value
    return layers


def taesd_decoder_from_state_dict(state: dict[str, torch.Tensor], name: str = "the file") -> DecoderTiny:
    """DecoderTiny shaped as the weights say (the published decoders: 64 channels, blocks
    3, 3, 3, 1; smaller ones read the same way), holding them."""
    layers = taesd_layers_state(state)
    what = "a TAESD decoder"
    if not layers or "weight" not in layers.get(0, {}) or layers[0]["weight"].ndim != 4:
        raise CheckpointError(f"{name} is not {what}: no first convolution")
    blocks: list[int] = []
    channels: list[int] = []
    count = 0
    for index in sorted(layers)[1:]:
        weights = layers[index]
        if "conv.0.weight" in weights:
            count += 1
        elif "weight" in weights:  # the conv that closes a stage
            blocks.append(count)
            channels.append(weights["weight"].shape[1])
            count = 0
    if not blocks or count:
        raise CheckpointError(f"{name} is not {what}: its layers are not blocks and convolutions")
    first = layers[0]["weight"]
    last = layers[max(layers)]["weight"]
    decoder = DecoderTiny(in_channels=first.shape[1], out_channels=last.shape[0], num_blocks=tuple(blocks),
                          block_out_channels=tuple(channels), upsampling_scaling_factor=2, act_fn="relu",
                          upsample_fn="nearest")
    flat = {f"layers.{index}.{key}": value for index, weights in layers.items() for key, value in weights.items()}
    _load_strict(decoder, flat, name, what)
    return decoder.eval().requires_grad_(False)


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], name: str, what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        # torch's message starts with a header line; the lines after it name the keys and shapes.
        detail = " ".join(line.strip() for line in str(error).splitlines()[1:])[:300]
        raise CheckpointError(f"{name} is not {what} ({detail or error})") from error
