"""CodeFormer (Zhou et al., NeurIPS 2022), written here so the published `codeformer.pth` loads
without the basicsr library.

How it works: a VQGAN encoder turns the 512x512 face into a 16x16 grid of features; a transformer
looks at that grid and predicts, for every cell, which entry of a learned codebook of clean face
parts belongs there; the VQGAN generator decodes the chosen codebook entries back into a face.
Fidelity `w` mixes in the degraded input: at a few resolutions the encoder's features steer the
generator's through a learned per-pixel scale and shift, weighted by `w` (0 ignores them).

Parameter names and shapes follow the reference implementation exactly (encoder.blocks.N,
quantize.embedding, position_emb, feat_emb, ft_layers.N, idx_pred_layer, fuse_convs_dict.RES,
generator.blocks.N), so its weight files load with strict=True. Everything except the number of
attention heads is read back from a state dict's shapes and key names; see `default_heads`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F


def _norm(channels: int) -> nn.GroupNorm:
    # 32 groups as in the VQGAN it was trained with; channel counts must be multiples of 32.
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResBlock(nn.Module):
    """Pre-activation residual block: two (norm, swish, 3x3 conv) steps and a 1x1 shortcut when
    the width changes."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.conv_out = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.conv_out is None else self.conv_out(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, 1x1 convolutions as projections."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)

        def tokens(conv: nn.Conv2d) -> torch.Tensor:
            return conv(y).reshape(b, 1, c, h * w).transpose(2, 3)

        out = F.scaled_dot_product_attention(tokens(self.q), tokens(self.k), tokens(self.v))
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Padding only right and bottom is what the weights were trained with.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class BlockStack(nn.Module):
    """A flat list of blocks run in order; holds `blocks` so keys read `encoder.blocks.N`."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class Codebook(nn.Module):
    """The VQGAN's codebook; only lookups are needed at inference."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / size, 1.0 / size)


class TransformerLayer(nn.Module):
    """Pre-norm self-attention + GELU MLP; the position embedding is added to queries and keys
    only."""

    def __init__(self, dim: int, heads: int, dim_mlp: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.linear1 = nn.Linear(dim, dim_mlp)
        self.linear2 = nn.Linear(dim_mlp, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        qk = h + pos
        x = x + self.self_attn(qk, qk, h, need_weights=False)[0]
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))


class FuseBlock(nn.Module):
    """Controllable feature transform: from encoder+generator features, a scale and shift that
    nudge the generator's features towards the input, weighted by fidelity."""

    def __init__(self, channels: int):
        super().__init__()
        self.encode_enc = ResBlock(2 * channels, channels)

        def head() -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.LeakyReLU(0.2, True),
                                 nn.Conv2d(channels, channels, 3, 1, 1))

        self.scale = head()
        self.shift = head()

    def forward(self, enc: torch.Tensor, dec: torch.Tensor, w: float) -> torch.Tensor:
        f = self.encode_enc(torch.cat([enc, dec], dim=1))
        return dec + w * (dec * self.scale(f) + self.shift(f))


def default_heads(dim: int) -> int:
    """Attention heads for a transformer width: the largest of 8, 4, 2, 1 dividing it.

    Weight files do not record the head count (it changes no tensor's shape), so loading has to
    assume one; every published CodeFormer uses 8 heads at width 512, which this rule gives."""
    return next(h for h in (8, 4, 2, 1) if dim % h == 0)


