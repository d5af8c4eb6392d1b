"""What a Checkpoint Merger merge costs: peak RAM against the models' sizes, and seconds per GB.

    python -m bench.merge [--gib 2] [--dtype f16|f32] [--method "Weighted sum"|"Add difference"]
                          [--half] [--workdir DIR] [--out DIR]
    python -m bench --merge ...   (the same)

Writes two (three for Add difference) checkpoints of --gib GiB each with random weights, in the SD
1.x single-file layout the merger recognises (the real first UNet layer and text encoder key, the
rest in tensors of up to 16M elements, as the largest of SD 1.5 and SDXL are), streamed to disk so
the writing process never holds a model either. Then merges them in a child process, through the
engine's CheckpointMerger as the tab and the API run it. The child's resident set size is
sampled every 5 ms during the merge (bench/measure.py's PeakMemory): its peak above what the
process held before the merge (Python, torch) is the merge's RAM, set against one model's size;
getrusage's peak over the child's whole life is recorded too. The merge is checked: one tensor
of the result against the formula.

The checkpoints folder is read with hashing off (`--no-hashing`): with hashing on, the sha256 of
each input and of the result is read once more (the recipe's hashes; cached afterwards). The
files were just written, so they are read from the page cache: on a cold disk the merge runs at
the disk's speed instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .record import RESULTS, write

GIB = 1024 ** 3
BIG_TENSOR = 16 * 1024 * 1024   # elements
UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
TEXT_KEY = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
PROBE = "model.diffusion_model.blocks.0.weight"
DTYPES = {"f16": torch.float16, "f32": torch.float32}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.merge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.0, help="size of each model in GiB (default 2)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="f16", help="the models' precision")
    parser.add_argument("--method", default="Weighted sum", choices=("Weighted sum", "Add difference"))
    parser.add_argument("--half", action="store_true", help="save as float16")
    parser.add_argument("--workdir", type=Path, default=None, help="where the models go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON record (default bench/results)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def model_plan(gib: float, dtype: torch.dtype) -> dict[str, tuple[int, ...]]:
    """Key -> shape: the keys that make it an SD 1.x file, then big tensors up to the size."""
    plan = {UNET_IN: (320, 4, 3, 3), TEXT_KEY: (1000, 768)}
    remaining = int(gib * GIB) // dtype.itemsize - sum(math.prod(s) for s in plan.values())
    index = 0
    while remaining > 0:
        count = min(BIG_TENSOR, remaining)
        plan[f"model.diffusion_model.blocks.{index}.weight"] = (count,)
        remaining -= count
        index += 1
    return plan


def write_model(path: Path, plan: dict, dtype: torch.dtype, seed: int) -> None:
    from engine.merge.safetensors_stream import SafetensorsWriter

    generator = torch.Generator().manual_seed(seed)
    with open(path, "wb") as handle:
        writer = SafetensorsWriter(handle, {key: (dtype, shape) for key, shape in plan.items()}, {"format": "pt"})
        for key, shape in plan.items():
            writer.write(key, torch.randn(shape, generator=generator).to(dtype))
        writer.finish()


def child(spec: str) -> None:
    """In the measured process: import, then (unless only the imports are measured) merge."""
    from engine.files import HashCache
    from engine.merge.checkpoint_merger import CheckpointMerger
    from engine.merge.merge_request import MergeRequest
    from engine.models.registry import ModelRegistry

    from .measure import PeakMemory

    job = json.loads(spec)
    folder = Path(job["folder"])
    registry = ModelRegistry([folder], HashCache(folder.parent / "cache.json"), hashing=False)
    merger = CheckpointMerger(registry, None)
    request = MergeRequest("a", "b", "c" if job["method"] == "Add difference" else "", job["method"], 0.3,
                           job["half"], "merged", overwrite=True)
    with PeakMemory(torch.device("cpu")).measuring() as memory:
        started = time.perf_counter()
        result = merger.merge(request)
        seconds = time.perf_counter() - started
    print(json.dumps({"rss_before": memory.before, "rss_peak": memory.peak, "ru_maxrss": _own_peak(),
                      "seconds": seconds, "path": str(result.path)}))


def _own_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # KiB on Linux


def _run_child(job: dict) -> dict:
    output = subprocess.run([sys.executable, "-m", "bench.merge", "--child", json.dumps(job)], check=True,
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent).stdout
    return json.loads(output.strip().splitlines()[-1])


def check_result(folder: Path, path: Path, method: str, half: bool) -> bool:
    """One tensor of the result against the formula, in float64."""
    from safetensors import safe_open

    def read(name: str) -> torch.Tensor:
        with safe_open(str(name), framework="pt") as handle:
            return handle.get_tensor(PROBE)

    a, b = read(folder / "a.safetensors"), read(folder / "b.safetensors")
    if method == "Weighted sum":
        expected = a.double() * 0.7 + b.double() * 0.3
    else:
        expected = a.double() + (b.double() - read(folder / "c.safetensors").double()) * 0.3
    stored = torch.float16 if half and a.dtype == torch.float32 else a.dtype
    return torch.equal(read(path), expected.to(stored))


def run(args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sd-studio-merge-bench-"))
    folder = workdir / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    dtype = DTYPES[args.dtype]
    plan = model_plan(args.gib, dtype)
    names = ["a", "b"] + (["c"] if args.method == "Add difference" else [])
    for seed, name in enumerate(names):
        write_model(folder / f"{name}.safetensors", plan, dtype, seed)
    os.sync()   # the inputs on disk before the clock starts: their write-back is not the merge's
    model_bytes = (folder / "a.safetensors").stat().st_size
    largest = max(math.prod(s) for s in plan.values()) * dtype.itemsize
    try:
        merged = _run_child({"folder": str(folder), "method": args.method, "half": args.half})
        correct = check_result(folder, Path(merged["path"]), args.method, args.half)
    finally:
        if args.workdir is None:
            for path in folder.iterdir():
                path.unlink()
    above = merged["rss_peak"] - merged["rss_before"]
    return {"model_gib": model_bytes / GIB, "models": len(names), "dtype": args.dtype, "method": args.method,
            "save_as_half": args.half, "largest_tensor_mib": largest / 2**20,
            "peak_rss_gib": merged["rss_peak"] / GIB, "rss_before_merge_gib": merged["rss_before"] / GIB,
            "lifetime_peak_rss_gib": merged["ru_maxrss"] / GIB, "merge_rss_gib": above / GIB, "merge_rss_per_model": above / model_bytes,
            "seconds": merged["seconds"], "seconds_per_gib_of_model": merged["seconds"] / (model_bytes / GIB),
            "result_checked": correct, "threads": os.cpu_count()}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child is not None:
        child(args.child)
        return {}
    record = run(args)
    path = write(f"merge-{args.dtype}-{args.gib:g}gib", record, folder=args.out or RESULTS)
    print(f"Merged {record['models']} models of {record['model_gib']:.2f} GiB ({record['dtype']}, {record['method']}): "
          f"{record['seconds']:.1f} s, {record['seconds_per_gib_of_model']:.2f} s per GiB of model; peak RSS "
          f"{record['peak_rss_gib']:.2f} GiB, {record['merge_rss_gib']:.3f} GiB above the process before the merge "
          f"({record['merge_rss_per_model']:.3f} x one model; largest tensor {record['largest_tensor_mib']:.0f} MiB); "
          f"result {'matches' if record['result_checked'] else 'DOES NOT MATCH'} the formula. Record: {path}")
    return record


if __name__ == "__main__":
    main()
