"""A process killed in the middle of a write (kill -9, power loss): no partial file where a file
should be, the files written before intact, config.json whole, and the next start works.

The kills are not left to chance: tests/support/stalled_writes.py stops the process's writes at a
chosen point (half the bytes in the temporary file, or the temporary file whole and not yet
renamed), and the process is killed while it waits there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support import stalled_writes
from tests.support.server import ROOT, AppServer

# A child process that writes three images, or config.json twice, through the app's own writers.
CHILD = """
import sys
from pathlib import Path
from tests.support import stalled_writes
assert stalled_writes.install_from_env()
from PIL import Image
root, what = Path(sys.argv[1]), sys.argv[2]
if what == "image":
    from engine.output.writer import OutputWriter
    writer = OutputWriter(root / "outputs")
    for seed in range(3):
        writer.save_image(Image.new("RGB", (64, 64), (60 * seed, 90, 200)), "txt2img", seed, f"seed {seed}")
else:
    from engine.settings.store import Settings
    settings = Settings(root / "config.json")
    settings.update({"grid_save": False, "jpeg_quality": 90})
    settings.update({"grid_save": True, "jpeg_quality": 70})
print("every write finished", flush=True)
"""


def wait_until_stalled(process: subprocess.Popen, marker: Path, count: int = 1, timeout: float = 120) -> list[dict]:
    deadline = time.time() + timeout
    while len(stalled_writes.stalled(marker)) < count:
        assert process.poll() is None, f"the process ended before its write stopped: {process.communicate()}"
        assert time.time() < deadline, "no write stopped"
        time.sleep(0.02)
    return stalled_writes.stalled(marker)


def stall_env(marker: Path, point: str, pattern: str, nth: int) -> dict[str, str]:
    return {stalled_writes.STALL_ENV: f"{point}:{pattern}:{nth}", stalled_writes.MARKER_ENV: str(marker)}


def whole_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()  # a truncated file raises here
        return image.copy()


@pytest.mark.parametrize("point", stalled_writes.POINTS)
@pytest.mark.parametrize("what", ["image", "config"])
def test_a_process_killed_inside_a_write_leaves_the_old_files_whole_and_no_partial_one(tmp_path, what, point):
    from engine.files import remove_unfinished

    marker = tmp_path / "stalled.jsonl"
    pattern, nth = ("*.png", 3) if what == "image" else ("config.json", 2)
    process = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), what], cwd=ROOT,
                               env={**os.environ, **stall_env(marker, point, pattern, nth)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        [stop] = wait_until_stalled(process, marker)
    finally:
        process.kill()
        out, err = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL and "every write finished" not in out, err

    temp, target = Path(stop["temp"]), Path(stop["target"])
    assert temp.parent == target.parent and temp.name.endswith(".part") and temp.exists()
    if point == "inside-write":  # the kill really cut a write short
        assert 0 < temp.stat().st_size
        if what == "image":
            with pytest.raises(OSError):
                whole_image(temp)
        else:
            with pytest.raises(ValueError):
                json.loads(temp.read_text())
    else:  # whole, but under its temporary name only
        assert temp.stat().st_size > 0
    if what == "image":
        folder = target.parent  # txt2img-images/<date>
        assert folder.parent == tmp_path / "outputs" / "txt2img-images"
        assert target.name == "00002-2.png" and not target.exists(), "the cut-short image is visible"
        visible = sorted(p.name for p in folder.iterdir() if not p.name.endswith(".part"))
        assert visible == ["00000-0.png", "00001-1.png"]
        for seed, name in enumerate(visible):
            image = whole_image(folder / name)
            assert image.info["parameters"] == f"seed {seed}"
            assert image.getpixel((10, 10)) == (60 * seed, 90, 200)
    else:
        assert target == tmp_path / "config.json"
        saved = json.loads(target.read_text())  # whole, and the values from before the cut-short write
        assert saved["grid_save"] is False and saved["jpeg_quality"] == 90

    # What the next start does: the temporary file goes, and writing carries on.
    assert remove_unfinished(tmp_path) == 1 and not temp.exists()
    if what == "image":
        from engine.output.writer import OutputWriter

        path = OutputWriter(tmp_path / "outputs").save_image(Image.new("RGB", (64, 64)), "txt2img", 9, "after")
        assert path == folder / "00002-9.png" and whole_image(path).info["parameters"] == "after"
    else:
        from engine.settings.store import Settings

        settings = Settings(target)
        assert settings["grid_save"] is False and not settings.load_warning


def test_kill_9_mid_job_leaves_only_whole_files_and_the_next_start_works(tmp_path):
    """The app itself, killed while its third image is half written and while a settings change
    is being written beside it."""
    job = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "batch_size": 2, "n_iter": 4,
           "save_images": True}
    marker = tmp_path / "stalled.jsonl"
    data = tmp_path / "app"
    server = AppServer(data, "--demo", "--api", env=stall_env(marker, "inside-write", "*.png", 3),
                       under="tests.support.stalled_writes")
    server.start()
    try:
        api = httpx.Client(base_url=server.url + "/sdapi/v1", timeout=300)
        assert api.post("/options", json={"grid_save": False}).status_code == 200  # config.json, whole
        threading.Thread(target=lambda: _ignore(lambda: api.post("/txt2img", json=job)), daemon=True).start()
        wait_until_stalled(server.process, marker)
        # A settings change now is written while the image's write is cut short: it stops too.
        threading.Thread(target=lambda: _ignore(lambda: api.post("/options", json={"grid_save": True})),
                         daemon=True).start()
        image_stop, config_stop = wait_until_stalled(server.process, marker, count=2)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=30)
    finally:
        server.stop()

    assert Path(config_stop["target"]) == data / "config.json"
    files = [p for p in (data / "outputs").rglob("*") if p.is_file()]
    pngs = [p for p in files if p.suffix == ".png"]
    assert len(pngs) == 2, "the two images before the cut-short one, whole"
    for path in pngs:
        with Image.open(path) as image:
            image.load()  # a truncated file raises here
        assert "parameters" in Image.open(path).info
    assert not Path(image_stop["target"]).exists()
    leftovers = [p for p in files if p.suffix != ".png"]
    assert leftovers == [Path(image_stop["temp"])]  # the unfinished temporary file, under its own name
    assert Path(image_stop["temp"]).stat().st_size > 0
    settings = json.loads((data / "config.json").read_text())
    assert settings["grid_save"] is False
    assert Path(config_stop["temp"]).exists()

    with AppServer(data, "--demo", "--api") as again:
        # The temporary files of the writes the kill cut short are gone after the restart.
        assert not [p for p in data.rglob("*.part")]
        response = httpx.post(again.url + "/sdapi/v1/txt2img", timeout=120,
                              json={"prompt": "after", "steps": 2, "width": 64, "height": 64, "save_images": True})
        assert response.status_code == 200 and response.json()["images"]
        assert len(list((data / "outputs").rglob("*.png"))) == 3


def _ignore(call) -> None:
    try:
        call()
    except httpx.HTTPError:  # the server is killed under it
        pass


def test_start_up_removes_only_the_temporary_files_of_cut_short_writes(tmp_path):
    from engine.files import remove_unfinished

    (tmp_path / "a" / "b").mkdir(parents=True)
    cut_short = [tmp_path / ".tmp-x1.part", tmp_path / "a" / "b" / ".tmp-x2.part"]
    kept = [tmp_path / "a" / "b" / "00001-5.png", tmp_path / "notes.part", tmp_path / "a" / ".tmp-keep.png"]
    for path in cut_short + kept:
        path.write_bytes(b"x")
    assert remove_unfinished(tmp_path, recursive=False) == 1 and cut_short[1].exists()
    assert remove_unfinished(tmp_path) == 1
    assert not any(p.exists() for p in cut_short) and all(p.exists() for p in kept)
