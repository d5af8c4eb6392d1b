"""The names LoRA files give the layers of FLUX.1 and SD 3.x transformers besides diffusers' own.

Files trained on the original model code (kohya's sd-scripts `lora_unet_...`, ComfyUI's and Black
Forest Labs' `diffusion_model....lora_A/lora_B`, XLabs' `processor.qkv_lora1`) name the original
model's layers: FLUX's `double_blocks.N.img_attn.qkv`, `single_blocks.N.linear1`, the MMDiT's
`joint_blocks.N.x_block.attn.qkv`. Some of those are one matrix there and several modules in
diffusers: q, k and v stacked by rows (and, in FLUX's single blocks, the MLP's input projection
after them), and the final modulations stored (shift, scale) where diffusers'
AdaLayerNormContinuous reads (scale, shift). Such a layer is a FusedRows: the rows of diffusers
modules in the original's order. A change made for the original matrix (any LoRA format, DoRA's
norms included) is computed for the whole matrix and written back by rows. Every width comes
from the modules themselves, never from the real models' sizes (FLUX is 3072 wide, the test
models 32), so pruned variants and the tiny models work the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# FLUX.1: Black Forest Labs' names -> diffusers' FluxTransformer2DModel (engine/models/flux_keys.py
# converts checkpoints by the same facts; networks sit below models, so they are stated here too).
_TOP_LEVEL = {
    "img_in": "x_embedder", "txt_in": "context_embedder", "final_layer.linear": "proj_out",
    **{f"{original}.{side}_layer": f"time_text_embed.{embedder}.linear_{number}"
       for original, embedder in (("time_in", "timestep_embedder"), ("vector_in", "text_embedder"),
                                  ("guidance_in", "guidance_embedder"))
       for side, number in (("in", 1), ("out", 2))},
}
_DOUBLE = {  # inside double_blocks.N -> inside transformer_blocks.N
    "img_mod.lin": "norm1.linear", "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0", "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj", "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj", "txt_mlp.2": "ff_context.net.2",
    "img_attn.norm.query_norm": "attn.norm_q", "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q", "txt_attn.norm.key_norm": "attn.norm_added_k",
}
_DOUBLE_FUSED = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                 "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
_SINGLE = {"linear2": "proj_out", "modulation.lin": "norm.linear",  # inside single_(transformer_)blocks.N
           "norm.query_norm": "attn.norm_q", "norm.key_norm": "attn.norm_k"}
_SINGLE_FUSED = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")  # linear1's rows, in order

# XLabs' LoRA processors, by the original layer they change (their keys: `double_blocks.0.processor.
# qkv_lora1.down.weight`); 1 is the picture's stream, 2 the text's. A single block's `qkv_lora`
# changes only the q, k, v rows of `linear1`.
_XLABS_DOUBLE = {"processor.qkv_lora1": "img_attn.qkv", "processor.qkv_lora2": "txt_attn.qkv",
                 "processor.proj_lora1": "img_attn.proj", "processor.proj_lora2": "txt_attn.proj"}

# SD 3.x: the MMDiT's names (Stability's reference code, sd-scripts) -> diffusers' SD3Transformer2DModel.
_MMDIT_TOP = {
    "x_embedder.proj": "pos_embed.proj", "context_embedder": "context_embedder",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "final_layer.linear": "proj_out", "final_layer.adaLN_modulation.1": "norm_out.linear",
}
_MMDIT_X = {"attn.proj": "attn.to_out.0", "attn.ln_q": "attn.norm_q", "attn.ln_k": "attn.norm_k",
            "attn2.proj": "attn2.to_out.0", "attn2.ln_q": "attn2.norm_q", "attn2.ln_k": "attn2.norm_k",
            "mlp.fc1": "ff.net.0.proj", "mlp.fc2": "ff.net.2", "adaLN_modulation.1": "norm1.linear"}
_MMDIT_CONTEXT = {"attn.proj": "attn.to_add_out", "attn.ln_q": "attn.norm_added_q",
                  "attn.ln_k": "attn.norm_added_k", "mlp.fc1": "ff_context.net.0.proj",
                  "mlp.fc2": "ff_context.net.2", "adaLN_modulation.1": "norm1_context.linear"}
_MMDIT_FUSED = {"x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
                "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}


@dataclass(frozen=True)
class RowSlice:
    """Rows start:stop of a module's weight (and bias)."""
    name: str
    module: torch.nn.Module
    start: int
    stop: int


