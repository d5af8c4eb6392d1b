"""The weights of a VAE file under the original (LDM) key names a checkpoint stores its VAE with.

VAE files come in the LDM layout (`encoder.down.0.block.0.conv1.weight`, sometimes under
`first_stage_model.` or `vae.`) or in diffusers' layout (`encoder.down_blocks.0.resnets.0.conv1.weight`);
the second is renamed here, key by key, with its attention's linear weights made 1x1 convolutions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIXES = ("first_stage_model.", "vae.")
IGNORED = ("loss.", "model_ema.")
DIFFUSERS_MARKER = "decoder.up_blocks.0.resnets.0.conv1.weight"
_ATTENTION = {"group_norm": "norm", "to_q": "q", "query": "q", "to_k": "k", "key": "k", "to_v": "v",
              "value": "v", "to_out.0": "proj_out", "proj_attn": "proj_out"}
_ATTENTION_RE = re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$")


@dataclass(frozen=True)
class VaeKey:
    source: str            # the key in the VAE file
    as_conv: bool = False  # a linear weight (C, C) stored as a 1x1 convolution (C, C, 1, 1)


def ldm_keys(keys: list[str]) -> dict[str, VaeKey]:
    """LDM key (no prefix) -> where it is in a VAE file with these keys."""
    stripped = {}
    for key in keys:
        bare = next((key[len(p):] for p in PREFIXES if key.startswith(p)), key)
        if not bare.startswith(IGNORED):
            stripped[bare] = key
    if DIFFUSERS_MARKER not in stripped:
        return {bare: VaeKey(key) for bare, key in stripped.items()}
    ups = {int(k.split(".")[2]) for k in stripped if k.startswith("decoder.up_blocks.")}
    last_up = max(ups)
    found = {}
    for bare, key in stripped.items():
        name, as_conv = _from_diffusers(bare, last_up)
        found[name] = VaeKey(key, as_conv)
    return found


def _from_diffusers(key: str, last_up: int) -> tuple[str, bool]:
    attention = _ATTENTION_RE.match(key)
    if attention:
        part, inner, kind = attention.groups()
        name = _ATTENTION.get(inner, inner)
        return f"{part}.mid.attn_1.{name}.{kind}", kind == "weight" and name in ("q", "k", "v", "proj_out")
    key = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", key)
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", key)
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.", r"encoder.down.\1.downsample.conv.", key)
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                 lambda m: f"decoder.up.{last_up - int(m[1])}.block.{m[2]}.", key)
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.",
                 lambda m: f"decoder.up.{last_up - int(m[1])}.upsample.conv.", key)
    key = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.",
                 lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.", key)
    return key.replace(".conv_shortcut.", ".nin_shortcut."), False
