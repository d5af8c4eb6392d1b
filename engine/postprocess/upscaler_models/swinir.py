"""SwinIR (Liang et al., 2021), written here so `SwinIR_4x.pth` (the SwinIR-L real-world x4 GAN
model the ecosystem names "SwinIR 4x") and the other published SwinIR files load without the
timm and basicsr libraries.

How it works: a convolution lifts the picture to features; groups of Swin transformer blocks
(window attention, every other block on half-window-shifted windows) refine them, each group
closed by a convolution and a residual; the upsampler turns them into the bigger picture.

Parameter and buffer names follow the reference implementation (conv_first, patch_embed.norm,
layers.N.residual_group.blocks.M.{norm1,attn,norm2,mlp}, layers.N.conv, norm, conv_after_body,
then the upsampler's layers), so its files load strictly. The configuration is read from the
shapes; see `swinir_from_state`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from engine.postprocess.upscaler_models.windows import (
    from_windows,
    pad_to_multiple,
    relative_index,
    shift_mask,
    to_windows,
    window_attention,
)

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # the training set's mean colour, taken off before the network
MASK_FILL = -100.0  # what the reference adds where a shifted window mixes opposite edges
FEATURES = 64       # width of the reconstruction layers, fixed in the reference


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, qkv_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_index(window))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        tokens = x.shape[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(tokens, tokens, self.heads).permute(2, 0, 1)
        return self.proj(window_attention(self.qkv(x), self.heads, bias, mask))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float,
                 qkv_bias: bool, img_size: int):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if shift:
            # Kept as the published files have it (the mask at the training size); forward
            # computes the mask for the size it is given.
            mask = shift_mask(img_size, img_size, window, shift)
            self.register_buffer("attn_mask", torch.zeros(mask.shape).masked_fill(mask, MASK_FILL))

    def forward(self, x: torch.Tensor, size: tuple[int, int], masks: dict) -> torch.Tensor:
        height, width = size
        batch, _, channels = x.shape
        h = self.norm1(x).view(batch, height, width, channels)
        mask = None
        if self.shift:
            h = torch.roll(h, (-self.shift, -self.shift), (1, 2))
            mask = masks[(height, width, self.window, self.shift)]
        h = from_windows(self.attn(to_windows(h, self.window), mask), self.window, height, width)
        if self.shift:
            h = torch.roll(h, (self.shift, self.shift), (1, 2))
        x = x + h.reshape(batch, height * width, channels)
        return x + self.mlp(self.norm2(x))


def _residual_conv(dim: int, three: bool) -> nn.Module:
    """'1conv': one 3x3 convolution; '3conv': a narrower 3x3, 1x1, 3x3 stack (the large models)."""
    if not three:
        return nn.Conv2d(dim, dim, 3, 1, 1)
    return nn.Sequential(nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2),
                         nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(0.2),
                         nn.Conv2d(dim // 4, dim, 3, 1, 1))


class ResidualGroup(nn.Module):
    def __init__(self, blocks: list[SwinBlock]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class RSTB(nn.Module):
    """Residual Swin Transformer block: a group of Swin blocks, a convolution, a residual."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float,
                 qkv_bias: bool, img_size: int, three_conv: bool):
        super().__init__()
        # A picture no bigger than a window has nothing to shift across (as in the reference).
        shift = window // 2 if img_size > window else 0
        self.residual_group = ResidualGroup([
            SwinBlock(dim, heads, window, shift if i % 2 else 0, mlp_ratio, qkv_bias, img_size)
            for i in range(depth)])
        self.conv = _residual_conv(dim, three_conv)

    def forward(self, x: torch.Tensor, size: tuple[int, int], masks: dict) -> torch.Tensor:
        h = x
        for block in self.residual_group.blocks:
            h = block(h, size, masks)
        batch, _, channels = h.shape
        image = h.transpose(1, 2).reshape(batch, channels, *size)
        return self.conv(image).flatten(2).transpose(1, 2) + x


class PatchNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)


