"""Window attention pieces shared by the Swin-style upscalers (SwinIR, SCUNet).

Both cut the feature map into square windows, attend within each window with a learned bias
for every relative offset, and on every other block shift the map by half a window first
(cyclically), masking pairs that the shift brought together from opposite edges.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def relative_index(window: int) -> torch.Tensor:
    """(N, N) index into a (2w-1)^2 table of offsets, N = w*w: for positions p, q in a window,
    (dy + w - 1) * (2w - 1) + (dx + w - 1) with (dy, dx) = p - q."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    offsets = coords[:, :, None] - coords[:, None, :] + window - 1
    return offsets[0] * (2 * window - 1) + offsets[1]


def shift_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """(windows, N, N) bool, True where two positions of a shifted window came from different
    sides of the picture (the last window row and column hold the wrapped-around strip)."""
    split = window - shift  # within the last window: rows/columns before this are the original ones
    rows, cols = height // window, width // window
    inner = torch.arange(window)
    wrapped_row = (torch.arange(rows)[:, None] == rows - 1) & (inner[None, :] >= split)   # (rows, w)
    wrapped_col = (torch.arange(cols)[:, None] == cols - 1) & (inner[None, :] >= split)   # (cols, w)
    # Per window (r, c) and in-window position (i, j): which side it came from, vertically and across.
    side_y = wrapped_row[:, None, :, None].expand(rows, cols, window, window).reshape(rows * cols, -1)
    side_x = wrapped_col[None, :, None, :].expand(rows, cols, window, window).reshape(rows * cols, -1)
    return (side_y[:, :, None] != side_y[:, None, :]) | (side_x[:, :, None] != side_x[:, None, :])


def to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, window * window, C), windows in row order per picture."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def from_windows(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """The inverse of to_windows: (B * windows, N, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, height, width, c)


def window_attention(qkv: torch.Tensor, heads: int, bias: torch.Tensor,
                     mask: torch.Tensor | None) -> torch.Tensor:
    """Multi-head attention within windows. qkv: (B * windows, N, 3C) laid out as q, k, v each
    split into heads; bias: (heads, N, N); mask: (windows, N, N) additive, or None.
    Returns (B * windows, N, C), the heads concatenated."""
    count, tokens, triple = qkv.shape
    q, k, v = qkv.view(count, tokens, 3, heads, triple // 3 // heads).permute(2, 0, 3, 1, 4)
    extra = bias[None]
    if mask is not None:
        windows = mask.shape[0]
        extra = (bias[None] + mask[:, None]).repeat(count // windows, 1, 1, 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=extra.to(q.dtype))  # scale: head_dim ** -0.5
    return out.transpose(1, 2).reshape(count, tokens, triple // 3)


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str) -> torch.Tensor:
    """Pad the bottom and right edges up to a multiple of `multiple` (the caller crops after)."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
        return x
    if mode == "reflect" and (pad_h >= height or pad_w >= width):
        mode = "replicate"  # reflection needs more pixels than it adds
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
