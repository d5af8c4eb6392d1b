"""kill -9 of the server in the middle of a job: no partial image, config.json intact, and the
next start works."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
from PIL import Image

from tests.support.server import AppServer


def test_kill_9_mid_job_leaves_only_whole_files_and_the_next_start_works(tmp_path):
    # Many saved images, and settings being written while the job runs, so the kill lands
    # between or inside writes.
    job = {"prompt": "a cat", "steps": 3, "width": 128, "height": 128, "batch_size": 8, "n_iter": 16,
           "save_images": True}
    server = AppServer(tmp_path, "--demo", "--api")
    server.start()
    try:
        api = httpx.Client(base_url=server.url + "/sdapi/v1", timeout=300)
        threading.Thread(target=lambda: _ignore(lambda: api.post("/txt2img", json=job)), daemon=True).start()
        saved = tmp_path / "outputs" / "txt2img-images"
        deadline = time.time() + 180
        while not list(saved.rglob("*.png")):
            assert time.time() < deadline, "no image was saved"
            time.sleep(0.05)
        for value in (False, True, False):  # config.json rewritten while images are being saved
            api.post("/options", json={"grid_save": value})
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=30)
    finally:
        server.stop()

    images = list((tmp_path / "outputs").rglob("*"))
    pngs = [p for p in images if p.is_file() and p.suffix == ".png"]
    assert 0 < len(pngs) < 128  # the kill landed mid-job
    for path in pngs:
        with Image.open(path) as image:
            image.load()  # a truncated file raises here
        assert "parameters" in Image.open(path).info
    leftovers = [p.name for p in images if p.is_file() and p.suffix != ".png"]
    assert all(name.endswith(".part") for name in leftovers), leftovers  # at most an unfinished temp file
    settings = json.loads((tmp_path / "config.json").read_text())
    assert settings["grid_save"] is False

    with AppServer(tmp_path, "--demo", "--api") as again:
        # The temporary file of a write the kill cut short is gone after the restart.
        assert not [p for p in tmp_path.rglob("*.part")]
        response = httpx.post(again.url + "/sdapi/v1/txt2img", timeout=120,
                              json={"prompt": "after", "steps": 2, "width": 64, "height": 64, "save_images": True})
        assert response.status_code == 200 and response.json()["images"]


def _ignore(call) -> None:
    try:
        call()
    except httpx.HTTPError:  # the server is killed under it
        pass


def test_start_up_removes_only_the_temporary_files_of_cut_short_writes(tmp_path):
    from engine.output.writer import remove_unfinished

    (tmp_path / "a" / "b").mkdir(parents=True)
    cut_short = [tmp_path / ".tmp-x1.part", tmp_path / "a" / "b" / ".tmp-x2.part"]
    kept = [tmp_path / "a" / "b" / "00001-5.png", tmp_path / "notes.part", tmp_path / "a" / ".tmp-keep.png"]
    for path in cut_short + kept:
        path.write_bytes(b"x")
    assert remove_unfinished(tmp_path, recursive=False) == 1 and cut_short[1].exists()
    assert remove_unfinished(tmp_path) == 1
    assert not any(p.exists() for p in cut_short) and all(p.exists() for p in kept)
