"""A FLUX.1 or SD 3.5 model of the real architecture with random weights, written as the
all-in-one single file users download (transformer, CLIP / T5 encoders and VAE in one file, the
FLUX transformer under BFL's names), for the benchmark.

Speed does not depend on the weight values, so nothing is downloaded: each component is built
from the repo's config folder (engine/models/model_configs/<layout>). Full-size FLUX.1 (a 12B
transformer, a 4.7B T5) does not fit in a small machine's RAM even in bf16, so `depth` keeps every
width of the real architecture but only N blocks of each kind (double and single blocks, joint
blocks, T5 layers): the per-block cost is the real one, and the report says plainly that the
depth was reduced. The app then loads the file with a config root whose folder for the layout
has the reduced counts (reduced_config_root).

Parameters are created on the meta device (no memory), then each one is allocated and filled in
the target dtype alone, so the build needs the model's size in that dtype and no fp32 copy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from engine.models.loading import CONFIG_ROOT
from engine.models.tiny_flow_models import FLOW_COMPONENT_CLASSES, FLOW_LAYOUTS, build_tiny_flow_components

from . import flow_files

# Block counts of the real models, per layout: (config key, count) of each kind of block.
REAL_DEPTHS = {"flux-dev": {"num_layers": 19, "num_single_layers": 38},
               "flux-schnell": {"num_layers": 19, "num_single_layers": 38},
               "sd3.5-large": {"num_layers": 38}, "sd3.5-medium": {"num_layers": 24}}
T5_LAYERS = 24
ENCODERS = {"flux": ("clip_l", "t5xxl"), "sd3": ("clip_l", "clip_g", "t5xxl")}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def family_of(layout: str) -> str:
    return "flux" if layout.startswith("flux") else "sd3"


def depth_note(layout: str, depth: int | None) -> str | None:
    """What the report and the record say of a reduced depth ("reduced depth: 1 of 19/38 blocks")."""
    if depth is None:
        return None
    real = REAL_DEPTHS[layout]
    return (f"reduced depth: {depth} of {'/'.join(str(n) for n in real.values())} blocks "
            f"and {depth} of {T5_LAYERS} T5 layers; every width is the real model's")


def _t5_component(family: str) -> str:
    return "text_encoder_2" if family == "flux" else "text_encoder_3"


def _link_other_folders(root: Path, keep: str) -> None:
    # The app reads every family's configs from one root; the others stay the real ones.
    for entry in CONFIG_ROOT.iterdir():
        if entry.name != keep and not (root / entry.name).exists():
            (root / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())


def reduced_config_root(layout: str, depth: int | None, root: Path) -> Path:
    """A config root for the app: the layout's real folder with `depth` blocks of each kind and
    `depth` T5 layers (the real root itself when depth is None)."""
    if depth is None:
        return CONFIG_ROOT
    if depth < 1:
        raise ValueError(f"--depth must be 1 or more, not {depth}")
    folder = root / layout
    shutil.copytree(CONFIG_ROOT / layout, folder)
    path = folder / "transformer" / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key, real in REAL_DEPTHS[layout].items():
        config[key] = min(depth, real)
    if "dual_attention_layers" in config:
        config["dual_attention_layers"] = [i for i in config["dual_attention_layers"] if i < depth]
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    t5 = folder / _t5_component(family_of(layout)) / "config.json"
    t5_config = json.loads(t5.read_text(encoding="utf-8"))
    t5_config["num_layers"] = min(depth, T5_LAYERS)
    t5.write_text(json.dumps(t5_config, indent=2), encoding="utf-8")
    _link_other_folders(root, layout)
    return root


def tiny_config_root(layout: str, root: Path) -> Path:
    """The tiny test model's config folder (engine/models/tiny_flow_models.py) with the real
    tokenizers and scheduler config, for `--tiny`."""
    flow_files.write_tiny_config_folder(layout, build_tiny_flow_components(layout), root / layout)
    _link_other_folders(root, layout)
    return root


@contextlib.contextmanager
def recognised_at_depth(layout: str, depth: int | None):
    """The app tells SD 3.5 Large from Medium by counting joint blocks (38 / 24); a file of
    `depth` blocks is taken for the layout being measured while this is open. FLUX.1 is told by
    its keys, whatever the depth."""
    if depth is None or family_of(layout) != "sd3":
        yield
        return
    from engine.families.sd3 import SD3

    real = SD3.variant_of
    variant = {"sd3.5-large": "SD 3.5 Large", "sd3.5-medium": "SD 3.5 Medium"}[layout]

    def at_depth(shapes, prefix):
        start = prefix + "joint_blocks."
        blocks = 1 + max(int(key[len(start):].split(".", 1)[0]) for key in shapes if key.startswith(start))
        return variant if blocks == depth else real(shapes, prefix)

    SD3.variant_of = at_depth   # the instance's, over the class's
    try:
        yield
    finally:
        del SD3.variant_of


@contextlib.contextmanager
def _parameters_on_meta():
    """Modules built inside create their parameters on the meta device (buffers stay real:
    position ids and the like are computed, not learned)."""
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def _build_empty(library: str, class_name: str, config_dir: Path):
    if library == "diffusers":
        import diffusers

        cls = getattr(diffusers, class_name)
        return cls.from_config(cls.load_config(str(config_dir)))
    import transformers

    config_class = transformers.T5Config if class_name.startswith("T5") else transformers.CLIPTextConfig
    return getattr(transformers, class_name)(config_class.from_pretrained(str(config_dir)))


@torch.no_grad()
def _fill(module: torch.nn.Module, dtype: torch.dtype, generator: torch.Generator) -> None:
    """Allocate each meta parameter in `dtype` and fill it: matrices, convolutions and embeddings
    normal with std 1/sqrt(fan-in) (activations stay in range through the blocks), norm scales 1,
    biases 0."""
    made: dict[int, torch.nn.Parameter] = {}  # a tied weight (T5's embedding) stays one tensor
    for owner in module.modules():
        for name, param in list(owner._parameters.items()):
            if param is None:
                continue
            if id(param) in made:
                owner._parameters[name] = made[id(param)]
                continue
            tensor = torch.empty(param.shape, dtype=dtype, device="cpu")
            if tensor.ndim >= 2:
                tensor.normal_(0.0, 1.0 / math.sqrt(math.prod(tensor.shape[1:])), generator=generator)
            elif name == "bias":
                tensor.zero_()
            else:
                tensor.fill_(1.0)
            owner._parameters[name] = made[id(param)] = torch.nn.Parameter(tensor, requires_grad=False)
    for buffer_owner in module.modules():
        for name, buffer in buffer_owner._buffers.items():
            if buffer is not None and buffer.is_floating_point():
                buffer_owner._buffers[name] = buffer.to(dtype)


def build_random(config_dir: Path, layout: str, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.nn.Module]:
    """Every component a config folder describes, random, in `dtype`, on the CPU, in eval mode."""
    family = family_of(layout)
    generator = torch.Generator().manual_seed(seed)
    built = {}
    for name, (library, class_name) in FLOW_COMPONENT_CLASSES[family].items():
        with _parameters_on_meta():
            module = _build_empty(library, class_name, config_dir / name)
        _fill(module, dtype, generator)
        built[name] = module.eval()
    if family == "sd3":
        # SD 3's CLIP-L pooled output is taken unprojected: the loader gives it an identity projection.
        projection = built["text_encoder"].text_projection.weight
        projection.copy_(torch.eye(*projection.shape, dtype=dtype))
    return built


@torch.no_grad()
def fingerprint(components: dict[str, torch.nn.Module]) -> dict[str, float]:
    """Per component, the sum of every weight: equal sums mean the file held these weights."""
    return {name: float(sum(p.detach().double().sum().item() for p in module.parameters()))
            for name, module in components.items() if isinstance(module, torch.nn.Module)}


def loaded_components(pipe, layout: str) -> dict[str, torch.nn.Module]:
    return {name: getattr(pipe, name) for name in FLOW_COMPONENT_CLASSES[family_of(layout)]}


def write_checkpoint(components: dict, layout: str, path: Path) -> Path:
    """All in one, as the published all-in-one files: the transformer under
    `model.diffusion_model.`, the encoders under `text_encoders.<name>.transformer.`, the VAE."""
    family = family_of(layout)
    return flow_files.write(flow_files.single_file_state(family, components, ENCODERS[family]), path)


def write_in_child(config_root: Path, layout: str, path: Path, dtype: str, tiny: bool = False,
                   seed: int = 0) -> dict:
    """build + write in a child process (its memory is handed back when it ends); returns the
    fingerprint and parameter counts."""
    command = [sys.executable, "-m", "bench.flow_model", "--config-dir", str(config_root / layout),
               "--layout", layout, "--out", str(path), "--dtype", dtype, "--seed", str(seed)]
    subprocess.run(command + (["--tiny"] if tiny else []), check=True, cwd=Path(__file__).resolve().parents[1])
    summary = path.with_suffix(".json")
    data = json.loads(summary.read_text())
    summary.unlink()
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="write a random-weight FLUX.1 / SD 3.5 single file")
    parser.add_argument("--config-dir", type=Path, required=True)
    parser.add_argument("--layout", choices=FLOW_LAYOUTS, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="the tiny test model (its own seeded weights)")
    args = parser.parse_args(argv)
    if args.tiny:
        components = build_tiny_flow_components(args.layout, seed=args.seed)
    else:
        components = build_random(args.config_dir, args.layout, DTYPES[args.dtype], args.seed)
    write_checkpoint(components, args.layout, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"fingerprint": fingerprint(components),
         "parameters": {name: sum(p.numel() for p in module.parameters()) for name, module in components.items()}}))


if __name__ == "__main__":
    main()
