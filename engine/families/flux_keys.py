"""FLUX.1 transformer weights from Black Forest Labs' original key layout to the names of
diffusers' FluxTransformer2DModel, at whatever width the file has.

diffusers 0.42's own converter assumes the real model's width (3072 channels, MLP 12288) when it
splits the fused tensors, so it cannot convert any other width (the tiny test models, pruned or
distilled variants); here every width is read from the tensors themselves:

* hidden size: the rows of `img_in.weight` (its columns are the inputs per 2x2 patch: 64, or 384
  for Fill, which config in_channels must match);
* MLP width: the rows of a single block's `linear1` less the 3 x hidden of its fused q, k, v.

Facts (the names and split orders are the family's, engine/families/flux.py): a double block's `img_attn.qkv` /
`txt_attn.qkv` is q, k, v stacked along the output rows; a single block's `linear1` is q, k, v,
then the MLP's input projection; the final layer's modulation is stored (shift, scale) where
diffusers' AdaLayerNormContinuous reads (scale, shift); RMS norms are `.scale`, not `.weight`.

Only dimension 0 is ever split or read, so this works unchanged on GGUF's quantised tensors
(rows of quantised blocks) as well as on plain ones.
"""

from __future__ import annotations

import torch

from engine.errors import CheckpointError
from engine.families.flux import DOUBLE, DOUBLE_FUSED, FINAL_MODULATION, SINGLE, SINGLE_FUSED, TOP_LEVEL

BFL_PREFIX = "model.diffusion_model."
_MARKER = "img_in.weight"

def strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transformer's tensors with BFL names, whether bare or under `model.diffusion_model.`
    (all-in-one files: the encoders and VAE beside it are left out)."""
    if BFL_PREFIX + _MARKER in state:
        return {key[len(BFL_PREFIX):]: value for key, value in state.items() if key.startswith(BFL_PREFIX)}
    if _MARKER in state:
        return dict(state)
    raise CheckpointError(f"not a FLUX.1 transformer in Black Forest Labs' layout: no {_MARKER!r} "
                          f"(bare or under {BFL_PREFIX!r})")


def flux_widths(state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(hidden size, MLP width) of a BFL-layout FLUX transformer, read from its tensors."""
    hidden = state[_MARKER].shape[0]
    fused = state.get("single_blocks.0.linear1.weight")
    if fused is None:
        mlp = state["double_blocks.0.img_mlp.0.weight"].shape[0] if "double_blocks.0.img_mlp.0.weight" in state else 0
    else:
        mlp = fused.shape[0] - 3 * hidden
    if mlp <= 0:
        raise CheckpointError(f"FLUX transformer with hidden size {hidden} has no readable MLP width")
    return hidden, mlp


def _leaf(leaf: str) -> str:
    # BFL's RMS norms keep their gain in `.scale`; diffusers' RMSNorm in `.weight`.
    return "weight" if leaf == "scale" else leaf


def _split(tensor: torch.Tensor, sizes: list[int], key: str) -> tuple[torch.Tensor, ...]:
    if tensor.shape[0] != sum(sizes):
        raise CheckpointError(f"FLUX tensor {key!r} has {tensor.shape[0]} rows; expected {sum(sizes)} "
                              f"(the fused parts {sizes})")
    return tuple(torch.split(tensor, sizes, dim=0))


def _swap_shift_scale(tensor: torch.Tensor) -> torch.Tensor:
    shift, scale = tensor.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def bfl_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BFL-layout FLUX transformer state dict (bare or prefixed; dev with `guidance_in`, schnell
    without) under FluxTransformer2DModel's names. Unknown keys are refused by name rather than
    silently dropped, so a variant this does not handle fails loudly."""
    source = strip_prefix(state)
    hidden, mlp = flux_widths(source)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        module, _, leaf = key.rpartition(".")
        block, dot, rest = module.partition(".")
        if module in TOP_LEVEL:
            out[f"{TOP_LEVEL[module]}.{leaf}"] = tensor
        elif module == FINAL_MODULATION[0]:
            out[f"{FINAL_MODULATION[1]}.{leaf}"] = _swap_shift_scale(tensor)
        elif block in ("double_blocks", "single_blocks") and dot:
            index, _, inner = rest.partition(".")
            if block == "double_blocks":
                target, fused, renames, sizes = f"transformer_blocks.{index}.", DOUBLE_FUSED, DOUBLE, [hidden] * 3
            else:
                target, fused, renames = f"single_transformer_blocks.{index}.", {"linear1": SINGLE_FUSED}, SINGLE
                sizes = [hidden] * 3 + [mlp]
            if inner in fused:
                for name, part in zip(fused[inner], _split(tensor, sizes, key)):
                    out[f"{target}{name}.{leaf}"] = part
            elif inner in renames:
                out[f"{target}{renames[inner]}.{_leaf(leaf)}"] = tensor
            else:
                raise CheckpointError(f"unknown FLUX transformer tensor {key!r}")
        else:
            raise CheckpointError(f"unknown FLUX transformer tensor {key!r}")
    return out
