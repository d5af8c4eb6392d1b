"""The T2I style adapter (TencentARC's t2iadapter_style_sd14v1.pth) as a ControlNet unit model: a
picture's style given to the UNet as extra prompt tokens.

The unit's picture goes through CLIP ViT-L/14's vision encoder (the t2ia_style_clipvision
preprocessor; the extension's squash to 224 x 224, then CLIP's normalisation), whose last hidden
states (257 tokens, before the final norm) the adapter reads: it appends its learned style
queries, normalises, runs a few of CLIP's residual attention blocks over all of them, normalises
the queries' outputs and projects them to the text encoder's width. Those tokens (8 in the
released file) times the unit's weight are appended to the prompt's context at every UNet call in
the unit's window, on the positive half of the batch; the negative half gets zero tokens in their
place, so both halves keep one length (as the ControlNet extension does). ControlNets of other
units then see the same, longer context.

The file's tensor names are kept (`transformer_layes.N.attn.in_proj_weight`, `ln_pre`, `proj`...),
and the sizes are read from the shapes; the head count is the released adapter's (8).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from engine.controlnet.layouts import FIELD
from engine.errors import CheckpointError

MARKER = "style_embedding"
HEADS = 8
MODULE = "t2ia_style_clipvision"
_LAYER = re.compile(r"transformer_layes\.(\d+)\.")


def is_style_adapter(keys) -> bool:
    return MARKER in keys


def family_of_keys(shapes: dict) -> str:
    context = int(shapes["proj"][1])
    return {1024: "sd2", 2048: "sdxl"}.get(context, "sd1")


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _ResidualAttention(nn.Module):
    """CLIP's transformer block: self-attention then an MLP, each on a layer-normed input and added."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, width * 4), gelu=_QuickGELU(),
                                             c_proj=nn.Linear(width * 4, width)))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.ln_1(x)
        x = x + self.attn(normed, normed, normed, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class StyleAdapter(nn.Module):
    def __init__(self, width: int, context_dim: int, layers: int, tokens: int, heads: int = HEADS):
        super().__init__()
        self.transformer_layes = nn.Sequential(*[_ResidualAttention(width, heads) for _ in range(layers)])
        self.style_embedding = nn.Parameter(torch.zeros(1, tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, context_dim))
        self.config = SimpleNamespace(width=width, context_dim=context_dim, tokens=tokens, in_channels=3)

    @property
    def device(self) -> torch.device:
        return self.proj.device

    @property
    def dtype(self) -> torch.dtype:
        return self.proj.dtype

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """(N, tokens, context_dim) style tokens for CLIP vision hidden states (N, L, width)."""
        queries = self.style_embedding.expand(states.shape[0], -1, -1).to(states.dtype)
        x = self.transformer_layes(self.ln_pre(torch.cat([states, queries], dim=1)))
        return self.ln_post(x[:, -self.style_embedding.shape[1]:]) @ self.proj


def build(tensors: dict[str, torch.Tensor], name: str) -> StyleAdapter:
    """The adapter holding exactly the file's tensors (float32, on the CPU)."""
    try:
        _, tokens, width = tensors[MARKER].shape
        context = tensors["proj"].shape[1]
        layers = 1 + max(int(match.group(1)) for key in tensors if (match := _LAYER.match(key)))
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"'{name}' looks like a T2I style adapter but lacks its tensors ({error})",
                              FIELD) from error
    heads = HEADS if width % HEADS == 0 else 1
    with torch.device("meta"):
        adapter = StyleAdapter(int(width), int(context), layers, int(tokens), heads)
    try:
        adapter.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as error:
        raise CheckpointError(f"'{name}' does not match the T2I style adapter its tensors describe: "
                              f"{str(error).splitlines()[0][:300]}", FIELD) from error
    return adapter.float().eval()


def is_style(net) -> bool:
    return isinstance(net, StyleAdapter)


@torch.no_grad()
def style_tokens(adapter: StyleAdapter, encoder, processor, picture) -> torch.Tensor:
    """(1, tokens, context_dim) float32 on the CPU for a PIL picture: squashed to the encoder's
    square size (area), normalised as CLIP does, its last hidden states through the adapter."""
    import cv2

    side = int(encoder.config.image_size)
    rgb = cv2.resize(np.asarray(picture.convert("RGB")), (side, side), interpolation=cv2.INTER_AREA)
    pixels = processor(images=[rgb], return_tensors="pt").pixel_values.to(encoder.device, encoder.dtype)
    states = encoder(pixels).last_hidden_state.float().cpu()
    return adapter.float().cpu()(states)


def with_style(hidden: torch.Tensor, tokens: list[torch.Tensor], cfg: bool) -> torch.Tensor:
    """The context with each unit's weighted tokens appended: on the positive half when the batch
    is [negative, positive], zeros on the negative half."""
    batch = hidden.shape[0]
    for extra in tokens:
        rows = extra.to(hidden.device, hidden.dtype).expand(batch, -1, -1).clone()
        if cfg and batch % 2 == 0:
            rows[:batch // 2] = 0
        hidden = torch.cat([hidden, rows], dim=1)
    return hidden
