"""What loading and switching checkpoints costs, and how much RAM a load takes beside the file.

    python -m bench.model_switch [--workdir DIR] [--rebuild]

Builds two single-file checkpoints with the full SD 1.5 architecture and random weights (float32,
4.27 GB each, the size of v1-5-pruned-emaonly.safetensors; kept in --workdir for the next run),
then, through the engine as the app runs it (on this machine's device):

- a cold load of A (its pages dropped from the page cache first), then a cold switch to B;
- a switch back to A and to B again, from the RAM cache (`sd_checkpoint_cache` 1);
- a switch back to A with the cache off (0): the file is read again, from a warm page cache;
- each followed by the first image (64x64, 1 step), which pays for any weight still on disk,
  since a .safetensors file is memory-mapped and read when its weights are first used, and by a
  second image, which shows what the image itself costs;
- the peak RSS while loading (anonymous memory and file pages, above what was in use before);
- a half-precision load for a GPU, with the `meta` device standing in for the GPU so that only
  the RAM the load needs on the way is measured, as loaded now and as loaded before (converted
  while reading: a whole half-precision copy in RAM before the move).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from .record import write  # noqa: E402

GIB = 1 << 30
CHECKPOINTS = {"switch-a": 1, "switch-b": 2}  # file name -> seed of its random weights


def build_checkpoint(path: Path, seed: int) -> None:
    """One SD 1.5-shaped .safetensors file in the layout users download, random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.models.loading import CONFIG_ROOT
    from tests.support.ldm_export import ldm_state_dict

    config = CONFIG_ROOT / "sd1"
    torch.manual_seed(seed)
    parts = argparse.Namespace(
        unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet")),
        vae=AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae")),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder")))
    state = ldm_state_dict(parts, "sd1")
    del parts
    # One tensor at a time, so the originals go as their copies are made (one model in RAM).
    tensors = {key: state.pop(key).detach().contiguous().clone() for key in list(state)}
    partial = path.with_suffix(".partial")
    save_file(tensors, str(partial), metadata={"format": "pt"})
    os.replace(partial, path)


def drop_from_page_cache(path: Path) -> None:
    """Make the next read of `path` come from the disk (only this file's pages are dropped)."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def memory() -> dict[str, float]:
    """This process's resident memory in GiB: all, anonymous, and pages of mapped files."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024 / GIB
    return {"rss": fields["VmRSS"], "anon": fields["RssAnon"], "file": fields["RssFile"]}


class PeakMemory:
    """The highest resident memory above the starting point while the block runs."""

    def __enter__(self):
        self.start = memory()
        self.peak = dict(self.start)
        self._running = True
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while self._running:
            now = memory()
            self.peak = {key: max(self.peak[key], now[key]) for key in now}
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.above = {key: round(self.peak[key] - self.start[key], 3) for key in self.peak}


def timed(action):
    start = time.perf_counter()
    result = action()
    return result, round(time.perf_counter() - start, 3)


def half_precision_load(path: Path, convert_while_reading: bool) -> dict:
    """RAM a half-precision load for a GPU needs on the way (`meta` stands in for the GPU)."""
    import engine.models.loading as loading
    from engine.devices import DeviceConfig
    from engine.models.registry import CheckpointInfo

    real = loading.stored_dtype
    if convert_while_reading:  # as before: every tensor converted on the CPU, then moved
        loading.stored_dtype = lambda path: None
    try:
        info = CheckpointInfo(path.name, str(path), "safetensors")
        with PeakMemory() as peak:
            _, seconds = timed(lambda: loading.load_single_file(
                info, DeviceConfig(torch.device("meta"), torch.float16), loading.CONFIG_ROOT, False))
    finally:
        loading.stored_dtype = real
    return {"seconds": seconds, "peak_above_start_gib": peak.above}


