"""Merging LoRA changes into a model's own weights, and putting the originals back exactly.

Each changed layer's weight (and bias) is copied to RAM once, before its first change; the new
value is written into the same tensor (`copy_`), so whatever holds that tensor keeps seeing it:
torch.compile'd graphs, the fused q/k/v projections of the fast path (views of one weight), and
the offload hooks of the memory modes (model offload moves the module's own tensors; group
offload keeps them in pinned RAM between layers, which is where they are between jobs). Restoring
copies the saved values back: the model is bit for bit as before. A layer of a flow model's
original code that is several modules here (fused q/k/v: flow_lora_keys.FusedRows) gets its
change computed whole and written to those modules' rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.networks.flow_lora_keys import FusedRows, RowSlice
from engine.networks.lora_formats import LayerError, layer_change
from engine.networks.lora_keys import LayerFactors


@dataclass
class MergeOutcome:
    layers: int = 0                                   # layers changed (or matched at strength 0)
    failures: list[str] = field(default_factory=list)  # why a layer could not take its change
    fits: bool = True                                 # False: a change's shape is not the layer's


class MergedWeights:
    """The layers of one model that LoRAs changed, with their original values."""

    def __init__(self):
        self._originals: dict[int, tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]] = {}
        self.signature: tuple = ()  # what is merged now: ((path, mtime, size, te, unet), ...)
        self.plan: list = []        # the same, as the caller resolved it, to merge it again
        self.result = None          # what merging it reported (the job's hashes and warnings)
        self.depth = 0              # jobs (and passes inside them) using the merged weights

    @property
    def changed(self) -> int:
        return len(self._originals)

    @torch.no_grad()
    def merge(self, layers: list[LayerFactors], strengths: dict[str, float]) -> MergeOutcome:
        """Add each layer's change at its component's strength, in place, up to the first layer
        that cannot take its change (the caller restores, then)."""
        outcome = MergeOutcome()
        for layer in layers:
            strength = strengths.get(layer.component, 0.0)
            rows = _rows(layer.module)
            if any(part.module.weight.device.type == "meta" for part in rows):
                outcome.failures.append(f"{layer.module_name} is offloaded to the meta device")
                break
            try:
                current = layer.module.weight.detach().float()
                change, bias_change = layer_change(layer.factors, current, strength)
            except LayerError as error:
                outcome.failures.append(f"{layer.module_name}: {error}")
                outcome.fits = False
                break
            bias = getattr(layer.module, "bias", None)
            if bias_change is not None and (bias is None or bias.numel() != bias_change.numel()):
                outcome.failures.append(f"{layer.module_name}: its bias change does not fit the layer")
                outcome.fits = False
                break
            outcome.layers += 1
            if strength == 0:
                continue  # nothing to add; writing would only round the weights through float32
            new_weight = current + change
            new_bias = None if bias_change is None else bias.detach().float() + bias_change.reshape(bias.shape)
            self._write(rows, new_weight, new_bias)
        return outcome

    def _write(self, rows: tuple[RowSlice, ...], weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Write a layer's new weight (and bias) into its modules' own tensors, by rows for a
        fused layer (flow_lora_keys.FusedRows). Each module's tensor is replaced whole: an
        in-place write to a slice is refused for the inference tensors group offload keeps."""
        values: dict[int, list] = {}
        offset = 0
        for part in rows:
            module, count = part.module, part.stop - part.start
            self._save(module)
            entry = values.get(id(module))
            if entry is None:
                old_bias = getattr(module, "bias", None) if bias is not None else None
                entry = values[id(module)] = [module, module.weight.detach().clone(),
                                              None if old_bias is None else old_bias.detach().clone()]
            entry[1][part.start:part.stop] = weight[offset:offset + count].to(entry[1].dtype)
            if bias is not None:
                entry[2][part.start:part.stop] = bias[offset:offset + count].to(entry[2].dtype)
            offset += count
        for module, new_weight, new_bias in values.values():
            module.weight.data.copy_(new_weight)
            if new_bias is not None:
                module.bias.data.copy_(new_bias)

    def _save(self, module: torch.nn.Module) -> None:
        if id(module) in self._originals:
            return
        bias = getattr(module, "bias", None)
        self._originals[id(module)] = (
            module, module.weight.detach().to("cpu", copy=True),
            bias.detach().to("cpu", copy=True) if isinstance(bias, torch.Tensor) else None)

    @torch.no_grad()
    def restore(self) -> None:
        """Every changed layer back to its original values, exactly."""
        for module, weight, bias in self._originals.values():
            module.weight.data.copy_(weight)
            if bias is not None:
                module.bias.data.copy_(bias)
        self._originals.clear()
        self.signature, self.plan, self.result = (), [], None


def _rows(layer) -> tuple[RowSlice, ...]:
    """The module rows a layer's weight is: all of one module, or a FusedRows' parts."""
    if isinstance(layer, FusedRows):
        return layer.parts
    return (RowSlice("", layer, 0, layer.weight.shape[0]),)
