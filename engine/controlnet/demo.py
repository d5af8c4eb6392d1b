"""`--demo`'s tiny ControlNet, so the ControlNet tab works without downloads: made from the
demo model's UNet and written as a single file in the layout users download."""

from __future__ import annotations

import os
from pathlib import Path

DEMO_NAME = "demo-controlnet"


def ensure_demo_controlnet(folder: Path) -> Path:
    from engine.models.loading import CONFIG_ROOT
    from engine.models.tiny_models import build_demo_pipeline
    from engine.controlnet.tiny_controlnets import build_tiny_controlnet, save_original_layout

    path = Path(folder) / f"{DEMO_NAME}.safetensors"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    unet = build_demo_pipeline(CONFIG_ROOT / "sd1" / "tokenizer").unet
    partial = path.with_name(path.name + ".partial")
    save_original_layout(build_tiny_controlnet(unet, seed=0), partial)
    os.replace(partial, path)  # never a half-written model in the list
    return path
