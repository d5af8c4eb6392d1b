"""How the studio is put together for several GPUs and a cluster: the flags, the lanes app.py
builds, and that a studio on one GPU never imports Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from engine.jobs import Job
from engine.request import GenerationRequest
from engine.settings import flags
from tests.support.server import ROOT


@pytest.mark.parametrize("args, words", [
    (["--cluster", "--share"], "--cluster cannot be used with --share"),
    (["--worker"], "--worker needs --cluster-address"),
    (["--cluster", "--worker", "--cluster-address", "h:1"], "use one"),
    (["--cluster", "--cluster-address", "nohost"], "--cluster-address must be HOST:PORT"),
    (["--cluster", "--cluster-port", "70000"], "--cluster-port must be between 1 and 65535"),
    (["--device-id", "0,0"], "--device-id must be a GPU index or a list of them"),
    (["--device-id", "0,x"], "--device-id must be a GPU index or a list of them"),
])
def test_cluster_and_device_flags_are_checked(args, words, capsys):
    with pytest.raises(SystemExit):
        flags.parse(args, environ={})
    assert words in capsys.readouterr().err


def test_a_device_list_is_accepted_and_chooses_the_workers():
    parsed = flags.parse(["--device-id", "0, 2"], environ={})
    assert parsed.device_id == "0,2" and flags.device_ids(parsed) == ["0", "2"]
    assert flags.device_ids(flags.parse(["--use-cpu", "all", "--device-id", "1"], environ={})) == [None]
    joined = flags.parse(["--worker", "--cluster-address", "10.0.0.5:6379"], environ={})
    assert joined.worker and joined.cluster_address == "10.0.0.5:6379"


def test_one_gpu_starts_no_ray_and_has_one_lane(tmp_path):
    script = ("import sys, json, app\n"
              "from engine.settings.flags import parse\n"
              f"ctx = app.build(parse(['--demo', '--data-dir', {str(tmp_path)!r}], environ={{}}))\n"
              "ctx.engine.pending_load().outcome()\n"
              "print(json.dumps({'ray': any(m == 'ray' or m.startswith('ray.') for m in sys.modules),\n"
              "                  'cluster': any(m.startswith('engine.cluster') for m in sys.modules),\n"
              "                  'lanes': [lane.name for lane in ctx.engine.queue.lanes]}))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"ray": False, "cluster": False, "lanes": ["studio"]}


def test_two_devices_make_a_studio_lane_and_a_worker_lane_with_the_same_pictures(tmp_path, monkeypatch):
    import app

    # Two devices as app.py sees them on a two-GPU machine; here both are the CPU.
    monkeypatch.setattr(flags, "device_ids", lambda parsed: [None, None])
    ctx = app.build(flags.parse(["--demo", "--data-dir", str(tmp_path)], environ={}))
    studio = ctx.engine
    try:
        studio.pending_load().outcome()
        assert [lane.name for lane in studio.queue.lanes][0] == "studio" and len(studio.queue.lanes) == 2
        request = GenerationRequest(prompt="a boat", steps=3, width=64, height=64, seed=1, save_images=True)
        # With the studio's own lane busy, the job goes to the worker lane.
        gate = threading.Event()
        held = studio.queue.submit(Job(lambda job: gate.wait(30), kind="extras"))
        while held.lane_name != "studio":
            time.sleep(0.01)
        on_worker = studio.submit(request)
        result = on_worker.outcome()
        gate.set()
        assert on_worker.lane_name == studio.queue.lanes[1].name
        assert result.paths[0].is_relative_to(tmp_path / "outputs")  # saved by the studio
        here = studio.generate(request.replace(save_images=False))
        assert np.array_equal(np.asarray(result.images[0]), np.asarray(here.images[0]))
        assert [worker["name"] for worker in studio.workers()][0] == "studio" and len(studio.workers()) == 2

        # The worker's process killed mid-job: the job runs again on the studio's lane, saved once.
        worker_lane = studio.queue.lanes[1]
        gate.clear()
        held = studio.queue.submit(Job(lambda job: gate.wait(30), kind="extras"))
        while held.lane_name != "studio":
            time.sleep(0.01)
        long = studio.submit(request.replace(seed=5, steps=80, width=128, height=128))
        while long.step < 2:
            time.sleep(0.05)
        os.kill(worker_lane.client.process.pid, signal.SIGKILL)
        gate.set()
        again = long.outcome()
        assert long.lane_name == "studio" and long.retries == 1 and again.seeds == [5]
        assert [lane.name for lane in studio.queue.lanes] == ["studio"]
        assert len(list((tmp_path / "outputs").rglob("*-5.png"))) == 1
    finally:
        studio.shutdown()


def test_only_the_ray_module_imports_ray():
    import ast

    importers = []
    for path in [*(ROOT / "engine").rglob("*.py"), *(ROOT / "ui").rglob("*.py"), ROOT / "app.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name == "ray" or name.startswith("ray.") for name in names):
                importers.append(path.relative_to(ROOT).as_posix())
    assert sorted(set(importers)) == ["engine/cluster/ray_cluster.py"]
