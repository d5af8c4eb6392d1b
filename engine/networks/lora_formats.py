"""What each LoRA format does to one layer's weight, as A1111 1.10 computes it.

Every format gives a change of the weight (and for some of the bias) from the file's factors:

- LoRA / LoCon (kohya, LyCORIS): up @ down, conv kernels flattened, or the Tucker form with
  `lora_mid`; scale alpha / rank.
- LoHa: (w1_a @ w1_b) * (w2_a @ w2_b), elementwise, or each factor in Tucker form with t1/t2;
  scale alpha / rank.
- LoKr: kron(w1, w2), each either whole or a low-rank product (w2 also in Tucker form); the
  alpha / rank scale applies only when a factor is decomposed (the rank is that factor's).
- DoRA (`dora_scale` beside any of those): the scaled change added, then the weight renormalised
  to the stored magnitude, per input channel (A1111, LyCORIS' default) or per output channel
  (LyCORIS' `wd_on_out`, told apart by the shape of `dora_scale`).
- OFT: kohya's `oft_blocks` (skew-symmetric part, norm capped at alpha * out, Cayley transform),
  LyCORIS' `oft_diag` (the block rotations as stored, with an optional `rescale`), and BOFT
  (`oft_diag` with four dimensions: butterfly stages). The change is the rotated weight minus the
  weight; no alpha scale.
- (IA)^3: the weight times the stored vector, on its output rows or (`on_input`) its input columns.
- Full difference (`diff`, `diff_b`) and LyCORIS' norm layers (`w_norm`, `b_norm`): added as stored.

The strength (the prompt's weight for the text encoders or the UNet) multiplies each change.
"""

from __future__ import annotations

import torch

Factors = dict[str, torch.Tensor]


class LayerError(ValueError):
    """One layer's factors cannot be applied to it; the message says why."""


def format_of(factors: Factors) -> str | None:
    """The format's name for these factors, or None when they are no format known here."""
    if "lora_up.weight" in factors and "lora_down.weight" in factors:
        return "LoRA"
    if all(f"hada_w{i}_{ab}" in factors for i in (1, 2) for ab in "ab"):
        return "LoHa"
    if ("lokr_w1" in factors or {"lokr_w1_a", "lokr_w1_b"} <= factors.keys()) and \
            ("lokr_w2" in factors or {"lokr_w2_a", "lokr_w2_b"} <= factors.keys()):
        return "LoKr"
    if "oft_blocks" in factors:
        return "OFT"
    if "oft_diag" in factors:
        return "BOFT" if factors["oft_diag"].dim() == 4 else "OFT"
    if "diff" in factors:
        return "full"
    if "w_norm" in factors:
        return "norm"
    if "weight" in factors:
        return "(IA)^3"
    return None


def layer_change(factors: Factors, weight: torch.Tensor, strength: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(change of the weight, change of the bias or None) for `weight` (float32, the layer's
    current value) at `strength`. Raises LayerError when the factors do not fit the layer."""
    kind = format_of(factors)
    factors = {name: tensor.to(weight.device, torch.float32) for name, tensor in factors.items()}
    bias = None
    if kind == "LoRA":
        change, rank = _lora(factors)
    elif kind == "LoHa":
        change, rank = _loha(factors)
    elif kind == "LoKr":
        change, rank = _lokr(factors, weight.shape)
    elif kind in ("OFT", "BOFT"):
        return _oft(factors, weight) * strength, None
    elif kind == "(IA)^3":
        return _ia3(factors, weight) * strength, None
    elif kind in ("full", "norm"):
        change, rank = factors["diff" if kind == "full" else "w_norm"], None
        bias = factors.get("diff_b" if kind == "full" else "b_norm")
        bias = None if bias is None else bias.flatten() * strength
    else:
        raise LayerError("its tensors are of no LoRA format known here")
    change = _fit(change, weight.shape)
    change = change * _scale(factors, rank)
    if "dora_scale" in factors:
        change = _weight_decomposed(change, weight, factors["dora_scale"])
    return change * strength, bias


def _fit(change: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if change.numel() != shape.numel():
        raise LayerError(f"its change has shape {tuple(change.shape)}, the layer's weight {tuple(shape)}")
    return change.reshape(shape)


def _scale(factors: Factors, rank: int | None) -> float:
    if "scale" in factors:
        return float(factors["scale"])
    if rank is not None and "alpha" in factors:
        return float(factors["alpha"]) / rank
    return 1.0


def _flat(matrix: torch.Tensor) -> torch.Tensor:
    return matrix.reshape(matrix.shape[0], -1)


def _tucker(core: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LyCORIS' Tucker form: core (rank, rank, kh, kw) with a (rank, out) and b (rank, in)."""
    return torch.einsum("i j k l, i p, j r -> p r k l", core, _flat(a), _flat(b))


def _lora(factors: Factors) -> tuple[torch.Tensor, int]:
    up, down = factors["lora_up.weight"], factors["lora_down.weight"]
    mid = factors.get("lora_mid.weight")
    if mid is not None:  # up (out, rank), mid (rank, rank, kh, kw), down (rank, in)
        return torch.einsum("n m k l, i n, m j -> i j k l", mid, _flat(up), _flat(down)), down.shape[0]
    return _flat(up) @ _flat(down), down.shape[0]


def _loha(factors: Factors) -> tuple[torch.Tensor, int]:
    def product(i: int) -> torch.Tensor:
        a, b, core = factors[f"hada_w{i}_a"], factors[f"hada_w{i}_b"], factors.get(f"hada_t{i}")
        return _tucker(core, a, b) if core is not None else _flat(a) @ _flat(b)

    return product(1) * product(2), factors["hada_w1_b"].shape[0]


def _lokr(factors: Factors, shape: torch.Size) -> tuple[torch.Tensor, int | None]:
    rank = None
    if "lokr_w1" in factors:
        w1 = factors["lokr_w1"]
    else:
        w1, rank = factors["lokr_w1_a"] @ factors["lokr_w1_b"], factors["lokr_w1_b"].shape[0]
    if "lokr_w2" in factors:
        w2 = factors["lokr_w2"]
    else:
        a, b = factors["lokr_w2_a"], factors["lokr_w2_b"]
        core = factors.get("lokr_t2")
        w2, rank = (_tucker(core, a, b) if core is not None else _flat(a) @ _flat(b)), b.shape[0]
    if w2.dim() == 4:  # a conv kernel in w2: w1 spreads it over blocks of channels
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2.contiguous()), rank