def switching(workdir: Path) -> tuple[dict, float]:
    """The switches through the engine; returns the figures and the seconds spent hashing."""
    from engine.addons import AddOns
    from engine.models.checkpoint_cache import CheckpointCache
    from engine.devices import DeviceConfig
    from engine.engine import Engine
    from engine.files import HashCache
    from engine.models.registry import ModelRegistry
    from engine.output.writer import OutputWriter
    from engine.models.pipelines import ModelManager
    from engine.request import GenerationRequest
    from engine.settings.store import Settings

    data = Path(tempfile.mkdtemp(prefix="data-", dir=workdir))
    settings = Settings(data / "config.json")
    settings.update({"sd_checkpoint_cache": 1})
    hashes = HashCache(workdir / "hashes.json")
    registry = ModelRegistry([workdir / "models"], hashes)
    device = DeviceConfig.choose()
    models = ModelManager(registry, device, cache=CheckpointCache(lambda: settings["sd_checkpoint_cache"]))
    engine = Engine(models, OutputWriter(data / "outputs"), settings, AddOns.in_data_dir(data, hashes))
    # The app hashes a file the first time it loads it, then remembers: not part of a switch.
    _, hashing = timed(lambda: [registry.with_hash(info) for info in registry.checkpoints])
    request = GenerationRequest(prompt="a cat", steps=1, width=64, height=64, sampler_name="Euler",
                                seed=1, save_images=False, save_grid=False)
    steps = {}

    def step(label: str, name: str) -> None:
        with PeakMemory() as peak:
            _, load = timed(lambda: engine.load_checkpoint(name).outcome())
        _, first_image = timed(lambda: engine.generate(request))
        _, next_image = timed(lambda: engine.generate(request))  # all weights in RAM by now
        steps[label] = {"load_s": load, "first_image_s": first_image, "next_image_s": next_image,
                        "peak_above_start_gib": peak.above, "rss_after_image_gib":
                            {key: round(value, 3) for key, value in memory().items()}}
        print(f"{label:41s} load {load:6.3f} s, first image {first_image:6.3f} s (next {next_image:.3f}), "
              f"peak RSS +{peak.above['rss']:.2f} GiB (anonymous +{peak.above['anon']:.2f})", flush=True)

    try:
        for name in CHECKPOINTS:
            drop_from_page_cache(workdir / "models" / f"{name}.safetensors")
        step("cold load A", "switch-a")
        step("cold switch to B", "switch-b")
        step("switch back to A (cached)", "switch-a")
        step("switch back to B (cached)", "switch-b")
        settings.update({"sd_checkpoint_cache": 0})
        step("switch to A, cache off (page cache warm)", "switch-a")
    finally:
        engine.shutdown()
    return {"device": device.name, "dtype": str(device.dtype), "steps": steps}, hashing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "sd-studio-bench")
    parser.add_argument("--rebuild", action="store_true", help="write the checkpoint files again")
    parser.add_argument("--build", nargs=2, metavar=("PATH", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build:  # the child process that writes one file
        build_checkpoint(Path(args.build[0]), int(args.build[1]))
        return

    models = args.workdir / "models"
    models.mkdir(parents=True, exist_ok=True)
    for name, seed in CHECKPOINTS.items():
        path = models / f"{name}.safetensors"
        if args.rebuild or not path.is_file():
            print(f"writing {path} ...", flush=True)
            # In a child process: its peak RAM is gone before anything is measured here.
            subprocess.run([sys.executable, "-m", "bench.model_switch", "--build", str(path), str(seed)],
                           check=True)
    path_a = models / "switch-a.safetensors"
    file_gib = path_a.stat().st_size / GIB
    print(f"checkpoint files: {file_gib:.2f} GiB each (SD 1.5 architecture, float32)", flush=True)
    import diffusers.pipelines.stable_diffusion  # noqa: F401  (imports are not part of a load)

    half = {"now": half_precision_load(path_a, convert_while_reading=False),
            "before": half_precision_load(path_a, convert_while_reading=True)}
    for label, figures in half.items():
        print(f"half precision for a GPU ({label}): peak anonymous RAM "
              f"+{figures['peak_above_start_gib']['anon']:.2f} GiB, {figures['seconds']:.1f} s", flush=True)
    figures, hashing = switching(args.workdir)
    path = write("model_switch", {"file_gib": round(file_gib, 3), "hashing_both_files_s": hashing,
                                  "half_precision_load_for_gpu": half, **figures})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
