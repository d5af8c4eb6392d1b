"""Plain diffusers against this app, on the full-size SD 1.5 (or SDXL) architecture.

    python -m bench [--sdxl] [--size 512] [--steps 20] [--repeats 5] [--device cuda|cpu] [--api]
                    [--no-compile] [--ablate] [--tiny]

One process builds the model with random weights (no download: speed does not depend on the
values), writes it as a single-file checkpoint, starts the app on it (app.build, as
`python app.py --ckpt <file>`), and runs the same job (seed, size, steps, sampler, CFG) through
(a) plain diffusers on the same weights and (b) the engine as a click in the UI runs it,
alternating, after a warm-up of each. It reports for each: denoising it/s, seconds per image end
to end, peak memory, the ratios (b)/(a), and how far the two images are apart. On a GPU the
engine runs again with the `torch_compile` setting on (unless --no-compile); --ablate measures
each fast-path piece by turning it off alone; --api compares POST /sdapi/v1/txt2img with calling
the engine directly. A JSON record goes to bench/results/ (or --out).

On a CPU the defaults are a small image and few steps, so that it ends in a few minutes.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engine.runs.fast_path import PIECES
from engine.jobs import Job as LaneJob
from engine.models.loading import CONFIG_ROOT

from . import app_side, plain, random_model
from .measure import DenoiseTimer, PeakMemory, Runs, SyncCounter, image_difference
from .record import RESULTS, environment, write
from .report import print_report

PROMPT = "a photo of an astronaut riding a horse on the moon, detailed, sharp focus"
NEGATIVE = "blurry, low quality"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdxl", action="store_true", help="SDXL instead of SD 1.5")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="default: cuda when there is one")
    parser.add_argument("--size", type=int, default=None,
                        help="image side in pixels (default 512, SDXL 1024; CPU 128)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default 20; CPU 3)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per side (default 5; CPU 3)")
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--sampler", default="Euler")
    parser.add_argument("--api", action="store_true",
                        help="also time POST /sdapi/v1/txt2img against calling the engine directly")
    parser.add_argument("--no-compile", action="store_true", help="skip the run with torch_compile on")
    parser.add_argument("--compile-mode", default=None, help="torch_compile_mode for that run")
    parser.add_argument("--ablate", action="store_true", help="time the engine with each fast-path piece off")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny test architecture instead of the real one: checks the benchmark itself")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON record")
    args = parser.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = args.device == "cuda"
    args.family = "sdxl" if args.sdxl else "sd1"
    args.size = args.size or (64 if args.tiny else (1024 if args.sdxl else 512) if gpu else 128)
    args.steps = args.steps or (20 if gpu else 3)
    args.repeats = args.repeats or (5 if gpu else 3)
    return args


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.device = torch.device(args.device)
        self.workdir = workdir
        self.job = plain.Job(PROMPT, NEGATIVE, args.seed, args.size, args.size, args.steps,
                             args.cfg, args.sampler)
        self.record: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                                          for k, v in vars(args).items()}}

    # Setting up.
    def make_checkpoint(self) -> Path:
        config_root = random_model.tiny_config_root(self.workdir / "configs") if self.args.tiny else CONFIG_ROOT
        self.config_root = config_root
        started = time.perf_counter()
        path = self.workdir / "data" / "models" / "Stable-diffusion" / f"random-{self.args.family}.safetensors"
        written = random_model.write_in_child(config_root / self.args.family, self.args.family, path)
        self.fingerprint = written["fingerprint"]
        self.record["parameters"] = written["parameters"]
        self.record["checkpoint"] = {"bytes": path.stat().st_size, "build_s": time.perf_counter() - started}
        return path

    def start_app(self, checkpoint: Path):
        started = time.perf_counter()
        self.ctx = app_side.build_app(self.workdir / "data", checkpoint, self.args.device,
                                      self.config_root if self.args.tiny else None, api=self.args.api)
        self.engine = self.ctx.engine
        self.model = self.engine.models.current
        self.record["checkpoint"]["load_s"] = time.perf_counter() - started
        loaded = random_model.fingerprint(self.model.base)
        self.record["checkpoint"]["weights_match_file"] = random_model.fingerprints_match(self.fingerprint, loaded)
        self.record["lane_threads"] = self.engine.queue.submit(
            LaneJob(lambda job: torch.get_num_threads(), kind="probe")).outcome()
        self.plain = plain.plain_pipeline(self.model.base, self.model.family, self.model.scheduler_config, self.job)

    # Running.
    def run_plain(self, job: plain.Job):
        # On the engine's own worker thread, as its jobs are: on Linux the main thread's heap
        # hands memory back to the system between images and takes about three times the page
        # faults (measured: ~30% more CPU time per step on a CPU), which is no fault of diffusers.
        work = LaneJob(lambda lane_job: plain.run(self.plain, job), kind="bench")
        return self.engine.queue.submit(work).outcome()

    def run_engine(self, job: plain.Job):
        return app_side.run_engine(self.engine, app_side.click_request(job))

    def timed(self, unet, run, job: plain.Job, runs: Runs | None):
        timer = DenoiseTimer(unet, self.device)
        try:
            with PeakMemory(self.device).measuring() as memory:
                cpu_started = time.process_time()
                image, seconds = run(job)
                cpu_seconds = time.process_time() - cpu_started
        finally:
            timer.remove()
        if runs is not None:
            runs.add(timer, seconds, cpu_seconds, memory)
        return image, timer

    def compare(self, label: str) -> dict:
        """Plain diffusers against the engine as it is set now, alternating run by run."""
        # A short warm-up: long enough on a GPU for a compile and a CUDA graph to be recorded.
        args = self.args
        warm = self.job.with_steps(min(2 if self.device.type == "cuda" else 1, self.job.steps))
        say(f"{label}: warm-up")
        self.timed(self.plain.unet, self.run_plain, warm, None)
        started = time.perf_counter()
        self.timed(self.model.base.unet, self.run_engine, warm, None)
        warmup_s = time.perf_counter() - started
        plain_runs, engine_runs = Runs(), Runs()
        for index in range(args.repeats):
            say(f"{label}: run {index + 1} of {args.repeats}")
            sides = [(self.plain.unet, self.run_plain, plain_runs), (self.model.base.unet, self.run_engine, engine_runs)]
            for unet, run, runs in sides[::1 if index % 2 == 0 else -1]:  # ABBA: drift hits both alike
                image, _ = self.timed(unet, run, self.job, runs)
                if runs is plain_runs:
                    plain_image = image
                else:
                    engine_image = image
        base, result = plain_runs.summary(), engine_runs.summary()
        base["host_syncs_in_denoise"] = self.count_syncs(self.plain.unet, self.run_plain)
        result.update(
            warmup_s=warmup_s, host_syncs_in_denoise=self.count_syncs(self.model.base.unet, self.run_engine),
            its_ratio=result["denoise_its"] / base["denoise_its"],
            seconds_ratio=result["seconds_per_image"] / base["seconds_per_image"],
            cpu_step_ratio=result["cpu_seconds_per_step"] / base["cpu_seconds_per_step"],
            cpu_seconds_ratio=result["cpu_seconds_per_image"] / base["cpu_seconds_per_image"],
            image_difference=image_difference(plain_image, engine_image),
            vae_dtype=str(self.model.base.vae.dtype).replace("torch.", ""), plain=base)
        compiles = self.engine.fast_path.warmups(self.model.base.unet)
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

    def run(self) -> dict:
        args = self.args
        self.record["load_average_start"] = os.getloadavg()  # other programs on the machine
        say(f"building a random {args.family} model{' (tiny)' if args.tiny else ''} and writing it as a checkpoint")
        checkpoint = self.make_checkpoint()
        say("starting the app on it (app.build, registry, single-file load)")
        self.start_app(checkpoint)
        self.record["engine"] = self.compare("plain vs engine")
        compile_on = self.device.type == "cuda" and not args.no_compile
        if compile_on:
            changes = {"torch_compile": True}
            if args.compile_mode:
                changes["torch_compile_mode"] = args.compile_mode
            self.ctx.settings.update(changes)
            self.record["engine_compiled"] = self.compare("plain vs engine with torch_compile")
            self.record["engine_compiled"]["mode"] = self.ctx.settings["torch_compile_mode"]
        if args.ablate:
            self.record["ablation"] = self.ablate()
        if args.api:
            self.record["api"] = self.api()
        self.engine.shutdown()
        self.record["load_average_end"] = os.getloadavg()
        return self.record


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="sd-studio-bench-"))
    try:
        record = Bench(args, workdir).run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    record["environment"] = environment()
    name = f"pipeline-{args.family}{'-tiny' if args.tiny else ''}-{args.device}"
    path = write(name, record, folder=args.out)
    print_report(record)
    say(f"written to {path}")
    return record


if __name__ == "__main__":
    main()
