"""Plain diffusers against this app, on the full-size SD 1.5, SDXL, FLUX.1 or SD 3.5 architecture.

    python -m bench [--family sd1|sdxl|flux-dev|flux-schnell|sd3.5-large|sd3.5-medium] [--sdxl]
                    [--size 512] [--steps 20] [--repeats 5] [--device cuda|cpu] [--api]
                    [--no-compile] [--ablate] [--tiny] [--depth N] [--memory-modes]

One process builds the model with random weights (no download: speed does not depend on the
values), writes it as a single-file checkpoint, starts the app on it (app.build, as
`python app.py --ckpt <file>`), and runs the same job (seed, size, steps, sampler, CFG) through
(a) plain diffusers on the same weights and (b) the engine as a click in the UI runs it,
alternating, after a warm-up of each. It reports for each: denoising it/s, seconds per image end
to end, peak memory, the ratios (b)/(a), and how far the two images are apart. On a GPU the
engine runs again with the `torch_compile` setting on (unless --no-compile); --ablate measures
each fast-path piece by turning it off alone; --api compares POST /sdapi/v1/txt2img with calling
the engine directly. A JSON record goes to bench/results/ (or --out).

FLUX.1 and SD 3.5 (bench/flow_model.py) are written as the all-in-one single file users download
(the FLUX transformer under BFL's names) and run against FluxPipeline / StableDiffusion3Pipeline
(bench/plain_flow.py): Euler, CFG 1 with distilled guidance 3.5 for FLUX.1-dev, CFG 4.5 for SD 3.5.
--depth N keeps every width of the real architecture but N blocks of each kind and N T5 layers
(full-size FLUX.1 does not fit in a small machine's RAM); the report and the record say so.
--memory-modes runs the engine again under each memory mode (none, medvram, lowvram): it/s and
peak memory per mode (on the CPU the offload modes act as none, so this is for a GPU).

`python -m bench --merge` measures the Checkpoint Merger instead (bench/merge.py: peak RAM against
the models' sizes, seconds per GB).

On a CPU the defaults are a small image and few steps, so that it ends in a few minutes.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from engine.runs.fast_path import PIECES
from engine.jobs import Job as LaneJob
from engine.models.loading import CONFIG_ROOT
from engine.models.tiny_flow_models import FLOW_LAYOUTS

from . import app_side, flow_model, plain, plain_flow, random_model
from .measure import CallCounter, DenoiseTimer, PeakMemory, Runs, SyncCounter, image_difference
from .record import RESULTS, environment, write
from .report import print_report

# RAM the full-size flow models take on the CPU (float32: the engine's CPU precision), in GiB.
CPU_FULL_SIZE_GIB = {"flux-dev": 68, "flux-schnell": 68, "sd3.5-large": 54, "sd3.5-medium": 32}
PROMPT = "a photo of an astronaut riding a horse on the moon, detailed, sharp focus"
NEGATIVE = "blurry, low quality"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=random_model.FAMILIES + FLOW_LAYOUTS, default=None,
                        help="the architecture (default sd1)")
    parser.add_argument("--sdxl", action="store_true", help="SDXL instead of SD 1.5 (--family sdxl)")
    parser.add_argument("--depth", type=int, default=None,
                        help="FLUX.1 / SD 3.5: keep every width but only N blocks of each kind and N T5 layers")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="default: cuda when there is one")
    parser.add_argument("--size", type=int, default=None,
                        help="image side in pixels (default 512, SDXL 1024; CPU 128)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default 20; CPU 3)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per side (default 5; CPU 3)")
    parser.add_argument("--cfg", type=float, default=None, help="CFG scale (default 7; FLUX.1 1, SD 3.5 4.5)")
    parser.add_argument("--distilled-cfg", type=float, default=3.5, help="FLUX.1-dev's distilled guidance")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--sampler", default="Euler")
    parser.add_argument("--api", action="store_true",
                        help="also time POST /sdapi/v1/txt2img against calling the engine directly")
    parser.add_argument("--no-compile", action="store_true", help="skip the run with torch_compile on")
    parser.add_argument("--compile-mode", default=None, help="torch_compile_mode for that run")
    parser.add_argument("--ablate", action="store_true", help="time the engine with each fast-path piece off")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny test architecture instead of the real one: checks the benchmark itself")
    parser.add_argument("--memory-modes", action="store_true",
                        help="also run the engine in each memory mode (none, medvram, lowvram)")
    parser.add_argument("--force", action="store_true",
                        help="run a full-size FLUX.1 / SD 3.5 on the CPU even if it does not seem to fit in RAM")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON record")
    args = parser.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = args.device == "cuda"
    if args.sdxl and args.family not in (None, "sdxl"):
        parser.error(f"--sdxl and --family {args.family} contradict each other")
    args.family = args.family or ("sdxl" if args.sdxl else "sd1")
    args.sdxl = args.family == "sdxl"
    flow = args.family in FLOW_LAYOUTS
    if args.depth is not None and (not flow or args.tiny or args.depth < 1):
        parser.error("--depth N (N >= 1) is for the full-size FLUX.1 / SD 3.5 families, not with --tiny")
    if args.cfg is None:
        args.cfg = (1.0 if args.family.startswith("flux") else 4.5) if flow else 7.0
    big = args.family in ("sdxl",) + FLOW_LAYOUTS
    args.size = args.size or (64 if args.tiny else (1024 if big else 512) if gpu else 128)
    if flow and args.size % 16:
        parser.error(f"--size {args.size}: FLUX.1 and SD 3.5 take sizes in multiples of 16")
    if flow and not gpu and not args.tiny and args.depth is None and not args.force:
        import psutil

        need, free = CPU_FULL_SIZE_GIB[args.family], psutil.virtual_memory().available / 2**30
        if need > free:
            parser.error(f"full-size {args.family} in float32 takes about {need} GiB of RAM, {free:.0f} GiB is "
                         "free: add --depth N (the real widths, N blocks of each kind) or --force")
    args.steps = args.steps or ((4 if args.family == "flux-schnell" else 20) if gpu else 3)
    args.repeats = args.repeats or (5 if gpu else 3)
    return args


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.device = torch.device(args.device)
        self.workdir = workdir
        self.flow = args.family in FLOW_LAYOUTS
        self.job = plain.Job(PROMPT, NEGATIVE, args.seed, args.size, args.size, args.steps,
                             args.cfg, args.sampler, args.distilled_cfg)
        self.record: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                                          for k, v in vars(args).items()}}

    # Setting up.
    def make_checkpoint(self) -> Path:
        if self.flow:
            return self.make_flow_checkpoint()
        config_root = random_model.tiny_config_root(self.workdir / "configs") if self.args.tiny else CONFIG_ROOT
        self.config_root = config_root
        started = time.perf_counter()
        path = self.workdir / "data" / "models" / "Stable-diffusion" / f"random-{self.args.family}.safetensors"
        written = random_model.write_in_child(config_root / self.args.family, self.args.family, path)
        self.fingerprint = written["fingerprint"]
        self.record["parameters"] = written["parameters"]
        self.record["checkpoint"] = {"bytes": path.stat().st_size, "build_s": time.perf_counter() - started}
        return path

    def make_flow_checkpoint(self) -> Path:
        """FLUX.1 / SD 3.5 at full width (and `--depth`), written all in one, in bf16 as published."""
        args, configs = self.args, self.workdir / "configs"
        if args.tiny:
            self.config_root = flow_model.tiny_config_root(args.family, configs)
        else:
            self.config_root = flow_model.reduced_config_root(args.family, args.depth, configs)
        started = time.perf_counter()
        path = self.workdir / "data" / "models" / "Stable-diffusion" / f"random-{args.family}.safetensors"
        written = flow_model.write_in_child(self.config_root, args.family, path, "bfloat16", tiny=args.tiny)
        self.fingerprint = written["fingerprint"]
        self.record["parameters"] = written["parameters"]
        self.record["checkpoint"] = {"bytes": path.stat().st_size, "build_s": time.perf_counter() - started,
                                     "dtype": "float32" if args.tiny else "bfloat16"}
        return path

    def start_app(self, checkpoint: Path):
        started = time.perf_counter()
        self.ctx = app_side.build_app(self.workdir / "data", checkpoint, self.args.device,
                                      None if self.config_root == CONFIG_ROOT else self.config_root,
                                      api=self.args.api)
        self.engine = self.ctx.engine
        self.model = self.engine.models.current
        self.record["checkpoint"]["load_s"] = time.perf_counter() - started
        if self.flow:
            loaded = flow_model.fingerprint(flow_model.loaded_components(self.model.base, self.args.family))
            self.record["checkpoint"]["loaded_as"] = self.model.detected.source
        else:
            loaded = random_model.fingerprint(self.model.base)
        self.record["checkpoint"]["weights_match_file"] = random_model.fingerprints_match(self.fingerprint, loaded)
        self.record["lane_threads"] = self.engine.queue.submit(
            LaneJob(lambda job: torch.get_num_threads(), kind="probe")).outcome()
        if self.flow:
            self.plain = plain_flow.flow_pipeline(self.model.base, self.model.family)
            self.plain_denoiser, self.engine_denoiser = self.plain.transformer, self.model.base.transformer
        else:
            self.plain = plain.plain_pipeline(self.model.base, self.model.family, self.model.scheduler_config,
                                              self.job)
            self.plain_denoiser, self.engine_denoiser = self.plain.unet, self.model.base.unet

    # Running.
    def run_plain(self, job: plain.Job):
        # On the engine's own worker thread, as its jobs are: on Linux the main thread's heap
        # hands memory back to the system between images and takes about three times the page
        # faults (measured: ~30% more CPU time per step on a CPU), which is no fault of diffusers.
        if self.flow:
            sigmas = plain_flow.unshifted_sigmas(self.model, job.steps) if self.model.family == "sd3" else None
            work = LaneJob(lambda lane_job: plain_flow.run(self.plain, job, self.model.family, sigmas), kind="bench")
        else:
            work = LaneJob(lambda lane_job: plain.run(self.plain, job), kind="bench")
        return self.engine.queue.submit(work).outcome()

    def run_engine(self, job: plain.Job):
        return app_side.run_engine(self.engine, app_side.click_request(job))

    def timed(self, unet, run, job: plain.Job, runs: Runs | None):
        timer = DenoiseTimer(unet, self.device)
        pipe = self.plain if run == self.run_plain else self.model.base
        encoders = CallCounter({name: module for name in ("text_encoder", "text_encoder_2", "text_encoder_3")
                                if isinstance(module := getattr(pipe, name, None), torch.nn.Module)})
        try:
            with PeakMemory(self.device).measuring() as memory:
                cpu_started = time.process_time()
                image, seconds = run(job)
                cpu_seconds = time.process_time() - cpu_started
        finally:
            timer.remove()
            encoders.remove()
        if runs is not None:
            runs.add(timer, seconds, cpu_seconds, memory, encoders)
        return image, timer

    def compare(self, label: str) -> dict:
        """Plain diffusers against the engine as it is set now, alternating run by run."""
        # A short warm-up: long enough on a GPU for a compile and a CUDA graph to be recorded.
        args = self.args
        warm = self.job.with_steps(min(2 if self.device.type == "cuda" else 1, self.job.steps))
        say(f"{label}: warm-up")
        self.timed(self.plain_denoiser, self.run_plain, warm, None)
        started = time.perf_counter()
        self.timed(self.engine_denoiser, self.run_engine, warm, None)
        warmup_s = time.perf_counter() - started
        plain_runs, engine_runs = Runs(), Runs()
        for index in range(args.repeats):
            say(f"{label}: run {index + 1} of {args.repeats}")
            sides = [(self.plain_denoiser, self.run_plain, plain_runs),
                     (self.engine_denoiser, self.run_engine, engine_runs)]
            for unet, run, runs in sides[::1 if index % 2 == 0 else -1]:  # ABBA: drift hits both alike
                image, _ = self.timed(unet, run, self.job, runs)
                if runs is plain_runs:
                    plain_image = image
                else:
                    engine_image = image
        base, result = plain_runs.summary(), engine_runs.summary()
        base["host_syncs_in_denoise"] = self.count_syncs(self.plain_denoiser, self.run_plain)
        result.update(
            warmup_s=warmup_s, host_syncs_in_denoise=self.count_syncs(self.engine_denoiser, self.run_engine),
            its_ratio=result["denoise_its"] / base["denoise_its"],
            seconds_ratio=result["seconds_per_image"] / base["seconds_per_image"],
            cpu_step_ratio=result["cpu_seconds_per_step"] / base["cpu_seconds_per_step"],
            cpu_seconds_ratio=result["cpu_seconds_per_image"] / base["cpu_seconds_per_image"],
            image_difference=image_difference(plain_image, engine_image),
            vae_dtype=str(self.model.base.vae.dtype).replace("torch.", ""), plain=base)
        compiles = self.engine.fast_path.warmups(self.engine_denoiser)
        if compiles:
            result["compile_s"] = [round(seconds, 2) for _, seconds in compiles]
        return result

    def count_syncs(self, unet, run) -> int | None:
        if self.device.type != "cuda":
            return None
        counter = SyncCounter()
        with counter.counting(self.device):
            _, timer = self.timed(unet, run, self.job, None)
        return counter.within(timer.window)

    def ablate(self) -> dict:
        results = {}
        for piece in ("all",) + PIECES:
            self.engine.fast_path.disabled = set(PIECES) if piece == "all" else {piece}
            result = self.compare(f"engine without {piece}")
            results[f"without_{piece}"] = {k: result[k] for k in ("denoise_its", "seconds_per_image", "its_ratio")}
        self.engine.fast_path.disabled = set()
        return results

    def api(self) -> dict:
        """POST /sdapi/v1/txt2img against Engine.submit with the request that route makes.

        Besides the wall times, what each call spends outside its job (the job's own span is
        on the Job): the denoising in between varies from run to run far more than the few
        milliseconds the API adds, so the difference of those is the steady measure."""
        import httpx

        body = app_side.api_body(self.job)
        request = app_side.api_request_for_engine(self.ctx, body)
        times: dict[str, list[float]] = {name: [] for name in (
            "engine", "api", "engine_cpu", "api_cpu", "engine_outside_job", "api_outside_job")}
        queue, jobs = self.engine.queue, []
        submit = queue.submit
        queue.submit = lambda job: jobs.append(job) or submit(job)  # to read each job's own span

        def measure(name: str, call):
            cpu = time.process_time()
            image, seconds = call()
            times[f"{name}_cpu"].append(time.process_time() - cpu)
            times[name].append(seconds)
            times[f"{name}_outside_job"].append(seconds - (jobs[-1].finished_at - jobs[-1].started_at))
            return image

        try:
            with app_side.ApiServer(self.ctx) as server, httpx.Client(timeout=3600) as client:
                say("API: warm-up")
                app_side.run_api(client, server.url, body)
                for index in range(self.args.repeats):
                    say(f"API: run {index + 1} of {self.args.repeats}")
                    direct_image = measure("engine", lambda: app_side.run_engine(
                        self.engine, request, make_grid=request.save_grid))
                    api_image = measure("api", lambda: app_side.run_api(client, server.url, body))
        finally:
            del queue.submit
        median = {name: statistics.median(values) for name, values in times.items()}
        added = median["api_outside_job"] - median["engine_outside_job"]
        return {"engine_direct_s": median["engine"], "api_s": median["api"],
                "engine_outside_job_s": median["engine_outside_job"],
                "api_outside_job_s": median["api_outside_job"],
                "overhead_s": added, "overhead_pct": 100 * added / median["engine"],
                "wall_overhead_pct": 100 * (median["api"] - median["engine"]) / median["engine"],
                "cpu_overhead_pct": 100 * (median["api_cpu"] - median["engine_cpu"]) / median["engine_cpu"],
                "all": times, "image_difference_api_vs_engine": image_difference(direct_image, api_image)}

    def memory_modes(self) -> dict:
        from .memory_modes import engine_memory_modes

        return engine_memory_modes(self)

    def run(self) -> dict:
        with flow_model.recognised_at_depth(self.args.family, self.args.depth):  # a no-op without --depth
            return self._run()

    def _run(self) -> dict:
        args = self.args
        self.record["load_average_start"] = os.getloadavg()  # other programs on the machine
        if self.flow and args.depth is not None:
            self.record["reduced_depth"] = flow_model.depth_note(args.family, args.depth)
            say(self.record["reduced_depth"])
        say(f"building a random {args.family} model{' (tiny)' if args.tiny else ''} and writing it as a checkpoint")
        checkpoint = self.make_checkpoint()
        say("starting the app on it (app.build, registry, single-file load)")
        self.start_app(checkpoint)
        self.record["engine"] = self.compare("plain vs engine")
        # The fast path's pieces (compile, fused projections, channels_last) are the UNet's: a flow
        # transformer runs as it is (engine/runs/fast_path.py), so there is nothing to switch.
        compile_on = self.device.type == "cuda" and not args.no_compile and not self.flow
        if compile_on:
            changes = {"torch_compile": True}
            if args.compile_mode:
                changes["torch_compile_mode"] = args.compile_mode
            self.ctx.settings.update(changes)
            self.record["engine_compiled"] = self.compare("plain vs engine with torch_compile")
            self.record["engine_compiled"]["mode"] = self.ctx.settings["torch_compile_mode"]
        if args.ablate and not self.flow:
            self.record["ablation"] = self.ablate()
        if args.memory_modes:
            self.record["memory_modes"] = self.memory_modes()
        if args.api:
            self.record["api"] = self.api()
        self.engine.shutdown()
        self.record["load_average_end"] = os.getloadavg()
        return self.record


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if "--merge" in argv:   # the Checkpoint Merger's benchmark (bench/merge.py)
        from .merge import main as merge_main
        return merge_main([arg for arg in argv if arg != "--merge"])
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="sd-studio-bench-"))
    try:
        record = Bench(args, workdir).run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    record["environment"] = environment()
    depth = f"-depth{args.depth}" if args.depth is not None else ""
    name = f"pipeline-{args.family}{'-tiny' if args.tiny else ''}{depth}-{args.device}"
    path = write(name, record, folder=args.out)
    print_report(record)
    say(f"written to {path}")
    return record


if __name__ == "__main__":
    main()
