"""Throughput of the studio with 1 and with N workers on Ray: the same jobs, side by side.

    python -m bench.cluster [--workers 2] [--jobs 16] [--size 512] [--steps 20] [--users 4]
                            [--gpus] [--ckpt FILE] [--out DIR]

One run starts the studio as `--cluster` does (app.build: a Ray head on 127.0.0.1 and the
studio's queue watching for workers), then adds worker actors on this machine as `--worker`
does (WorkerActor, the same engine builder). It runs the jobs (one per seed, from --users users
in turn, all submitted at once) first with one worker, then with --workers, and reports images
per minute for each and their ratio, and checks that every picture is the same in both runs.

On the CPU each worker is given one CPU (Ray sets its thread count to that), so the ratio is that
of one core against N; with --gpus each worker takes one GPU (1 GPU against N). Without --ckpt
the jobs use the built-in demo model, whose cost is mostly the sampler loop and the VAE, so the
ratio also shows what the cluster's own overhead costs (shipping a job, mirroring progress,
saving at the studio).
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .record import RESULTS, write


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="workers of the second run (default 2)")
    parser.add_argument("--jobs", type=int, default=16, help="jobs in each run (default 16)")
    parser.add_argument("--users", type=int, default=4, help="users the jobs come from, in turn (default 4)")
    parser.add_argument("--size", type=int, default=512, help="width and height (default 512)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    parser.add_argument("--gpus", action="store_true", help="one GPU per worker (else one CPU each)")
    parser.add_argument("--ckpt", type=Path, default=None, help="a checkpoint file (default: the demo model)")
    parser.add_argument("--port", type=int, default=6390, help="the Ray head's port (default 6390)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON record (default bench/results)")
    return parser.parse_args(argv)


def studio_flags(args: argparse.Namespace, data_dir: Path) -> list[str]:
    flags = ["--data-dir", str(data_dir), "--no-hashing"]
    if args.ckpt:
        folder = data_dir / "models" / "Stable-diffusion"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / args.ckpt.name).symlink_to(args.ckpt.resolve())
    else:
        flags.append("--demo")
    return flags + ([] if args.gpus else ["--use-cpu", "all"])


def add_worker(ray, build, number: int, gpus: bool):
    from engine.cluster.ray_cluster import ACTOR_PREFIX, WorkerActor

    label = f"bench{number}"
    actor = ray.remote(WorkerActor).options(name=ACTOR_PREFIX + label, max_concurrency=8, num_cpus=0 if gpus else 1,
                                            num_gpus=1 if gpus else 0).remote(build, "0" if gpus else None, label)
    ray.get(actor.describe.remote())
    return actor


def wait_for_lanes(engine, count: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while sum(getattr(lane, "info", None) is not None for lane in engine.queue.lanes) < count:
        if time.time() > deadline:
            raise RuntimeError(f"{count} workers did not join in {timeout} s")
        time.sleep(0.2)


def run_jobs(engine, args: argparse.Namespace) -> tuple[float, dict[int, np.ndarray], dict[str, int]]:
    from engine.request import GenerationRequest

    requests = [GenerationRequest(prompt=f"a lighthouse on a cliff at dusk, {seed}", steps=args.steps,
                                  width=args.size, height=args.size, seed=seed, save_images=True, save_grid=False)
                for seed in range(args.jobs)]
    # A warm-up on every worker (each loads the checkpoint once), not timed.
    warm = [engine.submit(request.replace(steps=2), owner="warm-up") for request in requests[:8]]
    for job in warm:
        job.outcome()
    started = time.perf_counter()
    jobs = [engine.submit(request, owner=f"user{seed % args.users}") for seed, request in enumerate(requests)]
    results = [job.outcome() for job in jobs]
    seconds = time.perf_counter() - started
    lanes: dict[str, int] = {}
    for job in jobs:
        lanes[job.lane_name] = lanes.get(job.lane_name, 0) + 1
    return seconds, {result.seeds[0]: np.asarray(result.images[0]) for result in results}, lanes


def run(args: argparse.Namespace) -> dict:
    import ray

    import app
    from engine.settings.flags import parse

    workdir = Path(tempfile.mkdtemp(prefix="sd-studio-cluster-bench-"))
    try:
        studio_args = studio_flags(args, workdir / "studio")
        ctx = app.build(parse([*studio_args, "--cluster", "--cluster-port", str(args.port)], environ={}))
        engine = ctx.engine
        worker_flags = parse(studio_flags(args, workdir / "workers"), environ={})
        build = functools.partial(app.build_worker_engine, worker_flags)
        runs = []
        try:
            actors = [add_worker(ray, build, 1, args.gpus)]
            wait_for_lanes(engine, 1)
            one = run_jobs(engine, args)
            actors += [add_worker(ray, build, number, args.gpus) for number in range(2, args.workers + 1)]
            wait_for_lanes(engine, args.workers)
            many = run_jobs(engine, args)
            runs = [one, many]
        finally:
            engine.shutdown()
        (one_s, one_pictures, one_lanes), (many_s, many_pictures, many_lanes) = runs
        same = all(np.array_equal(one_pictures[seed], many_pictures[seed]) for seed in one_pictures)
        return {"jobs": args.jobs, "users": args.users, "size": args.size, "steps": args.steps,
                "model": str(args.ckpt) if args.ckpt else "demo", "per_worker": "1 GPU" if args.gpus else "1 CPU",
                "one_worker": {"seconds": one_s, "images_per_minute": 60 * args.jobs / one_s, "lanes": one_lanes},
                f"{args.workers}_workers": {"seconds": many_s, "images_per_minute": 60 * args.jobs / many_s,
                                            "lanes": many_lanes},
                "scaling_ratio": one_s / many_s, "same_pictures": same, "cpus": os.cpu_count()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    many = result[f"{args.workers}_workers"]
    print(f"1 worker:  {result['one_worker']['images_per_minute']:.1f} images/min  {result['one_worker']['lanes']}")
    print(f"{args.workers} workers: {many['images_per_minute']:.1f} images/min  {many['lanes']}")
    print(f"scaling ratio {result['scaling_ratio']:.2f}x; same pictures: {result['same_pictures']}")
    path = write("cluster", result, args.out or RESULTS)
    print(f"record: {path}")
    return 0 if result["same_pictures"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
