"""GFPGAN (v1.2, v1.3, v1.4: the "clean" architecture), written here so its published weight
files load without the gfpgan/basicsr libraries (which need torchvision and download detector
weights on first use).

The network is a small U-Net over the 512x512 face whose bottleneck gives a StyleGAN2 style code
and whose up-path gives, at every resolution, a per-pixel scale and shift (spatial feature
transform) applied to the StyleGAN2 decoder's features. Channel widths, depth, style size and the
SFT variant are all read from the weight file's tensor shapes, so tiny test models load through
the very same code as the real 512px one.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

SQRT2 = math.sqrt(2.0)


def _bilinear(x: torch.Tensor, factor: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


class ResampleBlock(nn.Module):
    """Two convolutions around a bilinear x2 or x0.5 resize, with a 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, factor: float):
        super().__init__()
        self.factor = factor
        self.conv1 = nn.Conv2d(cin, cin, 3, 1, 1)
        self.conv2 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _bilinear(F.leaky_relu(self.conv1(x), 0.2), self.factor)
        return F.leaky_relu(self.conv2(out), 0.2) + self.skip(_bilinear(x, self.factor))


class ModulatedConv(nn.Module):
    """A convolution whose input channels are scaled per image by the style (StyleGAN2)."""

    def __init__(self, cin: int, cout: int, kernel: int, style_dim: int, demodulate: bool, upsample: bool):
        super().__init__()
        self.demodulate, self.upsample = demodulate, upsample
        self.modulation = nn.Linear(style_dim, cin)
        self.weight = nn.Parameter(torch.zeros(1, cout, cin, kernel, kernel))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        batch, cin = x.shape[:2]
        weight = self.weight * self.modulation(style).view(batch, 1, cin, 1, 1)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum((2, 3, 4), keepdim=True) + 1e-8)
        if self.upsample:
            x = _bilinear(x, 2)
        cout, kernel = weight.shape[1], weight.shape[-1]
        # One grouped convolution does every image of the batch with its own weights.
        out = F.conv2d(x.reshape(1, batch * cin, *x.shape[2:]),
                       weight.reshape(batch * cout, cin, kernel, kernel), padding=kernel // 2, groups=batch)
        return out.view(batch, cout, *out.shape[2:])


class StyleConv(nn.Module):
    def __init__(self, cin: int, cout: int, style_dim: int, upsample: bool):
        super().__init__()
        self.modulated_conv = ModulatedConv(cin, cout, 3, style_dim, True, upsample)
        self.weight = nn.Parameter(torch.zeros(1))  # how much noise is added
        self.bias = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        out = self.modulated_conv(x, style) * SQRT2 + self.weight * noise
        return F.leaky_relu(out + self.bias, 0.2)


class ToRGB(nn.Module):
    def __init__(self, cin: int, style_dim: int):
        super().__init__()
        self.modulated_conv = ModulatedConv(cin, 3, 1, style_dim, False, False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        out = self.modulated_conv(x, style) + self.bias
        return out if skip is None else out + _bilinear(skip, 2)


class ConstantInput(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, channels, 4, 4))


class StyleDecoder(nn.Module):
    """StyleGAN2's synthesis network, with the U-Net's scale/shift applied after each upsampling."""

    def __init__(self, widths: list[int], style_dim: int, mlp_layers: int, sft_half: bool):
        super().__init__()
        self.sft_half = sft_half
        # The mapping MLP is in the files, but the published models feed the U-Net's codes to the
        # decoder directly (they are already latents), so it is kept only to load the weights.
        mlp: list[nn.Module] = [nn.Identity()]
        for _ in range(mlp_layers):
            mlp += [nn.Linear(style_dim, style_dim), nn.LeakyReLU(0.2)]
        self.style_mlp = nn.Sequential(*mlp)
        self.constant_input = ConstantInput(widths[0])
        self.style_conv1 = StyleConv(widths[0], widths[0], style_dim, False)
        self.to_rgb1 = ToRGB(widths[0], style_dim)
        self.style_convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        for cin, cout in zip(widths, widths[1:]):
            self.style_convs.append(StyleConv(cin, cout, style_dim, True))
            self.style_convs.append(StyleConv(cout, cout, style_dim, False))
            self.to_rgbs.append(ToRGB(cout, style_dim))
        self.noises = nn.Module()
        for index in range(2 * len(widths) - 1):  # fixed noise: restoring the same face twice agrees
            side = 2 ** ((index + 5) // 2)
            self.noises.register_buffer(f"noise{index}", torch.zeros(1, 1, side, side))

    def forward(self, styles: torch.Tensor, conditions: list[torch.Tensor]) -> torch.Tensor:
        """`styles`: (batch, layers, style_dim), already mapped; `conditions`: scale, shift, ..."""
        noise = [getattr(self.noises, f"noise{i}") for i in range(2 * len(self.to_rgbs) + 1)]
        out = self.constant_input.weight.repeat(styles.shape[0], 1, 1, 1)
        out = self.style_conv1(out, styles[:, 0], noise[0])
        image = self.to_rgb1(out, styles[:, 1], None)
        for level, to_rgb in enumerate(self.to_rgbs):
            layer = 2 * level + 1
            out = self.style_convs[2 * level](out, styles[:, layer], noise[layer])
            scale, shift = conditions[2 * level], conditions[2 * level + 1]
            if self.sft_half:  # only the second half of the channels is modulated
                kept, changed = out.chunk(2, dim=1)
                out = torch.cat([kept, changed * scale + shift], dim=1)
            else:
                out = out * scale + shift
            out = self.style_convs[2 * level + 1](out, styles[:, layer + 1], noise[layer + 1])
            image = to_rgb(out, styles[:, layer + 2], image)
        return image


def _sft_branch(width: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(width, width, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(width, out, 3, 1, 1))


class GFPGAN(nn.Module):
    """`unet`: channel widths at 4, 8, ..., size px; `decoder`: the StyleGAN2 widths likewise.

    The defaults are those of the published GFPGANv1.3/1.4 files (512 px, channel multiplier 2).
    """

    def __init__(self, unet: list[int] | None = None, decoder: list[int] | None = None,
                 style_dim: int = 512, mlp_layers: int = 8, different_w: bool = True, sft_half: bool = True):
        super().__init__()
        decoder = decoder or [512, 512, 512, 512, 512, 256, 128, 64]
        unet = unet or [width // 2 for width in decoder]
        if len(unet) != len(decoder) or len(unet) < 2:
            raise ValueError("the U-Net and decoder need one width per resolution, 4 px and up")
        self.input_size = 4 * 2 ** (len(unet) - 1)
        self.style_dim, self.different_w = style_dim, different_w
        self.conv_body_first = nn.Conv2d(3, unet[-1], 1)
        self.conv_body_down = nn.ModuleList(
            ResampleBlock(unet[i], unet[i - 1], 0.5) for i in range(len(unet) - 1, 0, -1))
        self.final_conv = nn.Conv2d(unet[0], unet[0], 3, 1, 1)
        self.conv_body_up = nn.ModuleList(ResampleBlock(unet[i - 1], unet[i], 2) for i in range(1, len(unet)))
        self.toRGB = nn.ModuleList(nn.Conv2d(width, 3, 1) for width in unet[1:])  # noqa: N815 (the files' name)
        self.layers = 2 * len(unet)  # style codes the decoder reads: two per level, plus the first two
        self.final_linear = nn.Linear(unet[0] * 16, style_dim * (self.layers if different_w else 1))
        self.stylegan_decoder = StyleDecoder(decoder, style_dim, mlp_layers, sft_half)
        sft_out = [width if sft_half else 2 * width for width in unet[1:]]
        self.condition_scale = nn.ModuleList(_sft_branch(w, o) for w, o in zip(unet[1:], sft_out))
        self.condition_shift = nn.ModuleList(_sft_branch(w, o) for w, o in zip(unet[1:], sft_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 3, size, size) face in [-1, 1] -> the restored face, same range and size."""
        feat = F.leaky_relu(self.conv_body_first(x), 0.2)
        skips = []
        for block in self.conv_body_down:
            feat = block(feat)
            skips.insert(0, feat)
        feat = F.leaky_relu(self.final_conv(feat), 0.2)
        codes = self.final_linear(feat.flatten(1)).view(x.shape[0], -1, self.style_dim)
        conditions = []
        for skip, block, scale, shift in zip(skips, self.conv_body_up, self.condition_scale, self.condition_shift):
            feat = block(feat + skip)
            conditions += [scale(feat), shift(feat)]
        styles = codes if self.different_w else codes.expand(-1, self.layers, -1)
        return self.stylegan_decoder(styles, conditions).clamp(-1, 1)


def gfpgan_from_state_dict(state: dict[str, torch.Tensor]) -> GFPGAN:
    """The network a GFPGAN weight file describes, with its weights loaded (strictly)."""
    for key in ("params_ema", "params", "g_ema"):
        if isinstance(state.get(key), dict):
            state = state[key]
    if "conv_body_first.weight" not in state:
        raise ValueError("not a GFPGAN state dict: no 'conv_body_first.weight'")
    if any(".modulated_conv.weight_orig" in key or ".activate.bias" in key for key in state):
        raise ValueError("this is the original GFPGAN v1 architecture (custom CUDA ops); "
                         "use GFPGANv1.3 or GFPGANv1.4, which this app reads")
    levels = 1 + sum(1 for key in state if key.startswith("conv_body_up.") and key.endswith(".conv1.weight"))
    unet = [state["final_conv.weight"].shape[0]] + [state[f"conv_body_up.{i}.conv2.weight"].shape[0]
                                                     for i in range(levels - 1)]
    decoder = [state["stylegan_decoder.constant_input.weight"].shape[1]] + [
        state[f"stylegan_decoder.style_convs.{2 * i}.modulated_conv.weight"].shape[1] for i in range(levels - 1)]
    style_dim = state["stylegan_decoder.style_mlp.1.weight"].shape[0]
    mlp_layers = sum(1 for key in state if key.startswith("stylegan_decoder.style_mlp.") and key.endswith(".weight"))
    different_w = state["final_linear.weight"].shape[0] != style_dim
    sft_half = state["condition_scale.0.2.weight"].shape[0] != 2 * unet[1]
    model = GFPGAN(unet, decoder, style_dim, mlp_layers, different_w, sft_half)
    model.load_state_dict(state, strict=True)
    return model.eval()
