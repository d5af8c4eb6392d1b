"""Many clients at once through the HTTP API, on the built-in demo model.

    python -m bench.load [--clients 5] [--jobs 10] [--soak 200]

Starts the real app (`app.py --demo --api`) on 127.0.0.1 with one API login per client, so each
client is its own owner in the fair queue. Then:

1. every client sends its jobs one after another, all clients at once; each job has a seed that
   belongs to that client only. Checked: every job completes, each client gets back exactly the
   seeds it asked for (read from the returned PNG's own infotext, not from the JSON), and every
   image is on disk, complete, once.
2. meanwhile a watcher polls /sdapi/v1/progress and the page itself; the median and 95th
   percentile latency while the GPU lane is busy are reported.
3. a soak of `--soak` more jobs; the server's RSS is read after a warm-up and at the end, so the
   growth per job shows whether memory leaks job after job.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
from PIL import Image

from engine.output.infotext import parse
from tests.support.server import AppServer

from .record import write

JOB = {"prompt": "a lighthouse in a storm", "steps": 8, "width": 64, "height": 64,
       "sampler_name": "Euler a", "cfg_scale": 7,
       "save_images": True}  # as the UI does; the API saves nothing unless asked, as in the ecosystem


def seed_of(png_b64: str) -> int:
    image = Image.open(io.BytesIO(base64.b64decode(png_b64)))
    return int(parse(image.info["parameters"])[2]["Seed"])


def run_client(url: str, index: int, jobs: int, seed_base: int) -> dict:
    """One client's jobs in order; returns the seeds asked for and the seeds received."""
    asked, got, failures = [], [], []
    auth = (f"client{index}", f"pass{index}")
    with httpx.Client(base_url=url, auth=auth, timeout=600) as client:
        for job in range(jobs):
            seed = seed_base + index * 10_000 + job
            asked.append(seed)
            response = client.post("/sdapi/v1/txt2img", json={**JOB, "seed": seed})
            if response.status_code != 200:
                failures.append(f"{response.status_code}: {response.text[:200]}")
                continue
            got.extend(seed_of(image) for image in response.json()["images"])
    return {"asked": asked, "got": got, "failures": failures}


class Watcher(threading.Thread):
    """Polls progress and the page while clients run, timing each answer."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.progress_ms: list[float] = []
        self.page_ms: list[float] = []
        self.errors = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.url, auth=("client0", "pass0"), timeout=30) as client:
            while not self.stop.is_set():
                for path, into in (("/sdapi/v1/progress?skip_current_image=true", self.progress_ms),
                                   ("/", self.page_ms)):
                    start = time.perf_counter()
                    try:
                        ok = client.get(path).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    if ok:
                        into.append((time.perf_counter() - start) * 1000)
                    else:
                        self.errors += 1
                self.stop.wait(0.05)


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    return {"count": len(values), "median_ms": round(statistics.median(ordered), 2),
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
            "max_ms": round(ordered[-1], 2)}


def saved_seeds(outputs: Path) -> tuple[list[int], list[str]]:
    """Seeds of every PNG under the outputs folder, and the files that are not whole pictures."""
    seeds, broken = [], []
    for path in sorted(outputs.rglob("*.png")):
        try:
            with Image.open(path) as image:
                image.load()
                seeds.append(int(parse(image.info["parameters"])[2]["Seed"]))
        except Exception as error:  # a damaged file is the finding, not a crash of the benchmark
            broken.append(f"{path.name}: {error}")
    return seeds, broken


def idle_latency(server: AppServer, seconds: float = 3.0) -> dict:
    """The same polling with nothing running, as the yardstick for the busy figures."""
    watcher = Watcher(server.url)
    watcher.start()
    time.sleep(seconds)
    watcher.stop.set()
    watcher.join()
    return {"progress": percentiles(watcher.progress_ms), "page": percentiles(watcher.page_ms)}


def concurrent_phase(server: AppServer, clients: int, jobs: int, seed_base: int) -> dict:
    watcher = Watcher(server.url)
    watcher.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda i: run_client(server.url, i, jobs, seed_base), range(clients)))
    seconds = time.perf_counter() - start
    watcher.stop.set()
    watcher.join()
    own = all(sorted(r["got"]) == sorted(r["asked"]) for r in results)
    return {"clients": clients, "jobs_per_client": jobs, "seconds": round(seconds, 2),
            "jobs_completed": sum(len(r["got"]) for r in results),
            "failures": [f for r in results for f in r["failures"]],
            "each_client_got_exactly_its_own_seeds": own,
            "asked": sorted(s for r in results for s in r["asked"]),
            "progress_latency_while_busy": percentiles(watcher.progress_ms),
            "page_latency_while_busy": percentiles(watcher.page_ms),
            "watcher_errors": watcher.errors}


def soak_phase(server: AppServer, clients: int, total: int, seed_base: int) -> dict:
    process = psutil.Process(server.process.pid)
    # Caches fill in the first jobs (allocator arenas, prompt encodings); growth counts after them.
    warm_per_client = max(1, total // 10 // clients)
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda i: run_client(server.url, i, warm_per_client, seed_base), range(clients)))
    rss_after_warmup = process.memory_info().rss
    per_client = -(-total // clients)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda i: run_client(server.url, i, per_client, seed_base + 500),
                                range(clients)))
    rss_end = process.memory_info().rss
    done = sum(len(r["got"]) for r in results)
    growth = (rss_end - rss_after_warmup) / 2**20
    return {"warmup_jobs": warm_per_client * clients, "jobs": done, "seconds": round(time.perf_counter() - start, 1),
            "rss_after_warmup_mib": round(rss_after_warmup / 2**20, 1),
            "rss_end_mib": round(rss_end / 2**20, 1), "rss_growth_mib": round(growth, 1),
            "rss_growth_kib_per_job": round(growth * 1024 / max(done, 1), 1),
            "failures": [f for r in results for f in r["failures"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=10, help="jobs per client in the concurrent phase")
    parser.add_argument("--soak", type=int, default=200, help="jobs in the memory soak (0: skip)")
    args = parser.parse_args()

    logins = ",".join(f"client{i}:pass{i}" for i in range(args.clients))
    with tempfile.TemporaryDirectory() as data_dir:
        outputs = Path(data_dir) / "outputs"
        with AppServer(Path(data_dir), "--demo", "--api", "--api-auth", logins,
                       "--queue-size", str(args.clients * 4)) as server:
            idle = idle_latency(server)
            load = concurrent_phase(server, args.clients, args.jobs, seed_base=1_000_000)
            on_disk, broken = saved_seeds(outputs)
            asked = load.pop("asked")
            load["images_on_disk_match_jobs"] = sorted(on_disk) == asked
            load["images_on_disk"] = len(on_disk)
            load["broken_files"] = broken
            soak = soak_phase(server, args.clients, args.soak, seed_base=2_000_000) if args.soak else None

    record = {"settings": {**JOB, "clients": args.clients, "jobs": args.jobs, "soak": args.soak},
              "idle_latency": idle, "load": load, "soak": soak}
    path = write("load", record)
    print(f"{load['jobs_completed']}/{args.clients * args.jobs} jobs completed in {load['seconds']} s; "
          f"each client got exactly its own seeds: {load['each_client_got_exactly_its_own_seeds']}; "
          f"images on disk match: {load['images_on_disk_match_jobs']} ({load['images_on_disk']} files, "
          f"{len(broken)} broken)")
    for name in ("progress", "page"):
        print(f"{name} latency idle: {idle[name]}")
        print(f"{name} latency while busy: {load[name + '_latency_while_busy']}")
    if soak:
        print(f"soak: {soak['jobs']} jobs in {soak['seconds']} s, RSS {soak['rss_after_warmup_mib']} -> "
              f"{soak['rss_end_mib']} MiB ({soak['rss_growth_kib_per_job']} KiB per job)")
    print(f"record: {path}")


if __name__ == "__main__":
    main()