class SwinIR(nn.Module):
    """`upsampler`: "nearest+conv" (real-world models), "pixelshuffle" (classical SR),
    "pixelshuffledirect" (lightweight SR) or "" (denoising and JPEG models, scale 1)."""

    def __init__(self, in_ch: int = 3, embed_dim: int = 240, depths=(6,) * 9, heads=(8,) * 9,
                 window: int = 8, mlp_ratio: float = 2.0, scale: int = 4, upsampler: str = "nearest+conv",
                 three_conv: bool = True, img_size: int = 64, img_range: float = 1.0,
                 patch_norm: bool = True, qkv_bias: bool = True):
        super().__init__()
        self.scale = scale if upsampler else 1
        self.window, self.upsampler, self.img_range = window, upsampler, img_range
        mean = RGB_MEAN if in_ch == 3 else (0.0,) * in_ch
        self.register_buffer("mean", torch.tensor(mean).view(1, in_ch, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(in_ch, embed_dim, 3, 1, 1)
        if patch_norm:
            self.patch_embed = PatchNorm(embed_dim)
        self.layers = nn.ModuleList(RSTB(embed_dim, depth, head, window, mlp_ratio, qkv_bias, img_size, three_conv)
                                    for depth, head in zip(depths, heads))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = _residual_conv(embed_dim, three_conv)
        self._build_upsampler(in_ch, embed_dim, scale)

    def _build_upsampler(self, out_ch: int, dim: int, scale: int) -> None:
        if self.upsampler in ("pixelshuffle", "nearest+conv"):
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, FEATURES, 3, 1, 1), nn.LeakyReLU())
        if self.upsampler == "pixelshuffle":
            steps = [(4, 2)] * int(math.log2(scale)) if scale & (scale - 1) == 0 else [(9, 3)]
            layers = []
            for channels, factor in steps:
                layers += [nn.Conv2d(FEATURES, channels * FEATURES, 3, 1, 1), nn.PixelShuffle(factor)]
            self.upsample = nn.Sequential(*layers)
            self.conv_last = nn.Conv2d(FEATURES, out_ch, 3, 1, 1)
        elif self.upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(dim, scale * scale * out_ch, 3, 1, 1), nn.PixelShuffle(scale))
        elif self.upsampler == "nearest+conv":
            self.conv_up1 = nn.Conv2d(FEATURES, FEATURES, 3, 1, 1)
            self.conv_up2 = nn.Conv2d(FEATURES, FEATURES, 3, 1, 1)
            self.conv_hr = nn.Conv2d(FEATURES, FEATURES, 3, 1, 1)
            self.conv_last = nn.Conv2d(FEATURES, out_ch, 3, 1, 1)
        else:
            self.conv_last = nn.Conv2d(dim, out_ch, 3, 1, 1)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        if hasattr(self, "patch_embed"):
            tokens = self.patch_embed.norm(tokens)
        masks = {}
        for layer in self.layers:
            for block in layer.residual_group.blocks:
                key = (height, width, block.window, block.shift)
                if block.shift and key not in masks:
                    mask = shift_mask(height, width, block.window, block.shift).to(x.device)
                    masks[key] = torch.zeros(mask.shape, device=x.device).masked_fill(mask, MASK_FILL)
            tokens = layer(tokens, (height, width), masks)
        return self.norm(tokens).transpose(1, 2).reshape(batch, channels, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        x = pad_to_multiple(x, self.window, "reflect")
        x = (x - self.mean) * self.img_range
        first = self.conv_first(x)
        body = self.conv_after_body(self._features(first)) + first
        if self.upsampler == "pixelshuffle":
            out = self.conv_last(self.upsample(self.conv_before_upsample(body)))
        elif self.upsampler == "pixelshuffledirect":
            out = self.upsample(body)
        elif self.upsampler == "nearest+conv":
            out = self.conv_before_upsample(body)
            out = F.leaky_relu(self.conv_up1(F.interpolate(out, scale_factor=2, mode="nearest")), 0.2)
            out = F.leaky_relu(self.conv_up2(F.interpolate(out, scale_factor=2, mode="nearest")), 0.2)
            out = self.conv_last(F.leaky_relu(self.conv_hr(out), 0.2))
        else:
            out = x + self.conv_last(body)
        out = out / self.img_range + self.mean
        return out[..., :height * self.scale, :width * self.scale]


def _count(state, prefix: str) -> int:
    """How many numbered children `prefix.N.` the keys hold."""
    found = {int(k[len(prefix):].split(".", 1)[0]) for k in state if k.startswith(prefix)}
    return max(found) + 1 if found else 0


def swinir_from_state(state: dict[str, torch.Tensor]) -> SwinIR:
    """The SwinIR a state dict describes, loaded strictly. KeyError/ValueError if it is not one."""
    first = state["conv_first.weight"]
    embed_dim, in_ch = first.shape[:2]
    layers = _count(state, "layers.")
    depths = [_count(state, f"layers.{i}.residual_group.blocks.") for i in range(layers)]
    heads = [state[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"].shape[1]
             for i in range(layers)]
    table = state["layers.0.residual_group.blocks.0.attn.relative_position_bias_table"].shape[0]
    window = (math.isqrt(table) + 1) // 2
    hidden = state["layers.0.residual_group.blocks.0.mlp.fc1.weight"].shape[0]
    upsampler, scale = _upsampler_of(state, in_ch)
    masks = [v for k, v in state.items() if k.endswith(".attn_mask")]
    img_size = math.isqrt(masks[0].shape[0]) * window if masks else 64
    model = SwinIR(in_ch, embed_dim, depths, heads, window, hidden / embed_dim, scale, upsampler,
                   three_conv="conv_after_body.4.weight" in state, img_size=img_size,
                   patch_norm="patch_embed.norm.weight" in state,
                   qkv_bias="layers.0.residual_group.blocks.0.attn.qkv.bias" in state)
    own = model.state_dict()
    # The index and mask buffers are derived, not learned: a file without them still loads.
    full = {**{k: v for k, v in own.items() if k.endswith(("relative_position_index", "attn_mask"))}, **state}
    model.load_state_dict(full, strict=True)
    return model.eval()


def _upsampler_of(state, in_ch: int) -> tuple[str, int]:
    if "conv_up1.weight" in state:
        return "nearest+conv", 4
    if "conv_before_upsample.0.weight" in state:
        convs = [state[k] for k in sorted(state) if k.startswith("upsample.") and k.endswith(".weight")]
        if len(convs) == 1 and convs[0].shape[0] == 9 * FEATURES:
            return "pixelshuffle", 3
        return "pixelshuffle", 2 ** len(convs)
    if "upsample.0.weight" in state:
        return "pixelshuffledirect", math.isqrt(state["upsample.0.weight"].shape[0] // in_ch)
    return "", 1
