"""Model families: one module per family says everything particular to it.

* Its files: how they are recognised (keys and shapes of a single file, a diffusers folder's
  pipeline class), which config folder under engine/models/model_configs loads each variant
  offline, which parts (text encoders, tokenizers, transformer class) a pipeline is built from,
  and the names LoRA files give its layers.
* Its jobs: how prompts are encoded, which network denoises and how it is called, its noise
  levels, which samplers can sample it, its defaults, its infotext keys and notes.

SD 1.x, SD 2.x and SDXL (stable_diffusion.py) share the UNet and A1111's CLIP prompt encoding;
FLUX.1 (flux.py) and SD 3.x (sd3.py) are rectified-flow transformers (flow.py; files.py holds
what a flow model's single file includes). The loaders (engine/models), the LoRA code
(engine/networks) and generation (engine/runs) ask the family and hold nothing of their own
about it: a next flow-matching family is one more module here, listed in FLOW_FAMILIES, plus its
config folders.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from engine.families.base import FamilyDefaults, ModelFamily
from engine.families.files import FlowModelFile
from engine.families.flux import FLUX
from engine.families.sd3 import SD3
from engine.families.stable_diffusion import SD1, SD2, SDXL

FLOW_FAMILIES: tuple[ModelFamily, ...] = (FLUX, SD3)
FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (SD1, SD2, SDXL, *FLOW_FAMILIES)}


def family_of(name: str) -> ModelFamily:
    """The family a loaded model's `family` names ("sd1", "sd2", "sdxl", "flux", "sd3")."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def recognise_flow_file(shapes: dict[str, tuple[int, ...]]) -> FlowModelFile | None:
    """The flow-matching model (FLUX.1, SD 3.x, ...) a single file holds, or None."""
    for family in FLOW_FAMILIES:
        found = family.recognise_file(shapes)
        if found is not None:
            return found
    return None


def recognise_flow_folder(folder: Path) -> FlowModelFile | None:
    """The flow-matching model a diffusers folder holds, told by its model_index.json's pipeline
    class (and its transformer's config), or None for any other folder."""
    index = _read_json(Path(folder) / "model_index.json")
    class_name = index.get("_class_name", "") if index else ""
    if not class_name:
        return None
    config = _read_json(Path(folder) / "transformer" / "config.json") or {}
    for family in FLOW_FAMILIES:
        found = family.recognise_folder(class_name, config)
        if found is not None:
            return found
    return None


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def supported_flow_variants() -> list[str]:
    """Every flow-matching variant a config folder is kept for ("FLUX.1-dev", "SD 3.5 Large", ...)."""
    return [variant for family in FLOW_FAMILIES for variant in family.variants]


def lora_made_for(keys: list[str]) -> str | None:
    """The family ("flux", "sd3", ... or "sd" for any UNet model: SD 1.x, 2.x, SDXL) a LoRA file's
    denoising-network keys were made for, when they name blocks only that kind of model has."""
    for name, pattern in (*((family.name, family.lora_blocks) for family in FLOW_FAMILIES), ("sd", SD1.lora_blocks)):
        if any(re.search(pattern, key) for key in keys):
            return name
    return None


__all__ = ["FAMILIES", "FLOW_FAMILIES", "FamilyDefaults", "FlowModelFile", "ModelFamily", "family_of",
           "lora_made_for", "recognise_flow_file", "recognise_flow_folder", "supported_flow_variants"]
