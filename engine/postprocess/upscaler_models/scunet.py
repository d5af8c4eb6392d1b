"""SCUNet (Zhang et al., 2022), the real-photo denoiser the ecosystem offers as "ScuNET GAN" and
"ScuNET PSNR", written here so its published files load without timm and einops.

How it works: a U-Net of four levels; every block splits its features in two halves, one through
a small residual convolution stack, the other through a Swin transformer block (window attention,
every other block on half-window-shifted windows), and merges them again with 1x1 convolutions.
It keeps the picture's size (scale 1): it removes noise and compression, it does not enlarge.

Names follow the reference (m_head, m_down1..3, m_body, m_up3..1, m_tail; each block's conv1_1,
conv_block, trans_block.{ln1,msa,ln2,mlp}, conv1_2), so the files load strictly; the depth of each
stage and the width are read from the keys.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.postprocess.upscaler_models.windows import (
    from_windows,
    pad_to_multiple,
    relative_index,
    shift_mask,
    to_windows,
    window_attention,
)

HEAD_DIM = 32  # channels per attention head, fixed in the reference
WINDOW = 8
MULTIPLE = 64  # three halvings, then whole windows: sides must be multiples of 2**3 * 8


class WindowSelfAttention(nn.Module):
    def __init__(self, dim: int, shifted: bool):
        super().__init__()
        self.heads, self.shifted = dim // HEAD_DIM, shifted
        self.embedding_layer = nn.Linear(dim, 3 * dim)
        # Stored per head as a (2w-1) x (2w-1) grid of offsets (dy, dx).
        self.relative_position_params = nn.Parameter(torch.zeros(self.heads, 2 * WINDOW - 1, 2 * WINDOW - 1))
        self.register_buffer("index", relative_index(WINDOW), persistent=False)
        self.linear = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        shift = WINDOW // 2 if self.shifted else 0
        mask = None
        if shift:
            x = torch.roll(x, (-shift, -shift), (1, 2))
            blocked = shift_mask(height, width, WINDOW, shift).to(x.device)
            mask = torch.zeros(blocked.shape, device=x.device).masked_fill(blocked, float("-inf"))
        bias = self.relative_position_params.flatten(1)[:, self.index]
        out = window_attention(self.embedding_layer(to_windows(x, WINDOW)), self.heads, bias, mask)
        out = from_windows(self.linear(out), WINDOW, height, width)
        return torch.roll(out, (shift, shift), (1, 2)) if shift else out


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, shifted: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.msa = WindowSelfAttention(dim, shifted)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.msa(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ConvTransBlock(nn.Module):
    """Half the channels through convolutions, half through a transformer block, then merged."""

    def __init__(self, half: int, shifted: bool):
        super().__init__()
        self.half = half
        self.trans_block = TransformerBlock(half, shifted)
        self.conv1_1 = nn.Conv2d(2 * half, 2 * half, 1)
        self.conv1_2 = nn.Conv2d(2 * half, 2 * half, 1)
        self.conv_block = nn.Sequential(nn.Conv2d(half, half, 3, 1, 1, bias=False), nn.ReLU(),
                                        nn.Conv2d(half, half, 3, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv_x, trans_x = torch.split(self.conv1_1(x), self.half, dim=1)
        conv_x = self.conv_block(conv_x) + conv_x
        trans_x = self.trans_block(trans_x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.conv1_2(torch.cat((conv_x, trans_x), dim=1))


def _blocks(half: int, count: int) -> list[nn.Module]:
    return [ConvTransBlock(half, shifted=bool(i % 2)) for i in range(count)]


class SCUNet(nn.Module):
    """`depths`: blocks in down1, down2, down3, body, up3, up2, up1 (the published models: 4 each)."""

    def __init__(self, in_ch: int = 3, depths=(4,) * 7, dim: int = 64):
        super().__init__()
        self.scale = 1
        d1, d2, d3, body, u3, u2, u1 = depths
        self.m_head = nn.Sequential(nn.Conv2d(in_ch, dim, 3, 1, 1, bias=False))
        self.m_down1 = nn.Sequential(*_blocks(dim // 2, d1), nn.Conv2d(dim, 2 * dim, 2, 2, bias=False))
        self.m_down2 = nn.Sequential(*_blocks(dim, d2), nn.Conv2d(2 * dim, 4 * dim, 2, 2, bias=False))
        self.m_down3 = nn.Sequential(*_blocks(2 * dim, d3), nn.Conv2d(4 * dim, 8 * dim, 2, 2, bias=False))
        self.m_body = nn.Sequential(*_blocks(4 * dim, body))
        self.m_up3 = nn.Sequential(nn.ConvTranspose2d(8 * dim, 4 * dim, 2, 2, bias=False), *_blocks(2 * dim, u3))
        self.m_up2 = nn.Sequential(nn.ConvTranspose2d(4 * dim, 2 * dim, 2, 2, bias=False), *_blocks(dim, u2))
        self.m_up1 = nn.Sequential(nn.ConvTranspose2d(2 * dim, dim, 2, 2, bias=False), *_blocks(dim // 2, u1))
        self.m_tail = nn.Sequential(nn.Conv2d(dim, in_ch, 3, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        x1 = self.m_head(pad_to_multiple(x, MULTIPLE, "replicate"))
        x2 = self.m_down1(x1)
        x3 = self.m_down2(x2)
        x4 = self.m_down3(x3)
        h = self.m_body(x4)
        h = self.m_up3(h + x4)
        h = self.m_up2(h + x3)
        h = self.m_up1(h + x2)
        return self.m_tail(h + x1)[..., :height, :width]


def _depth(state, stage: str, first: int) -> int:
    """ConvTransBlocks in a stage: its children from `first` on that have a transformer block."""
    found = {int(k.split(".")[1]) for k in state if k.startswith(f"{stage}.") and ".trans_block." in k}
    return len(found) if found == set(range(first, first + len(found))) else -1


def scunet_from_state(state: dict[str, torch.Tensor]) -> SCUNet:
    """The SCUNet a state dict describes, loaded strictly. KeyError/ValueError if it is not one."""
    head = state["m_head.0.weight"]
    dim, in_ch = head.shape[:2]
    depths = tuple(_depth(state, stage, first) for stage, first in (
        ("m_down1", 0), ("m_down2", 0), ("m_down3", 0), ("m_body", 0), ("m_up3", 1), ("m_up2", 1), ("m_up1", 1)))
    if -1 in depths:
        raise ValueError(f"unexpected SCUNet block numbering (depths {depths})")
    model = SCUNet(in_ch, depths, dim)
    model.load_state_dict(state, strict=True)
    return model.eval()

