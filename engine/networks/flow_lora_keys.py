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

from engine.families import FLOW_FAMILIES


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
    transformer (the names its family lists, engine/families); empty for any other model."""
    names = _Names(model)
    classes = {cls.__name__ for cls in type(model).__mro__}
    family = next((family for family in FLOW_FAMILIES if family.transformer_class in classes), None)
    for original, targets in (family.original_layers(model) if family else ()):
        if len(targets) == 1:
            names.one(original, targets[0])
        else:
            names.fused(original, targets)
    return names.found
