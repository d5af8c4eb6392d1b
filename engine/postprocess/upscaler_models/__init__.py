"""Upscaler networks read from the ecosystem's weight files (models/ESRGAN, models/RealESRGAN,
models/SwinIR, models/ScuNET), written here so no extra library is needed: RRDBNet (ESRGAN,
Real-ESRGAN x4plus/x2plus/anime, in engine/postprocess/esrgan.py), the compact SRVGGNet (Real-ESRGAN v3
models), SwinIR and SCUNet.

A file's architecture is told from its key layout, as the files carry no other description;
every network exposes `scale` (1 for SCUNet, a denoiser).
"""

from __future__ import annotations

from torch import nn

from engine.errors import RequestError


def architecture_of(state: dict) -> str:
    """"RRDBNet", "Compact", "SwinIR", "SCUNet", or "" when the keys match none of them."""
    if "conv_first.weight" in state and "layers.0.residual_group.blocks.0.attn.qkv.weight" in state:
        return "SwinIR"
    if "m_head.0.weight" in state:
        return "SCUNet"
    if "body.0.weight" in state and "body.1.weight" in state and state["body.1.weight"].ndim == 1:
        return "Compact"
    if "conv_first.weight" in state or "model.0.weight" in state:
        return "RRDBNet"
    return ""


def build_upscaler(state: dict, name: str) -> nn.Module:
    """The network a weight file's tensors describe; RequestError naming the file otherwise."""
    from engine.postprocess.esrgan import build_from_state
    from engine.postprocess.upscaler_models.compact import compact_from_state
    from engine.postprocess.upscaler_models.scunet import scunet_from_state
    from engine.postprocess.upscaler_models.swinir import swinir_from_state

    kind = architecture_of(state)
    if kind == "RRDBNet":
        return build_from_state(state, name)
    builders = {"Compact": compact_from_state, "SwinIR": swinir_from_state, "SCUNet": scunet_from_state}
    if kind not in builders:
        raise RequestError(f"'{name}' is not an ESRGAN, Real-ESRGAN, SwinIR or SCUNet model "
                           "this app can read", "upscaler")
    try:
        return builders[kind](state)
    except (KeyError, ValueError, RuntimeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RequestError(f"'{name}' looks like a {kind} model but does not match its layout: {first}",
                           "upscaler") from error
