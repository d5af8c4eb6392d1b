"""A Stable Diffusion model of the real architecture with random weights, written as a
single-file checkpoint like the ones users download.

Speed does not depend on the weight values, so the benchmark needs no download: the modules are
built from the repo's own config folders (engine/models/model_configs), in fp16 (the precision the
files users download are in, and half the memory to build), and written in the original LDM key
layout for the app to load through its registry like any user's file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from engine.models.loading import CONFIG_ROOT
from tests.support.ldm_export import export_single_file

FAMILIES = ("sd1", "sdxl")


def tiny_config_root(folder: Path) -> Path:
    """Config folders of the tiny test models (real tokenizers), for a quick run of the whole
    benchmark (`--tiny`): what the test suite checks it with."""
    from engine.models.tiny_models import write_config_folder

    for family in FAMILIES:
        write_config_folder(family, folder / family, CONFIG_ROOT / "sd1" / "tokenizer",
                            CONFIG_ROOT / "sdxl" / "tokenizer_2")
    return folder


def build_random(config_dir: Path, family: str, seed: int = 0) -> SimpleNamespace:
    """The UNet, VAE and text encoder(s) a config folder describes, randomly initialised (each
    library's own initialisation, so activations stay in range), in fp16 on the CPU."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)  # built in fp16: no fp32 copy of a 2.6B UNet on the way
    try:
        parts = SimpleNamespace(
            unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir / "unet")),
            vae=AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae")),
            text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir / "text_encoder")))
        if family == "sdxl":
            parts.text_encoder_2 = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(config_dir / "text_encoder_2"))
    finally:
        torch.set_default_dtype(previous)
    return parts


def components(parts) -> dict[str, torch.nn.Module]:
    names = ("unet", "vae", "text_encoder", "text_encoder_2")
    return {name: getattr(parts, name) for name in names if getattr(parts, name, None) is not None}


@torch.no_grad()
def fingerprint(parts) -> dict[str, float]:
    """Per component, the sum of every weight: equal sums mean the file held these weights."""
    return {name: float(sum(p.detach().double().sum().item() for p in module.parameters()))
            for name, module in components(parts).items()}


def fingerprints_match(a: dict[str, float], b: dict[str, float], tolerance: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all(
        abs(a[k] - b[k]) <= tolerance * max(1.0, abs(a[k])) for k in a)


def write_checkpoint(parts, family: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    export_single_file(parts, path, family)
    return path


def parameter_count(parts) -> dict[str, int]:
    return {name: sum(p.numel() for p in module.parameters())
            for name, module in components(parts).items()}


def write_in_child(config_dir: Path, family: str, path: Path, seed: int = 0) -> dict:
    """build_random + write_checkpoint in a child process; returns its fingerprint and counts."""
    summary = path.with_suffix(".json")
    subprocess.run([sys.executable, "-m", "bench.random_model", "--config-dir", str(config_dir),
                    "--family", family, "--out", str(path), "--seed", str(seed)],
                   check=True, cwd=Path(__file__).resolve().parents[1])
    data = json.loads(summary.read_text())
    summary.unlink()
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="write a random-weight checkpoint")
    parser.add_argument("--config-dir", type=Path, required=True)
    parser.add_argument("--family", choices=FAMILIES, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    parts = build_random(args.config_dir, args.family, args.seed)
    write_checkpoint(parts, args.family, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"fingerprint": fingerprint(parts), "parameters": parameter_count(parts)}))


if __name__ == "__main__":
    main()
