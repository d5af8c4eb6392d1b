"""FLUX.1 transformer weights from Black Forest Labs' original key layout to the names of
diffusers' FluxTransformer2DModel, at whatever width the file has.

diffusers 0.42's own converter assumes the real model's width (3072 channels, MLP 12288) when it
splits the fused tensors, so it cannot convert any other width (the tiny test models, pruned or
distilled variants); here every width is read from the tensors themselves:

* hidden size: the rows of `img_in.weight` (its columns are the inputs per 2x2 patch: 64, or 384
  for Fill, which config in_channels must match);
* MLP width: the rows of a single block's `linear1` less the 3 x hidden of its fused q, k, v.

Facts (the split orders; the code is this project's): a double block's `img_attn.qkv` /
`txt_attn.qkv` is q, k, v stacked along the output rows; a single block's `linear1` is q, k, v,
then the MLP's input projection; the final layer's modulation is stored (shift, scale) where
diffusers' AdaLayerNormContinuous reads (scale, shift); RMS norms are `.scale`, not `.weight`.

Only dimension 0 is ever split or read, so this works unchanged on GGUF's quantised tensors
(rows of quantised blocks) as well as on plain ones.
"""

from __future__ import annotations

import torch

from engine.errors import CheckpointError

BFL_PREFIX = "model.diffusion_model."
_MARKER = "img_in.weight"

# Whole modules renamed one to one (every leaf under them keeps its own name).
_TOP_LEVEL = {
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "txt_in": "context_embedder", "img_in": "x_embedder", "final_layer.linear": "proj_out",
}
_DOUBLE = {
    "img_mod.lin": "norm1.linear", "txt_mod.lin": "norm1_context.linear",
    "img_attn.norm.query_norm": "attn.norm_q", "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q", "txt_attn.norm.key_norm": "attn.norm_added_k",
    "img_mlp.0": "ff.net.0.proj", "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj", "txt_mlp.2": "ff_context.net.2",
    "img_attn.proj": "attn.to_out.0", "txt_attn.proj": "attn.to_add_out",
}
_DOUBLE_FUSED = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                 "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
_SINGLE = {"modulation.lin": "norm.linear", "norm.query_norm": "attn.norm_q", "norm.key_norm": "attn.norm_k",
           "linear2": "proj_out"}
_SINGLE_FUSED = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")


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
        if module in _TOP_LEVEL:
            out[f"{_TOP_LEVEL[module]}.{leaf}"] = tensor
        elif module == "final_layer.adaLN_modulation.1":
            out[f"norm_out.linear.{leaf}"] = _swap_shift_scale(tensor)
        elif block in ("double_blocks", "single_blocks") and dot:
            index, _, inner = rest.partition(".")
            if block == "double_blocks":
                target, fused, renames, sizes = f"transformer_blocks.{index}.", _DOUBLE_FUSED, _DOUBLE, [hidden] * 3
            else:
                target, fused, renames = f"single_transformer_blocks.{index}.", {"linear1": _SINGLE_FUSED}, _SINGLE
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
