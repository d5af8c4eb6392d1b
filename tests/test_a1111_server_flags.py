"""Start flags users bring from AUTOMATIC1111's webui-user files, on the real server: the usual
COMMANDLINE_ARGS line starts it, the flags with a meaning here act, and the API can stop and
restart it when asked to."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.support.server import AppServer

EXTENSIONS = Path(__file__).parent / "support" / "extensions"


@pytest.fixture(scope="module")
def compat_server(tmp_path_factory, tiny_models):
    from engine.models.loading import CONFIG_ROOT
    from engine.models.tiny_models import build_demo_pipeline
    from tests.support.lora_files import write_kohya_lora

    root = tmp_path_factory.mktemp("compat-server")
    data, loras = root / "data", root / "my-loras"
    loras.mkdir()
    write_kohya_lora(build_demo_pipeline(CONFIG_ROOT / "sd1" / "tokenizer"), loras / "elsewhere.safetensors")
    (root / "styles-a.csv").write_text("name,prompt,negative_prompt\nfrom-a,{prompt} in oil,\n")
    shutil.copytree(EXTENSIONS / "glow", data / "extensions" / "glow")
    server = AppServer(data, "--demo", "--api", "--subpath", "sd", "--lora-dir", str(loras),
                       "--styles-file", str(root / "styles-a.csv"), "--theme", "dark",
                       "--timeout-keep-alive", "2", "--freeze-specific-settings", "samples_format",
                       "--disable-extra-extensions", "--opt-sdp-attention",
                       env={"COMMANDLINE_ARGS": "--xformers --no-half-vae --api-server-stop"})
    server.start()
    yield server
    server.stop()


def test_the_usual_line_starts_and_says_what_it_does_instead(compat_server):
    flags = httpx.get(compat_server.url + "/sd/sdapi/v1/cmd-flags").json()
    assert flags["xformers"] and flags["no_half_vae"] and flags["api_server_stop"] and flags["subpath"] == "/sd"
    log = compat_server.log()
    assert "--xformers: attention runs on PyTorch's scaled-dot-product attention" in log
    assert "--opt-sdp-attention: attention runs on" in log


def test_everything_is_served_under_the_subpath(compat_server):
    assert httpx.get(compat_server.url + "/", follow_redirects=False).headers["location"] == "/sd/"
    page = httpx.get(compat_server.url + "/sd/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert httpx.get(compat_server.url + "/sd/internal/ping").json() == {}
    assert httpx.get(compat_server.url + "/sdapi/v1/options").status_code == 404  # only under /sd
    made = httpx.post(compat_server.url + "/sd/sdapi/v1/txt2img", timeout=120,
                      json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "styles": ["from-a"]})
    assert made.status_code == 200 and '"prompt": "a cat in oil"' in made.json()["info"]


def test_folder_style_theme_and_freeze_flags_act(compat_server):
    api = compat_server.url + "/sd/sdapi/v1"
    flags = httpx.get(api + "/cmd-flags").json()
    assert flags["lora_dir"].endswith("my-loras")
    assert [lora["name"] for lora in httpx.get(api + "/loras").json()] == ["elsewhere"]
    assert [s["name"] for s in httpx.get(api + "/prompt-styles").json()] == ["from-a"]
    options = httpx.get(api + "/options").json()
    assert options["ui_theme"] == "dark"
    refused = httpx.post(api + "/options", json={"samples_format": "jpg"})
    assert refused.status_code == 403 and "--freeze-specific-settings" in refused.json()["detail"]
    # A client sending back what GET gave it changes nothing, so nothing is refused.
    assert httpx.post(api + "/options", json={"samples_format": options["samples_format"],
                                               "ui_theme": "dark"}).status_code == 200
    assert httpx.post(api + "/options", json={"jpeg_quality": 81}).status_code == 200
    names = [e["name"] for e in httpx.get(api + "/extensions").json()]
    assert "glow" not in names and "hires_fix" in names  # --disable-extra-extensions


def test_idle_connections_close_after_timeout_keep_alive(compat_server):
    port = int(compat_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"GET /sd/internal/ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while not answer.endswith(b"\r\n\r\n{}"):
            answer += connection.recv(4096)
        assert b"200 OK" in answer
        time.sleep(3.5)
        assert connection.recv(4096) == b""  # the server closed it


def test_restart_then_stop_over_the_api(compat_server):
    api = compat_server.url + "/sd/sdapi/v1"
    assert httpx.post(api + "/server-restart").text == "Restarting."
    deadline = time.time() + 180
    while time.time() < deadline:
        time.sleep(0.5)
        if compat_server.log().count("Running on local URL") >= 2:
            try:
                if httpx.get(compat_server.url + "/sd/internal/ping").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
    else:
        pytest.fail("the server did not come back:\n" + compat_server.log()[-3000:])
    assert compat_server.process.poll() is None  # the same process, started afresh
    assert httpx.post(api + "/server-stop").text == "Stopping."
    assert compat_server.process.wait(timeout=30) == 0


def test_api_only_server(tmp_path, tiny_models):
    with AppServer(tmp_path, "--nowebui", "--demo", "--api-server-stop", "--skip-load-model-at-start") as server:
        root = httpx.get(server.url + "/").json()
        assert "API only" in root["detail"]
        assert httpx.get(server.url + "/sdapi/v1/sd-models").status_code == 200
        assert httpx.get(server.url + "/docs").status_code == 200
        assert "no checkpoint loaded at start" in server.log()
        assert httpx.post(server.url + "/sdapi/v1/server-kill").text == "Killing."
        assert server.process.wait(timeout=30) == 0
