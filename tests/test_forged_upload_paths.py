"""A request that names a file on the server as if it were an upload is never read: Gradio's own
check (on for mounted Blocks too) and the picture inputs' check both refuse it, saying nothing
about whether the file exists."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import gradio as gr
import httpx
import pytest
from gradio.data_classes import FileData
from gradio.utils import get_upload_folder
from PIL import Image

from ui import checked_images


@pytest.mark.parametrize("path", ["/etc/hostname", "/nonexistent/file.png", "/dev/zero",
                                  str(Path(get_upload_folder()) / ".." / "escape.png")])
def test_paths_outside_the_upload_folder_are_never_opened(path):
    with pytest.raises(gr.Error, match="the upload did not arrive") as caught:
        checked_images.check_upload(FileData(path=path), "Image for img2img", 16)
    assert "No such file" not in str(caught.value) and "not an image" not in str(caught.value)


def test_a_real_upload_is_read(tmp_path):
    folder = Path(get_upload_folder()) / "test-forged-paths"
    folder.mkdir(parents=True, exist_ok=True)
    picture = folder / "picture.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(picture)
    try:
        checked_images.check_upload(FileData(path=str(picture)), "Image for img2img", 16)
        link = folder / "link.png"
        link.symlink_to("/etc/hostname")
        with pytest.raises(gr.Error, match="did not arrive"):  # a link leading out is not an upload
            checked_images.check_upload(FileData(path=str(link)), "Image for img2img", 16)
    finally:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


def _forged_events(url: str, elem_id: str, payload: dict) -> list[dict]:
    """Send `payload` as the value of component `elem_id` to each of its events, the way the page
    would (Gradio's queue protocol), without a browser; the completion messages."""
    with httpx.Client(base_url=url, timeout=120) as client:
        config = client.get("/config").json()
        ids = [c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id]
        events = [d for d in config["dependencies"] if any(t[0] in ids for t in d["targets"])]
        assert events, f"no events on #{elem_id}"
        completed = []
        for event in events:
            session = uuid.uuid4().hex
            data = [payload if i in ids else None for i in event["inputs"]]
            joined = client.post("/gradio_api/queue/join", json={
                "data": data, "fn_index": event["id"], "trigger_id": ids[0], "session_hash": session})
            assert joined.status_code == 200, joined.text
            with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_completed":
                        completed.append(json.loads(line[5:]))
                        break
        return completed


def test_a_forged_path_to_a_server_file_reads_nothing(demo_server, tmp_path):
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(secret, pnginfo=_text("parameters", "SECRET-INFOTEXT, Steps: 1, Seed: 1, Size: 8x8"))
    payload = {"path": str(secret), "orig_name": "secret.png", "meta": {"_type": "gradio.FileData"}}
    completed = _forged_events(demo_server.url, "pnginfo_image", payload)
    assert completed
    assert all("SECRET-INFOTEXT" not in json.dumps(message) for message in completed)


def _text(key: str, value: str):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(key, value)
    return info
