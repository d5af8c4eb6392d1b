"""Peak memory and seconds per image in each memory mode, on the full-size SD 1.5 (or SDXL)
architecture with random weights (engine_memory_modes: the same modes in the app, for
`python -m bench --memory-modes`, which includes FLUX.1 and SD 3.5).

    python -m bench.memory_modes [--sdxl] [--size N] [--steps N] [--repeats N] [--compare]

The UNet, VAE and text encoder(s) are built from the configs in engine/models/model_configs with random
weights (no download); the same txt2img job (prompt encoding, denoising, VAE decode) runs in each
mode through the app's own code: none, medvram, lowvram (engine/memory/offload.py) and none with VAE
tiling and attention slicing (engine/memory/memory_modes.py).

On CUDA (float16; 512x512 for SD 1.5, 1024x1024 for SDXL, 20 steps): peak VRAM
(torch.cuda.max_memory_allocated) and seconds per image. --compare adds what lowvram was chosen
over: accelerate's sequential offload and block-level group offloading with streams.
On the CPU (float32, 256x256, 2 steps, one round): peak resident memory and seconds per image.
There the offload modes move weights from RAM to RAM: their rows show what the hooks cost, not a
saving. medvram's row overstates even that: diffusers names the CPU "cpu:0", which accelerate
does not take for the "cpu" the weights are on, so it copies the UNet at every step, where on a
GPU the UNet stays put for the whole denoising. Random weights compute as fast as real ones; the
pictures are noise.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from dataclasses import dataclass

import torch

from engine.models.loading import CONFIG_ROOT
from engine.memory.memory_modes import LOWVRAM, MEDVRAM, NONE, T5_CPU, MemoryModes, applied
from engine.memory.offload import Placement, pipeline_modules, remove_offload_hooks
from engine.networks.vae import decode_fitting

from .record import write

PROMPT = "a photo of a lighthouse on a cliff at sunset, dramatic clouds, highly detailed"
GiB = 2**30
# SDXL in float32 on the CPU takes about 14 GB of RAM: more than a shared test machine has spare.
CPU_SDXL_GIB = 14


@dataclass(frozen=True)
class Mode:
    name: str
    placement: str = NONE               # the memory_mode the weights are put in
    memory: MemoryModes = MemoryModes()  # per-job tiling and slicing
    compare: str = ""                   # an alternative placed by hand, for --compare


MODES = (Mode("none"), Mode("tiling+slicing", memory=MemoryModes(vae_tiling=True, attention_slicing=True)),
         Mode("medvram", MEDVRAM), Mode("lowvram", LOWVRAM))
# Run last: sequential offload leaves the weights on the meta device, with no way back.
COMPARED = (Mode("lowvram-block (group, block level, streams)", compare="block"),
            Mode("sequential (accelerate)", compare="sequential"))


def build_pipeline(family: str, dtype: torch.dtype):
    """The family's pipeline at full size, default (random) initialisation, on the CPU."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    root = CONFIG_ROOT / family
    parts = {
        "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(root / "unet"))),
        "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(str(root / "vae"))),
        "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(str(root / "text_encoder"))),
        "tokenizer": CLIPTokenizer.from_pretrained(str(root / "tokenizer")),
        "scheduler": EulerDiscreteScheduler.from_config(
            EulerDiscreteScheduler.load_config(str(root / "scheduler"))),
    }
    if family == "sdxl":
        parts["text_encoder_2"] = CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(str(root / "text_encoder_2")))
        parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(str(root / "tokenizer_2"))
        pipe = StableDiffusionXLPipeline(**parts, add_watermarker=False)
    else:
        pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    for module in pipeline_modules(pipe).values():
        torch.nn.Module.to(module, dtype=dtype).eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Meter:
    """Peak memory over a block: VRAM on CUDA, the process's resident set on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def in_use(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.memory_allocated(self.device)
        return _status_bytes("VmRSS")

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as refs:  # resets VmHWM, the high-water mark
                refs.write("5")

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated(self.device)
        return _status_bytes("VmHWM")


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{key}:\s+(\d+) kB", status.read(), re.M).group(1)) * 1024


def run_job(pipe, memory: MemoryModes, size: int, steps: int, device: torch.device) -> float:
    """One image as the app makes it; returns the seconds it took."""
    notes: list[str] = []
    start = time.perf_counter()
    with torch.inference_mode(), applied(pipe, memory):
        latents = pipe(prompt=PROMPT, negative_prompt="blurry", num_inference_steps=steps, height=size,
                       width=size, guidance_scale=7.0, generator=torch.Generator().manual_seed(0),
                       output_type="latent").images
        decode_fitting(pipe.vae, latents, notes)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def place(pipe, placement: Placement, mode: Mode) -> None:
    if not mode.compare:
        placement.ensure(mode.placement, [pipe])
        return
    placement.ensure(NONE, [pipe])
    if mode.compare == "sequential":
        pipe.enable_sequential_cpu_offload(device=placement.device)
        return
    from diffusers.hooks import apply_group_offloading

    for module in pipeline_modules(pipe).values():
        apply_group_offloading(module, onload_device=placement.device, offload_type="block_level",
                               num_blocks_per_group=1, use_stream=True)


def unplace(pipe, placement: Placement, mode: Mode) -> None:
    if mode.compare == "block":
        for module in pipeline_modules(pipe).values():
            remove_offload_hooks(module)
            module.to(placement.device)  # back where the placement (none) has it


def summary(runs: list[dict], none_runs: list[dict]) -> dict:
    peak = max(run["peak"] for run in runs)
    ratios = [run["seconds"] / plain["seconds"] for run, plain in zip(runs, none_runs)]
    return {"peak_bytes": peak, "peak_gib": round(peak / GiB, 3),
            "resident_gib": round(max(run["resident"] for run in runs) / GiB, 3),
            "seconds": round(statistics.median(run["seconds"] for run in runs), 3),
            "ratio_to_none": round(statistics.median(ratios), 3),
            "place_seconds": round(statistics.median(run["place_seconds"] for run in runs), 2),
            "rounds": len(runs)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--sdxl", action="store_true", help="SDXL instead of SD 1.5")
    parser.add_argument("--size", type=int, help="image side in pixels (CUDA: 512, SDXL 1024; CPU: 256)")
    parser.add_argument("--steps", type=int, help="sampling steps (CUDA: 20; CPU: 2)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="rounds of one image per mode (CUDA: 3; CPU: 1)")
    parser.add_argument("--compare", action="store_true",
                        help="CUDA only: also sequential offload and block-level group offloading")
    parser.add_argument("--force", action="store_true", help=f"SDXL on the CPU (about {CPU_SDXL_GIB} GB of RAM)")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    family = "sdxl" if args.sdxl else "sd1"
    if family == "sdxl" and not cuda and not args.force:
        parser.error(f"SDXL in float32 on the CPU needs about {CPU_SDXL_GIB} GB of RAM; add --force to run it")
    size = args.size or (256 if not cuda else 1024 if family == "sdxl" else 512)
    steps = args.steps or (20 if cuda else 2)
    repeats = args.repeats or (3 if cuda else 1)
    dtype = torch.float16 if cuda else torch.float32
    modes = MODES + (COMPARED if args.compare and cuda else ())

    torch.manual_seed(0)
    started = time.perf_counter()
    pipe = build_pipeline(family, dtype)
    print(f"{family}: built in {time.perf_counter() - started:.0f} s; {size}x{size}, {steps} steps, "
          f"{str(dtype).replace('torch.', '')} on {device.type}", flush=True)
    placement = Placement(device, offload_on_cpu=True)  # on the CPU: run the hooks all the same
    meter = Meter(device)
    place(pipe, placement, MODES[0])
    # Warm-up: kernels, the allocator, the VAE's upcast; on the CPU a small image does for that.
    run_job(pipe, MemoryModes(), size if cuda else min(size, 128), 1, device)

    # Rounds, each running every mode once: a machine that slows down or speeds up meanwhile (other
    # work on it) then affects every mode alike, and the ratio to none is taken within a round.
    runs: dict[str, list[dict]] = {mode.name: [] for mode in modes}
    failed: dict[str, str] = {}
    for round_ in range(repeats):
        for mode in modes:
            if mode.compare == "sequential" and round_ < repeats - 1:
                continue  # once, at the very end: nothing can run after it (see COMPARED)
            started = time.perf_counter()
            try:
                place(pipe, placement, mode)
                placing = time.perf_counter() - started
                resident = meter.in_use()
                meter.reset()
                seconds = run_job(pipe, mode.memory, size, steps, device)
            except Exception as error:  # an alternative that fails here must not cost the others
                if not mode.compare:
                    raise
                failed[mode.name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                print(f"  round {round_ + 1}: {mode.name}: failed: {failed[mode.name]}", flush=True)
                unplace(pipe, placement, mode)
                continue
            runs[mode.name].append({"seconds": seconds, "peak": meter.peak(), "resident": resident,
                                    "place_seconds": placing})
            unplace(pipe, placement, mode)
            print(f"  round {round_ + 1}: {mode.name}: {seconds:.2f} s", flush=True)
    results = {name: summary(items, runs["none"]) for name, items in runs.items() if items}
    for name, result in results.items():
        print(f"{name:44s} peak {'VRAM' if cuda else 'RSS '} {result['peak_gib']:6.2f} GiB  "
              f"(at rest {result['resident_gib']:5.2f})  {result['seconds']:7.2f} s/image  "
              f"{result['ratio_to_none']:5.2f}x none")
    tile = pipe.vae.tile_sample_min_size
    if size <= tile:
        print(f"(tiling does not engage at {size}x{size}: this VAE tiles images larger than {tile} pixels)")
    path = write("memory_modes", {"family": family, "device_type": device.type,
                                  "dtype": str(dtype).replace("torch.", ""), "size": size, "steps": steps,
                                  "repeats": repeats, "vae_tile_pixels": tile, "results": results,
                                  "failed": failed})
    print(f"written to {path}")


if __name__ == "__main__":
    main()


def engine_memory_modes(bench) -> dict:
    """The app's engine in each memory mode that places the weights (none, medvram, lowvram, and
    t5-cpu for a model with T5), as
    the memory_mode setting switches it while the app runs: it/s, s/image and peak memory per mode,
    for `python -m bench --memory-modes` (`bench`: its Bench, the app started on the checkpoint).

    Mode by mode, not in rounds: the setting takes effect at the next job, which then moves the
    weights, so each mode's warm-up job does the move and the timed jobs find them in place."""
    import gc

    from .measure import Runs

    modes = [mode for mode in MODES if mode.memory == MemoryModes() and not mode.compare]
    model = bench.engine.models.current
    if model is not None and model.mode_for(T5_CPU) == T5_CPU:   # FLUX.1 / SD 3.x: T5 kept on the CPU
        modes.append(Mode("t5-cpu", T5_CPU))
    # The plain pipeline's modules hold the engine's weights where they were first put (on the GPU):
    # they would stay there while an offload mode moves the engine's own modules away.
    bench.plain = bench.plain_denoiser = None
    gc.collect()
    if bench.device.type == "cuda":
        torch.cuda.empty_cache()
    results = {}
    for mode in modes:
        started = time.perf_counter()
        bench.ctx.settings.update({"memory_mode": mode.placement})
        print(f"memory mode {mode.name}: warm-up (places the weights)", flush=True)
        bench.timed(bench.engine_denoiser, bench.run_engine, bench.job.with_steps(1), None)
        placing = time.perf_counter() - started
        runs = Runs()
        for index in range(bench.args.repeats):
            print(f"memory mode {mode.name}: run {index + 1} of {bench.args.repeats}", flush=True)
            bench.timed(bench.engine_denoiser, bench.run_engine, bench.job, runs)
        items = [{"seconds": seconds, "peak": peak, "resident": peak - above, "place_seconds": placing}
                 for seconds, peak, above in zip(runs.seconds, runs.peak_bytes, runs.above_bytes)]
        results[mode.name] = {"items": items, "denoise_its": statistics.median(runs.its)}
    bench.ctx.settings.update({"memory_mode": modes[0].placement})
    none = results[modes[0].name]["items"]
    results = {name: {**summary(result.pop("items"), none), **result} for name, result in results.items()}
    if bench.device.type == "cpu":
        results["note"] = "on the CPU the offload modes act as none (there is no VRAM to save)"
    return results
