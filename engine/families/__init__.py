"""Model families: one module per family says what is particular to it when a job runs -- how its
prompts are encoded, which network denoises and how it is called, its noise levels, which
samplers can sample it, its defaults and its infotext keys. Generation (engine/runs) asks the
family of the loaded model and nothing else about it.

SD 1.x, SD 2.x and SDXL (stable_diffusion.py) share the UNet and A1111's CLIP prompt encoding;
FLUX.1 (flux.py) and SD 3.x (sd3.py) are rectified-flow transformers (flow.py). A next
flow-matching family is one more module here, its configs under engine/models/model_configs and
its recognition in engine/models/families.py.
"""

from __future__ import annotations

from engine.families.base import FamilyDefaults, ModelFamily
from engine.families.flux import FLUX
from engine.families.sd3 import SD3
from engine.families.stable_diffusion import SD1, SD2, SDXL

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (SD1, SD2, SDXL, FLUX, SD3)}


def family_of(name: str) -> ModelFamily:
    """The family a loaded model's `family` names ("sd1", "sd2", "sdxl", "flux", "sd3")."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


__all__ = ["FAMILIES", "FamilyDefaults", "ModelFamily", "family_of"]
