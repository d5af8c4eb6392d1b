"""Control-LoRA files (Stability AI's "control-lora-*-rank*.safetensors"): a ControlNet stored as
the difference from the checkpoint it runs with, so a few hundred megabytes instead of several
gigabytes.

Facts of the format (as ComfyUI and Forge load it): the file is in lllyasviel's original
ControlNet layout without the ``control_model.`` prefix and carries a ``lora_controlnet`` marker
key. The ControlNet is the loaded UNet's encoder (its own config and weights); a layer the file
gives as ``<layer>.up`` and ``<layer>.down`` gets ``up.flatten(1) @ down.flatten(1)`` (reshaped to
the weight) added to the UNet's weight; every other tensor in it (the hint encoder, the zero
convolutions, norms it retrained) replaces the weight of that name. So it is built for the
checkpoint in use, each time a job uses it (with the job's LoRAs merged into the UNet, as the UNet
runs), and never cached across checkpoints.
"""

from __future__ import annotations

import torch

from engine.controlnet.layouts import FIELD, diffusers_to_ldm_keys, family_of_config
from engine.errors import CheckpointError

MARKER = "lora_controlnet"
HINT_PREFIX = "input_hint_block."


def is_control_lora(keys) -> bool:
    return MARKER in keys


def family_of_keys(keys) -> str:
    """"sdxl" when the file trains SDXL's label embedding (its micro-conditioning), else "sd1"."""
    return "sdxl" if any(key.startswith("label_emb.") for key in keys) else "sd1"


def _hint_widths(tensors: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """diffusers' conditioning_embedding_out_channels, from the original hint encoder's convs
    (0: in, then pairs at 2/4, 6/8, 10/12, the zero conv at the end)."""
    convs = sorted(int(key[len(HINT_PREFIX):].split(".")[0]) for key in tensors
                   if key.startswith(HINT_PREFIX) and key.endswith(".weight"))
    if not convs or convs[0] != 0:
        raise ValueError("no hint encoder (input_hint_block.0)")
    widths = [tensors[f"{HINT_PREFIX}0.weight"].shape[0]]
    widths += [tensors[f"{HINT_PREFIX}{index}.weight"].shape[0] for index in convs[1:-1] if index % 4 == 0]
    return tuple(widths)


@torch.no_grad()
def build(tensors: dict[str, torch.Tensor], unet, name: str):
    """The ControlNetModel a Control-LoRA makes of `unet` (float32, on the CPU)."""
    from diffusers import ControlNetModel

    if family_of_keys(tensors) != family_of_config(dict(unet.config)):
        raise CheckpointError(f"'{name}' is a Control-LoRA for {family_of_keys(tensors).upper()} models; the "
                              "loaded checkpoint is another family: pick one of its family", FIELD)
    try:
        hint = tensors[f"{HINT_PREFIX}0.weight"]
        net = ControlNetModel.from_unet(unet, conditioning_channels=int(hint.shape[1]),
                                        conditioning_embedding_out_channels=_hint_widths(tensors))
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"'{name}' is a Control-LoRA whose hint encoder this app cannot read ({error})",
                              FIELD) from error
    net = net.to(torch.float32)
    state = net.state_dict()
    original = {ldm: diffusers for diffusers, ldm in diffusers_to_ldm_keys(state).items()}
    unknown = []
    for key, tensor in tensors.items():
        if key == MARKER:
            continue
        layer, _, part = key.rpartition(".")
        if part in ("up", "down"):
            if part == "down":
                continue   # taken with its up
            target = original.get(f"{layer}.weight")
            down = tensors.get(f"{layer}.down")
            if target is None or down is None:
                unknown.append(key)
                continue
            weight = state[target]
            delta = tensor.float().flatten(1) @ down.float().flatten(1)
            weight.add_(delta.reshape(weight.shape))
        else:
            target = original.get(key)
            if target is None or state[target].shape != tensor.shape:
                unknown.append(key)
                continue
            state[target].copy_(tensor.float())
    if unknown:
        raise CheckpointError(f"'{name}' is a Control-LoRA that does not fit the loaded checkpoint's UNet: "
                              f"{len(unknown)} of its tensors name no layer of it (e.g. {unknown[0]})", FIELD)
    return net.eval()