class FusedRows:
    """One layer of the original model that is the rows of several diffusers modules, in order."""

    def __init__(self, parts: list[RowSlice]):
        self.parts = tuple(parts)

    @property
    def name(self) -> str:
        return " + ".join(part.name if (part.start, part.stop) == (0, part.module.weight.shape[0])
                          else f"{part.name}[{part.start}:{part.stop}]" for part in self.parts)

    @property
    def modules(self) -> list[torch.nn.Module]:
        return list({id(part.module): part.module for part in self.parts}.values())

    @property
    def weight(self) -> torch.Tensor:
        """The original layer's weight, assembled (a new tensor: writing it changes nothing)."""
        return torch.cat([part.module.weight[part.start:part.stop] for part in self.parts])

    @property
    def bias(self) -> torch.Tensor | None:
        biases = [getattr(part.module, "bias", None) for part in self.parts]
        if any(not isinstance(bias, torch.Tensor) for bias in biases):
            return None
        return torch.cat([bias[part.start:part.stop] for bias, part in zip(biases, self.parts)])


def _has_weight(module) -> bool:
    return isinstance(getattr(module, "weight", None), torch.Tensor)


class _Names:
    """Collects original name -> (diffusers name, module or FusedRows) for one transformer."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.found: dict[str, tuple[str, object]] = {}

    def _get(self, name: str) -> torch.nn.Module | None:
        try:
            module = self.model.get_submodule(name)
        except AttributeError:
            return None
        return module if _has_weight(module) else None

    def one(self, original: str, target: str) -> None:
        module = self._get(target)
        if module is None:
            return
        parent = self._get_parent(target)
        if type(parent).__name__ == "AdaLayerNormContinuous":
            # Stored (shift, scale) in the original, read (scale, shift) by diffusers: the halves swap.
            half = module.weight.shape[0] // 2
            self.found[original] = (target, FusedRows([RowSlice(target, module, half, 2 * half),
                                                      RowSlice(target, module, 0, half)]))
        else:
            self.found[original] = (target, module)

    def _get_parent(self, target: str):
        parent, _, _ = target.rpartition(".")
        try:
            return self.model.get_submodule(parent) if parent else None
        except AttributeError:
            return None

    def fused(self, original: str, targets: tuple[str, ...]) -> None:
        modules = [self._get(target) for target in targets]
        if any(module is None for module in modules):
            return
        rows = FusedRows([RowSlice(target, module, 0, module.weight.shape[0])
                          for target, module in zip(targets, modules)])
        self.found[original] = (rows.name, rows)


def flow_layer_names(model: torch.nn.Module) -> dict[str, tuple[str, object]]:
    """Original name (dotted) -> (diffusers name, module or FusedRows) for a FLUX.1 or SD 3.x
    transformer; empty for any other model."""
    names = _Names(model)
    if hasattr(model, "single_transformer_blocks") and hasattr(model, "transformer_blocks"):
        _flux_names(model, names)
    elif hasattr(model, "transformer_blocks") and hasattr(model, "pos_embed") and hasattr(model, "context_embedder"):
        _mmdit_names(model, names)
    return names.found


def _flux_names(model, names: _Names) -> None:
    for original, target in _TOP_LEVEL.items():
        names.one(original, target)
    names.one("final_layer.adaLN_modulation.1", "norm_out.linear")
    for i in range(len(model.transformer_blocks)):
        block, target = f"double_blocks.{i}", f"transformer_blocks.{i}"
        for inner, name in _DOUBLE.items():
            names.one(f"{block}.{inner}", f"{target}.{name}")
        for inner, parts in _DOUBLE_FUSED.items():
            names.fused(f"{block}.{inner}", tuple(f"{target}.{part}" for part in parts))
        for processor, inner in _XLABS_DOUBLE.items():
            if inner in _DOUBLE_FUSED:
                names.fused(f"{block}.{processor}", tuple(f"{target}.{part}" for part in _DOUBLE_FUSED[inner]))
            else:
                names.one(f"{block}.{processor}", f"{target}.{_DOUBLE[inner]}")
    for i in range(len(model.single_transformer_blocks)):
        block, target = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        for inner, name in _SINGLE.items():
            names.one(f"{block}.{inner}", f"{target}.{name}")
        names.fused(f"{block}.linear1", tuple(f"{target}.{part}" for part in _SINGLE_FUSED))
        names.fused(f"{block}.processor.qkv_lora", tuple(f"{target}.{part}" for part in _SINGLE_FUSED[:3]))
        names.one(f"{block}.processor.proj_lora", f"{target}.{_SINGLE['linear2']}")


def _mmdit_names(model, names: _Names) -> None:
    for original, target in _MMDIT_TOP.items():
        names.one(original, target)
    for i in range(len(model.transformer_blocks)):
        block, target = f"joint_blocks.{i}", f"transformer_blocks.{i}"
        for kind, table in (("x_block", _MMDIT_X), ("context_block", _MMDIT_CONTEXT)):
            for inner, name in table.items():
                names.one(f"{block}.{kind}.{inner}", f"{target}.{name}")
        for inner, parts in _MMDIT_FUSED.items():
            names.fused(f"{block}.{inner}", tuple(f"{target}.{part}" for part in parts))
