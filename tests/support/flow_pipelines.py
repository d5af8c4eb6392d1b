"""Tiny FLUX.1 / SD 3.5 pipelines assembled in memory from engine/models/tiny_flow_models.py, with
the real tokenizers and scheduler config kept in engine/models/model_configs (offline): the plain
diffusers pipelines the studio's own sampling is compared with. Test-only."""

from __future__ import annotations

from pathlib import Path

from engine.models.loading import CONFIG_ROOT
from engine.models.tiny_flow_models import build_tiny_flow_components

TOKENIZERS = {"flux": ("tokenizer", "tokenizer_2"), "sd3": ("tokenizer", "tokenizer_2", "tokenizer_3")}


def tiny_flow_pipeline(layout: str, seed: int = 0, config_root: Path = CONFIG_ROOT):
    """A FluxPipeline ("flux-dev", "flux-schnell"), FluxFillPipeline ("flux-fill") or
    StableDiffusion3Pipeline ("sd3.5-large", "sd3.5-medium", "sd3-medium") of the tiny components,
    float32, on the CPU."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxPipeline, StableDiffusion3Pipeline
    from transformers import AutoTokenizer

    family = "flux" if layout.startswith("flux") else "sd3"
    folder = Path(config_root) / layout
    parts = dict(build_tiny_flow_components(layout, seed=seed))
    for name in TOKENIZERS[family]:
        parts[name] = AutoTokenizer.from_pretrained(str(folder / name), local_files_only=True)
    parts["scheduler"] = FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder / "scheduler"),
                                                                         local_files_only=True)
    kind = FluxFillPipeline if layout == "flux-fill" else FluxPipeline if family == "flux" else StableDiffusion3Pipeline
    pipe = kind(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe
