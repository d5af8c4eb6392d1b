"""The cluster on Ray, as users run it: a Ray head on 127.0.0.1, the studio joined to it with
--cluster (the demo model, a login per API user), and two `--worker` processes on the CPU, one
thread each. Jobs go over the HTTP API; one worker is killed with SIGKILL mid-job."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.server import ROOT, AppServer, free_port

ray = pytest.importorskip("ray")  # a project requirement: installed by requirements.txt

USERS = {"ann": "pw-ann", "ben": "pw-ben", "cat": "pw-cat", "dan": "pw-dan"}
ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COMMANDLINE_ARGS": "", "PYTHONUNBUFFERED": "1"}


def ray_command() -> str:
    return str(Path(sys.executable).with_name("ray"))


class Cluster:
    def __init__(self, root: Path, tiny_model):
        self.root = root
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.head = subprocess.Popen([ray_command(), "start", "--head", "--block", f"--port={self.port}",
                                      "--node-ip-address=127.0.0.1", "--num-cpus=3", "--num-gpus=0",
                                      "--include-dashboard=false", "--disable-usage-stats"],
                                     env={**os.environ, **ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        # The studio and worker w2 have one more checkpoint than the demo model (a diffusers
        # folder, the same files in both); w1 does not.
        tiny_model.save_pretrained(root / "studio" / "models" / "Stable-diffusion" / "tiny-extra")
        shutil.copytree(root / "studio" / "models", root / "w2" / "models")
        self.studio = AppServer(root / "studio", "--demo", "--api", "--cluster", "--cluster-address", self.address,
                                "--api-auth", ",".join(f"{u}:{p}" for u, p in USERS.items()), env=ENV)
        self.workers = {name: self._worker(name) for name in ("w1", "w2")}

    def _worker(self, name: str) -> subprocess.Popen:
        (self.root / name).mkdir(exist_ok=True)
        log = open(self.root / name / "worker.log", "w")
        return subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--demo", "--worker", "--use-cpu", "all",
                                 "--cluster-address", self.address, "--worker-name", name,
                                 "--data-dir", str(self.root / name)],
                                cwd=ROOT, env={**os.environ, **ENV}, stdout=log, stderr=subprocess.STDOUT)

    def client(self, user: str = "ann") -> httpx.Client:
        return httpx.Client(base_url=self.studio.url, auth=(user, USERS[user]), timeout=300)

    def listed(self) -> dict[str, dict]:
        with self.client() as client:
            return {worker["name"]: worker for worker in client.get("/sdapi/v1/workers").json()}

    def wait_for_workers(self, names: set[str], timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if set(self.listed()) == names:
                return
            time.sleep(0.5)
        raise AssertionError(f"workers {names} did not join: {self.listed()}\n{self.studio.log()[-3000:]}")

    def stop(self) -> None:
        self.studio.stop()
        for process in self.workers.values():
            if process.poll() is None:
                process.terminate()
        for process in self.workers.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.head.terminate()
        try:
            self.head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.head.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_models):
    cluster = Cluster(tmp_path_factory.mktemp("ray-cluster"), tiny_models.reference_pipeline("sd1"))
    try:
        cluster.studio.start()
        cluster.wait_for_workers({"w1", "w2"})
        ray.init(address=cluster.address, namespace="sd-studio", log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.stop()


def job(seed: int, **fields) -> dict:
    return {"prompt": f"a lighthouse {seed}", "steps": 4, "width": 64, "height": 64, "seed": seed,
            "save_images": True, **fields}


def picture(answer: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).convert("RGB"))


def run_jobs(cluster: Cluster, seeds) -> dict[int, np.ndarray]:
    """Each seed as one user's job (four users in turn), all at once."""
    def one(seed: int):
        with cluster.client(list(USERS)[seed % 4]) as client:
            answer = client.post("/sdapi/v1/txt2img", json=job(seed))
        assert answer.status_code == 200, answer.text
        return seed, answer.json()

    with ThreadPoolExecutor(8) as pool:
        answers = dict(pool.map(one, seeds))
    for seed, answer in answers.items():
        assert json.loads(answer["info"])["all_seeds"] == [seed]  # each user got their own picture back
    return {seed: picture(answer) for seed, answer in answers.items()}


def saved(cluster: Cluster) -> list[Path]:
    return sorted((cluster.root / "studio" / "outputs").rglob("*.png"))


def actor_of(name: str):
    return ray.get_actor(f"sd-studio-worker:{name}")


TWO_WORKERS: dict[int, np.ndarray] = {}


def test_twenty_jobs_from_four_users_each_run_once_on_both_workers(cluster):
    # The studio's login still guards the cluster's routes.
    assert httpx.get(cluster.studio.url + "/sdapi/v1/workers", timeout=30).status_code == 401
    done_before = {name: worker["jobs_done"] for name, worker in cluster.listed().items()}
    TWO_WORKERS.update(run_jobs(cluster, range(20)))
    listed = cluster.listed()
    ran = {name: listed[name]["jobs_done"] - done_before[name] for name in listed}
    assert sum(ran.values()) == 20 and all(count > 0 for count in ran.values()), ran
    # Saved once each, at the studio; the workers' own folders hold no picture.
    assert len(saved(cluster)) == 20
    assert not list((cluster.root / "w1").rglob("*.png")) and not list((cluster.root / "w2").rglob("*.png"))


def test_a_job_for_a_checkpoint_only_one_worker_has_goes_to_it(cluster):
    with cluster.client("ben") as client:
        answer = client.post("/sdapi/v1/txt2img", json=job(5, override_settings={
            "sd_model_checkpoint": "tiny-extra"}))
    assert answer.status_code == 200, answer.text
    assert "tiny-extra" in json.loads(answer.json()["info"])["infotexts"][0]
    listed = cluster.listed()
    assert listed["w2"]["loaded"].startswith("tiny-extra") and not (listed["w1"]["loaded"] or "").startswith("tiny")


def test_progress_interrupt_and_queue_position_work_with_two_workers(cluster):
    results = {}

    def post(user: str, key: str, steps: int) -> None:
        with cluster.client(user) as client:
            results[key] = client.post("/sdapi/v1/txt2img", json=job(90 + len(key), steps=steps, width=256,
                                                                     height=256, save_images=False))

    threads = [threading.Thread(target=post, args=(user, key, 150))
               for user, key in (("ann", "a"), ("ben", "b"), ("cat", "c"))]
    for thread in threads:
        thread.start()
        time.sleep(0.3)
    with cluster.client("ann") as ann, cluster.client("cat") as cat:
        deadline = time.time() + 60
        while time.time() < deadline:
            progress = ann.get("/sdapi/v1/progress").json()
            if progress["state"]["sampling_step"] > 0:
                break
            time.sleep(0.2)
        assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] >= 150
        # Two run (one per worker); cat's waits first in the queue.
        assert cat.get("/sdapi/v1/progress").json()["queue_position"] == 1
        assert cat.post("/sdapi/v1/interrupt").status_code == 200
        assert ann.post("/sdapi/v1/interrupt").status_code == 200
    for thread in threads:
        thread.join(timeout=120)
    assert json.loads(results["a"].json()["info"])["all_seeds"]  # interrupted part-way: an answer all the same
    assert results["c"].status_code == 200 and results["c"].json()["images"] == []
    assert results["b"].status_code == 200 and len(results["b"].json()["images"]) == 1


def test_the_workers_tab_shows_each_worker_its_state_and_checkpoint(cluster, page):
    page.goto(cluster.studio.url)
    page.get_by_role("tab", name="Workers").click()
    table = page.locator("#workers_table")
    page.wait_for_function("() => document.querySelector('#workers_table')?.innerText.split('\\n')"
                           ".filter(line => ['w1', 'w2'].includes(line.trim())).length === 2")
    assert "2 workers" in page.locator("#workers_summary").inner_text()
    # The checkpoint list shows the studio's choice, which the workers load.
    assert page.locator("#sd_checkpoint input").input_value().startswith("demo-tiny")
    text = table.inner_text()
    assert "idle" in text and "cpu" in text
    page.screenshot(path=str(cluster.root / "workers-tab.png"))


def test_a_worker_killed_mid_job_its_job_finishes_on_the_other_without_duplicates(cluster):
    before = len(saved(cluster))
    answer = {}

    def post() -> None:
        with cluster.client("dan") as client:
            answer["r"] = client.post("/sdapi/v1/txt2img", json=job(77, steps=150, width=256, height=256))

    thread = threading.Thread(target=post)
    thread.start()
    victim = None
    deadline = time.time() + 60
    while victim is None and time.time() < deadline:
        for name in ("w1", "w2"):
            info = ray.get(actor_of(name).describe.remote())
            if info.state == "busy":
                victim = (name, info.pid)
                break
        time.sleep(0.1)
    assert victim is not None, "no worker took the job"
    time.sleep(0.5)  # well into its steps
    os.kill(victim[1], signal.SIGKILL)
    thread.join(timeout=240)
    assert answer["r"].status_code == 200, answer["r"].text
    assert json.loads(answer["r"].json()["info"])["all_seeds"] == [77]
    assert len(saved(cluster)) == before + 1  # one file: the retry's, none from the killed run
    survivor = "w2" if victim[0] == "w1" else "w1"
    cluster.wait_for_workers({survivor}, timeout=30)
    assert "goes back to the queue" in cluster.studio.log()


def test_one_worker_makes_the_same_pictures_as_two(cluster):
    assert TWO_WORKERS, "the first test of this file made the two-worker pictures"
    assert len(cluster.listed()) == 1  # after the kill above
    alone = run_jobs(cluster, range(20))
    for seed in range(20):
        assert np.array_equal(alone[seed], TWO_WORKERS[seed]), seed