class CodeFormer(nn.Module):
    """CodeFormer. Defaults build the published 512px model.

    nf, ch_mult, num_res_blocks, attn_resolutions: the VQGAN's base width, width multiplier per
    level (one level per resolution, halving between levels), residual blocks per level, and the
    pixel resolutions with attention. codebook_size, code_dim: codebook entries and their width.
    dim_embd, n_head, n_layers, dim_mlp: transformer width, heads, depth, MLP width (2*dim_embd
    when None). connect_list: resolutions (as strings, like the weight keys) where fidelity
    fusion happens. img_size: input side, which sets the token grid (img_size / 2**(levels-1))."""

    def __init__(self, nf: int = 64, ch_mult: Sequence[int] = (1, 2, 2, 4, 4, 8),
                 num_res_blocks: int = 2, attn_resolutions: Iterable[int] = (16,),
                 codebook_size: int = 1024, code_dim: int = 256, dim_embd: int = 512,
                 n_head: int | None = None, n_layers: int = 9, dim_mlp: int | None = None,
                 connect_list: Iterable[str | int] = ("32", "64", "128", "256"),
                 img_size: int = 512):
        super().__init__()
        levels = len(ch_mult)
        if levels < 1 or img_size % 2 ** (levels - 1):
            raise ValueError(f"img_size {img_size} is not divisible by 2**{levels - 1}")
        if num_res_blocks < 1:
            raise ValueError("num_res_blocks must be at least 1")
        self.input_size = img_size
        self.latent_side = img_size // 2 ** (levels - 1)
        self.code_dim = code_dim
        self.connect_list = [str(r) for r in connect_list]
        attn_res = set(attn_resolutions)
        level_res = [img_size // 2**i for i in range(levels)]
        widths = [nf * m for m in ch_mult]
        unknown = [r for r in self.connect_list if int(r) not in level_res]
        if unknown:
            raise ValueError(f"connect_list {unknown} not among level resolutions {level_res}")

        # Fusion taps (block index -> resolution key). Reference placement, generalised: the
        # encoder is tapped after a level's last residual block; the generator is fused after a
        # level's first one, or its last one on attention levels (before that level's attention).
        self.encoder_taps: dict[int, str] = {}
        self.generator_taps: dict[int, str] = {}

        enc: list[nn.Module] = [nn.Conv2d(3, nf, 3, 1, 1)]
        ch = nf
        for i, (res, width) in enumerate(zip(level_res, widths)):
            for _ in range(num_res_blocks):
                enc.append(ResBlock(ch, width))
                ch = width
                last_res = len(enc) - 1
                if res in attn_res:
                    enc.append(AttnBlock(ch))
            self.encoder_taps[last_res] = str(res)
            if i != levels - 1:
                enc.append(Downsample(ch))
        enc += [ResBlock(ch, ch), AttnBlock(ch), ResBlock(ch, ch), _norm(ch),
                nn.Conv2d(ch, code_dim, 3, 1, 1)]
        self.encoder = BlockStack(enc)

        self.quantize = Codebook(codebook_size, code_dim)

        gen: list[nn.Module] = [nn.Conv2d(code_dim, ch, 3, 1, 1),
                                ResBlock(ch, ch), AttnBlock(ch), ResBlock(ch, ch)]
        for i in reversed(range(levels)):
            res, width = level_res[i], widths[i]
            for j in range(num_res_blocks):
                gen.append(ResBlock(ch, width))
                ch = width
                if j == (num_res_blocks - 1 if res in attn_res else 0):
                    self.generator_taps[len(gen) - 1] = str(res)
                if res in attn_res:
                    gen.append(AttnBlock(ch))
            if i != 0:
                gen.append(Upsample(ch))
        gen += [_norm(ch), nn.Conv2d(ch, 3, 3, 1, 1)]
        self.generator = BlockStack(gen)

        # Keep only the taps that fuse; the rest would be dead work.
        self.encoder_taps = {i: r for i, r in self.encoder_taps.items() if r in self.connect_list}
        self.generator_taps = {i: r for i, r in self.generator_taps.items()
                               if r in self.connect_list}

        self.n_head = default_heads(dim_embd) if n_head is None else n_head
        dim_mlp = 2 * dim_embd if dim_mlp is None else dim_mlp
        self.position_emb = nn.Parameter(torch.zeros(self.latent_side**2, dim_embd))
        self.feat_emb = nn.Linear(code_dim, dim_embd)
        self.ft_layers = nn.Sequential(*[TransformerLayer(dim_embd, self.n_head, dim_mlp)
                                         for _ in range(n_layers)])
        self.idx_pred_layer = nn.Sequential(nn.LayerNorm(dim_embd),
                                            nn.Linear(dim_embd, codebook_size, bias=False))
        self.fuse_convs_dict = nn.ModuleDict(
            {r: FuseBlock(widths[level_res.index(int(r))]) for r in self.connect_list})

    def forward(self, x: torch.Tensor, fidelity: float = 0.5) -> torch.Tensor:
        """x: (B, 3, input_size, input_size) in [-1, 1]; returns the restored faces in [-1, 1]."""
        size = self.input_size
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != size or x.shape[3] != size:
            raise ValueError(f"CodeFormer expects (B, 3, {size}, {size}), got {tuple(x.shape)}")

        skips: dict[str, torch.Tensor] = {}
        h = x
        for i, block in enumerate(self.encoder.blocks):
            h = block(h)
            if i in self.encoder_taps:
                skips[self.encoder_taps[i]] = h

        # Predict a codebook entry per latent cell from the encoder's features.
        b = h.shape[0]
        tokens = self.feat_emb(h.flatten(2).transpose(1, 2))
        pos = self.position_emb.unsqueeze(0)
        for layer in self.ft_layers:
            tokens = layer(tokens, pos)
        codes = self.idx_pred_layer(tokens).argmax(dim=-1)
        quant = F.embedding(codes, self.quantize.embedding.weight)
        h = quant.transpose(1, 2).reshape(b, self.code_dim, self.latent_side, self.latent_side)

        for i, block in enumerate(self.generator.blocks):
            h = block(h)
            # w == 0 skips fusion outright, as the reference does (not just a zero-weighted add).
            if fidelity > 0 and i in self.generator_taps:
                key = self.generator_taps[i]
                h = self.fuse_convs_dict[key](skips[key], h, fidelity)
        return h.clamp(-1.0, 1.0)


def _unwrap(state_dict: Mapping) -> dict[str, torch.Tensor]:
    for wrapper in ("params_ema", "params"):
        inner = state_dict.get(wrapper)
        if isinstance(inner, Mapping):
            state_dict = inner
            break
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def _encoder_layout(sd: dict[str, torch.Tensor]) -> list[tuple[str, int]]:
    """Encoder blocks as (kind, output width), kinds: conv, res, attn, down, norm."""
    indices = sorted({int(m.group(1)) for k in sd
                      if (m := re.match(r"encoder\.blocks\.(\d+)\.", k))})
    if indices != list(range(len(indices))):
        raise ValueError("not a CodeFormer state dict: encoder.blocks are not numbered 0..N")
    layout = []
    for i in indices:
        p = f"encoder.blocks.{i}."
        if p + "conv1.weight" in sd:
            layout.append(("res", sd[p + "conv1.weight"].shape[0]))
        elif p + "q.weight" in sd:
            layout.append(("attn", sd[p + "q.weight"].shape[0]))
        elif p + "conv.weight" in sd:
            layout.append(("down", sd[p + "conv.weight"].shape[0]))
        elif p + "weight" in sd:
            w = sd[p + "weight"]
            layout.append(("conv" if w.ndim == 4 else "norm", w.shape[0]))
        else:
            raise ValueError(f"not a CodeFormer state dict: unrecognised block {p[:-1]}")
    return layout


def codeformer_from_state_dict(state_dict: Mapping) -> CodeFormer:
    """Build the CodeFormer a weight file describes (raw, or wrapped in 'params_ema'/'params')
    and load it strictly. Raises ValueError for anything that is not a CodeFormer state dict."""
    sd = _unwrap(state_dict)
    for key in ("quantize.embedding.weight", "position_emb", "feat_emb.weight",
                "idx_pred_layer.1.weight", "encoder.blocks.0.weight", "generator.blocks.0.weight"):
        if key not in sd:
            raise ValueError(f"not a CodeFormer state dict: no {key!r}")

    codebook_size, code_dim = sd["quantize.embedding.weight"].shape
    tokens, dim_embd = sd["position_emb"].shape
    layout = _encoder_layout(sd)
    kinds = [k for k, _ in layout]
    if kinds[0] != "conv" or kinds[-5:] != ["res", "attn", "res", "norm", "conv"]:
        raise ValueError(f"not a CodeFormer state dict: unexpected encoder layout {kinds}")
    nf = layout[0][1]

    # Levels are the runs of blocks between downsamplings (before the bottleneck's 5 blocks).
    levels: list[list[tuple[str, int]]] = [[]]
    for kind, width in layout[1:-5]:
        if kind == "down":
            levels.append([])
        else:
            levels[-1].append((kind, width))
    res_counts = {sum(k == "res" for k, _ in lvl) for lvl in levels}
    if len(res_counts) != 1 or 0 in res_counts:
        raise ValueError("not a CodeFormer state dict: levels have differing residual blocks")
    ch_mult = []
    for lvl in levels:
        width = [w for k, w in lvl if k == "res"][-1]
        if width % nf:
            raise ValueError(f"not a CodeFormer state dict: level width {width} vs base {nf}")
        ch_mult.append(width // nf)

    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"not a CodeFormer state dict: {tokens} position embeddings is no square")
    img_size = side * 2 ** (len(levels) - 1)
    attn_resolutions = [img_size // 2**i for i, lvl in enumerate(levels)
                        if any(k == "attn" for k, _ in lvl)]

    n_layers = len({m.group(1) for k in sd if (m := re.match(r"ft_layers\.(\d+)\.", k))})
    dim_mlp = sd["ft_layers.0.linear1.weight"].shape[0] if n_layers else None
    connect = sorted({m.group(1) for k in sd if (m := re.match(r"fuse_convs_dict\.(\d+)\.", k))},
                     key=int)

    config = dict(nf=nf, ch_mult=tuple(ch_mult), num_res_blocks=res_counts.pop(),
                  attn_resolutions=tuple(attn_resolutions), codebook_size=codebook_size,
                  code_dim=code_dim, dim_embd=dim_embd, n_layers=n_layers, dim_mlp=dim_mlp,
                  connect_list=connect, img_size=img_size)
    # Built on meta and filled by assignment: no throwaway random init of ~94M parameters.
    with torch.device("meta"):
        model = CodeFormer(**config)
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"CodeFormer weights do not fit the inferred architecture {config}: "
                         f"{exc}") from exc
    return model.eval().requires_grad_(False)