def _weight_decomposed(change: torch.Tensor, weight: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """DoRA: (weight + change) rescaled to the stored magnitude per channel, minus the weight."""
    merged = weight + change
    trailing = [1] * (weight.dim() - 1)
    per_output = magnitude.dim() >= 2 and magnitude.shape[0] == weight.shape[0] != 1 and \
        all(size == 1 for size in magnitude.shape[1:])
    if per_output:
        norm = merged.reshape(merged.shape[0], -1).norm(dim=1).reshape(merged.shape[0], *trailing)
        magnitude = magnitude.reshape(merged.shape[0], *trailing)
    else:
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1)
        norm = norm.reshape(merged.shape[1], *trailing).transpose(0, 1)
        if magnitude.numel() != merged.shape[1]:
            raise LayerError(f"its dora_scale has shape {tuple(magnitude.shape)}, "
                             f"the layer {merged.shape[1]} input channels")
        magnitude = magnitude.reshape(norm.shape)
    return merged * (magnitude / norm) - weight


def _oft(factors: Factors, weight: torch.Tensor) -> torch.Tensor:
    out = weight.shape[0]
    if "oft_blocks" in factors:  # kohya: Cayley transform of the (capped) skew-symmetric part
        blocks = factors["oft_blocks"]
        skew = blocks - blocks.transpose(1, 2)
        norm = skew.flatten().norm()
        capped = torch.clamp(norm, max=float(factors["alpha"]) * out) if "alpha" in factors else norm
        skew = skew * ((capped + 1e-8) / (norm + 1e-8))
        eye = torch.eye(blocks.shape[1], device=blocks.device)
        rotation = torch.matmul(eye + skew, torch.linalg.inv(eye - skew))
    else:
        rotation = factors["oft_diag"]
    if rotation.dim() == 4:
        rotated = _butterfly(rotation, weight)
    else:
        count, size = rotation.shape[0], rotation.shape[1]
        if count * size != out:
            raise LayerError(f"its {count} blocks of {size} do not cover the layer's {out} outputs")
        blocks = weight.reshape(count, size, *weight.shape[1:])
        rotated = torch.einsum("k n m, k n ... -> k m ...", rotation, blocks).reshape(weight.shape)
    if "rescale" in factors:
        rotated = rotated * factors["rescale"].reshape(out, *[1] * (weight.dim() - 1))
    return rotated - weight


def _butterfly(rotation: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """BOFT: stage i permutes the output rows into pairs 2^i * b/2 apart, rotates each block of b
    rows, and permutes back."""
    stages, count, size = rotation.shape[0], rotation.shape[1], rotation.shape[2]
    rest = weight.shape[1:]
    if count * size != weight.shape[0] or size % 2:
        raise LayerError(f"its {count} butterfly blocks of {size} do not cover the layer's {weight.shape[0]} outputs")
    rows = weight
    for stage in range(stages):
        span = 2 ** stage * (size // 2)
        if weight.shape[0] % (2 * span):
            raise LayerError(f"its butterfly stage {stage} does not divide the layer's {weight.shape[0]} outputs")
        groups = weight.shape[0] // (2 * span)
        rows = rows.reshape(groups, 2, span, *rest).transpose(1, 2).reshape(weight.shape)
        blocks = rows.reshape(count, size, *rest)
        rows = torch.einsum("b i j, b j ... -> b i ...", rotation[stage], blocks).reshape(weight.shape)
        rows = rows.reshape(groups, span, 2, *rest).transpose(1, 2).reshape(weight.shape)
    return rows


def _ia3(factors: Factors, weight: torch.Tensor) -> torch.Tensor:
    vector = factors["weight"].flatten()
    on_input = "on_input" in factors and bool(factors["on_input"].flatten()[0])
    axis = 1 if on_input else 0
    if vector.numel() != weight.shape[axis]:
        raise LayerError(f"its vector has {vector.numel()} values, the layer "
                         f"{weight.shape[axis]} {'inputs' if on_input else 'outputs'}")
    shape = [1] * weight.dim()
    shape[axis] = -1
    return weight * vector.reshape(shape)
