"""A UI shared on the LAN, against a real server on 127.0.0.1: every route the app serves is
locked without a login and works with one; names and file paths cannot escape their folders."""

from __future__ import annotations

import base64
import json
import re
import ssl
import subprocess
import threading
import time

import httpx
import pytest
from PIL import Image

from engine.output.writer import png_bytes
from tests.support.server import AppServer

UI_LOGIN = ("ui", "pass word:1")
API_LOGIN = ("api", "s3cret")
PARAM = re.compile(r"\{[^}]+\}")


def app_routes(tmp_path_factory, *flags: str) -> list[tuple[str, tuple[str, ...]]]:
    """The route table of the app itself, built in this process with the same flags (the routes do
    not depend on the models), so a route added later is tried too."""
    import app
    from engine.settings.flags import parse
    from ui.access import route_table
    from ui.server import create_server

    data = tmp_path_factory.mktemp("route-table")
    ctx = app.build(parse([*flags, "--data-dir", str(data)], environ={}))
    try:
        return route_table(create_server(ctx))
    finally:
        ctx.engine.shutdown()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    data = tmp_path_factory.mktemp("shared-server")
    flags = ("--api", "--listen", "--gradio-auth", ":".join(UI_LOGIN), "--api-auth", ":".join(API_LOGIN))
    routes = app_routes(tmp_path_factory, *flags)
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    (data / "models" / "Stable-diffusion" / "pickled.ckpt").write_bytes(b"not really a pickle")
    (data / "secret.txt").write_text("private")
    with AppServer(data, "--demo", *flags) as server:
        yield server, routes


@pytest.fixture(scope="module")
def session(shared):
    server, _ = shared
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post("/login", data={"username": UI_LOGIN[0], "password": UI_LOGIN[1]})
        assert response.status_code == 200, response.text
        yield client


def probe_path(path: str) -> str:
    return PARAM.sub("probe", path)


def status_of(client: httpx.Client, method: str, url: str, **kwargs) -> int:
    """The status only: some routes stream (Gradio's heartbeat, the queue's events) and never end."""
    with client.stream(method, url, **kwargs) as response:
        return response.status_code


def methods_to_try(methods: tuple[str, ...]) -> list[str]:
    return [m for m in methods if m in ("GET", "POST", "PUT", "DELETE", "PATCH")] or ["GET"]


def test_every_route_is_locked_without_credentials_and_open_with_them(shared, session):
    from ui.access import API_PREFIXES, is_public

    server, routes = shared
    assert len(routes) > 60  # the API, the ControlNet routes, the docs and Gradio's own routes
    tried, public = 0, []
    anyone = httpx.Client(base_url=server.url, timeout=60)
    for path, methods in routes:
        url = probe_path(path)
        for method in methods_to_try(methods):
            if is_public(url):
                public.append(url)
                continue
            tried += 1
            anonymous = status_of(anyone, method, url)
            assert anonymous in (401, 403), f"{method} {url} answered {anonymous}"
            if url.startswith(API_PREFIXES):
                assert status_of(anyone, method, url, auth=UI_LOGIN) == 401, f"{method} {url}: UI login opened the API"
                allowed = status_of(anyone, method, url, auth=API_LOGIN)
            else:
                allowed = status_of(session, method, url)
            # Every login check (ours, Gradio's, the API's) answers 401; a 403 past it is the route's
            # own rule (Gradio's monitoring wants its key even from a logged-in user).
            assert allowed != 401, f"{method} {url} refused a valid login"
    # What stays public is only what the login page needs.
    assert set(public) <= {"/", "/login", "/login/", "/logout", "/theme.css", "/favicon.ico",
                           "/manifest.json", "/robots.txt", "/pwa_icon", "/pwa_icon/probe",
                           "/login_check", "/login_check/", "/assets/probe", "/static/probe",
                           "/svelte/probe"}
    print(f"{len(routes)} routes, {tried} method+route pairs locked")


def test_the_login_page_loads_but_reveals_nothing(shared):
    server, _ = shared
    page = httpx.get(server.url + "/")
    assert page.status_code == 200
    assert "txt2img" not in page.text  # the app's layout comes only after login
    assert httpx.get(server.url + "/config").status_code == 401
    assert httpx.get(server.url + "/docs").status_code == 401
    assert httpx.get(server.url + "/openapi.json", auth=API_LOGIN).status_code == 200


def test_wrong_logins_are_refused(shared):
    server, _ = shared
    # Four failures: under the five a client may make before it must wait (test_login_hardening).
    for user, password in (("ui", "pass"), ("", "")):
        response = httpx.post(server.url + "/login", data={"username": user, "password": password})
        assert response.status_code in (400, 422)  # 422: a form without a user name
    for user, password in (("ui", "pass word:1x"), ("api", "pass word:1")):
        assert httpx.get(server.url + "/sdapi/v1/options", auth=(user, password)).status_code == 401
    # The right login then works and clears the count.
    assert httpx.get(server.url + "/sdapi/v1/options", auth=API_LOGIN).status_code == 200


def test_the_file_route_serves_nothing_outside_the_app(shared, session):
    server, _ = shared
    data = server.data_dir
    for target in ("/etc/passwd", str(data / "config.json"), str(data / "secret.txt"),
                   "../../../../etc/passwd", "..%2F..%2Fsecret.txt", str(data / "server.log"),
                   __file__):
        response = session.get(f"/gradio_api/file={target}")
        assert response.status_code in (403, 404), f"{target}: {response.status_code}"
        assert "private" not in response.text and "root:" not in response.text


@pytest.mark.parametrize("body, words", [
    ({"sd_model_checkpoint": "../../secret.txt"}, "Checkpoint not found"),
    ({"sd_model_checkpoint": "/etc/passwd"}, "Checkpoint not found"),
    ({"sd_vae": "../../secret.txt"}, "VAE"),
    ({"sd_vae": "/etc/passwd"}, "VAE"),
])
def test_options_names_cannot_escape_their_folders(shared, body, words):
    server, _ = shared
    response = httpx.post(server.url + "/sdapi/v1/options", json=body, auth=API_LOGIN, timeout=60)
    assert 400 <= response.status_code < 500
    assert words in response.json()["detail"]


@pytest.mark.parametrize("prompt", ["a cat <lora:../../secret:1>", "a cat <lora:/etc/passwd:1>",
                                    "<lora:../models/Lora/x:1>"])
def test_lora_names_are_looked_up_never_opened_as_paths(shared, prompt):
    """As in the mature UI, an unknown LoRA is a warning and the image is made without it."""
    server, _ = shared
    response = httpx.post(server.url + "/sdapi/v1/txt2img", auth=API_LOGIN, timeout=60,
                          json={"prompt": prompt, "steps": 2, "width": 64, "height": 64})
    assert response.status_code == 200
    warnings = json.loads(response.json()["info"])["warnings"]
    assert any(w.startswith("LoRA not found") for w in warnings)


def test_style_names_are_looked_up_never_opened_as_paths(shared):
    """As in the mature UI, an unknown style is left out; the result names it."""
    server, _ = shared
    response = httpx.post(server.url + "/sdapi/v1/txt2img", auth=API_LOGIN, timeout=60,
                          json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64,
                                "styles": ["../../secret", "/etc/passwd"]})
    assert response.status_code == 200
    info = json.loads(response.json()["info"])
    assert "Styles not found, left out: '../../secret', '/etc/passwd'" in info["warnings"]
    assert info["prompt"] == "a cat"


@pytest.mark.parametrize("extra, words", [
    ({"override_settings": {"sd_model_checkpoint": "../secret.txt"}}, "Checkpoint not found"),
    ({"override_settings": {"sd_vae": "../../secret.txt"}}, "VAE"),
    ({"enable_hr": True, "hr_upscaler": "../../secret"}, "upscaler"),
    ({"alwayson_scripts": {"controlnet": {"args": [{"enabled": True, "module": "none",
                                                      "model": "../../secret.txt"}]}}}, "ControlNet"),
])
def test_request_names_cannot_escape_their_folders(shared, extra, words):
    server, _ = shared
    body = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, **extra}
    response = httpx.post(server.url + "/sdapi/v1/txt2img", json=body, auth=API_LOGIN, timeout=60)
    assert 400 <= response.status_code < 500, response.text[:300]
    assert words.lower() in response.json()["detail"].lower()


def test_a_pickled_checkpoint_is_refused(shared):
    server, _ = shared
    listed = httpx.get(server.url + "/sdapi/v1/sd-models", auth=API_LOGIN).json()
    assert any(m["model_name"] == "pickled" for m in listed)
    response = httpx.post(server.url + "/sdapi/v1/options", json={"sd_model_checkpoint": "pickled"},
                          auth=API_LOGIN, timeout=60)
    assert response.status_code == 400
    assert "--allow-unsafe-checkpoints" in response.json()["detail"]
    options = httpx.get(server.url + "/sdapi/v1/options", auth=API_LOGIN).json()
    assert options["sd_model_checkpoint"] != "pickled"


def test_no_cross_origin_access_by_default(shared):
    server, _ = shared
    response = httpx.get(server.url + "/sdapi/v1/options", auth=API_LOGIN,
                         headers={"Origin": "http://evil.example"})
    assert response.headers.get("access-control-allow-origin") in (None, "")
    preflight = httpx.options(server.url + "/sdapi/v1/txt2img", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert preflight.headers.get("access-control-allow-origin") in (None, "")


def test_listening_with_logins_prints_the_lan_address_and_no_warning(shared):
    server, _ = shared
    log = server.log()
    assert "Running on local URL" in log
    assert "without --gradio-auth" not in log


def test_cors_origins_logins_from_a_file_and_the_open_lan_warning(tmp_path):
    logins = tmp_path / "logins.txt"
    logins.write_text("# household\nalice:wonder,bob:builder\n\ncarol:x:y\n")
    with AppServer(tmp_path / "data", "--api", "--listen", "--gradio-auth-path", str(logins),
                   "--cors-allow-origins", "http://studio.lan:3000") as server:
        for user, password in (("alice", "wonder"), ("bob", "builder"), ("carol", "x:y")):
            assert httpx.get(server.url + "/sdapi/v1/options", auth=(user, password)).status_code == 200
        assert httpx.get(server.url + "/sdapi/v1/options", auth=("alice", "builder")).status_code == 401
        good = httpx.get(server.url + "/sdapi/v1/samplers", auth=("bob", "builder"),
                         headers={"Origin": "http://studio.lan:3000"})
        assert good.headers["access-control-allow-origin"] == "http://studio.lan:3000"
        bad = httpx.get(server.url + "/sdapi/v1/samplers", auth=("bob", "builder"),
                        headers={"Origin": "http://evil.example"})
        assert bad.headers.get("access-control-allow-origin") in (None, "")
    with AppServer(tmp_path / "open", "--listen") as server:
        assert "Warning: listening on the network without --gradio-auth" in server.log()


def test_https_with_a_certificate(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                   capture_output=True)
    trusted = ssl.create_default_context(cafile=str(cert))
    with AppServer(tmp_path / "data", "--api", "--tls-keyfile", str(key), "--tls-certfile", str(cert),
                   scheme="https", verify=trusted) as server:
        response = httpx.get(server.url + "/sdapi/v1/samplers", verify=trusted)
        assert response.status_code == 200 and response.json()
        assert f"https://127.0.0.1:{server.port}/" in server.log()
        with pytest.raises(httpx.HTTPError):  # plain http is not served on that port
            httpx.get(server.url.replace("https://", "http://") + "/sdapi/v1/samplers")


def test_a_full_queue_answers_429_and_names_the_limit(tmp_path):
    slow = {"prompt": "a cat", "steps": 150, "width": 512, "height": 512}
    with AppServer(tmp_path, "--demo", "--api", "--queue-size", "1") as server, \
            httpx.Client(base_url=server.url + "/sdapi/v1", timeout=300) as api:
        results = {}

        def post(name):
            results[name] = api.post("/txt2img", json=slow)

        first = threading.Thread(target=post, args=("first",))
        first.start()
        wait_until(lambda: api.get("/progress").json()["state"]["sampling_step"] > 0)
        second = threading.Thread(target=post, args=("second",))
        second.start()
        wait_until(lambda: api.get("/progress").json()["state"]["job_count"] == 2)
        refused = api.post("/txt2img", json=slow)
        assert refused.status_code == 429
        assert "queue is full" in refused.json()["detail"] and "--queue-size" in refused.json()["detail"]
        for thread in (first, second):
            api.post("/interrupt")
            thread.join(timeout=120)
        assert results["first"].status_code == 200 and results["second"].status_code == 200
        assert api.post("/txt2img", json={**slow, "steps": 2, "width": 64, "height": 64}).status_code == 200


def wait_until(condition, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_share_says_so_when_the_share_server_cannot_be_reached(tmp_path):
    # A proxy on a closed port stands in for a machine without internet access.
    closed = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1"}
    with AppServer(tmp_path, "--share", "--gradio-auth", "a:b", env=closed) as server:
        wait_until(lambda: "Could not create a share link" in server.log(), timeout=90)
        assert "The UI is still served on this machine" in server.log()
        assert httpx.get(server.url + "/").status_code == 200


def test_output_folders_and_file_name_patterns_stay_inside_outputs(shared):
    server, _ = shared
    options = server.url + "/sdapi/v1/options"
    for key, value in (("outdir_txt2img_samples", "../../escaped"), ("outdir_samples", "/tmp/escaped"),
                       ("outdir_grids", "outputs/../../escaped")):
        refused = httpx.post(options, json={key: value}, auth=API_LOGIN)
        assert 400 <= refused.status_code < 500 and key in refused.json()["detail"]
    assert httpx.post(options, json={"samples_filename_pattern": "../../../[seed]-/etc/[prompt]"},
                      auth=API_LOGIN).status_code == 200
    try:
        made = httpx.post(server.url + "/sdapi/v1/txt2img", auth=API_LOGIN, timeout=60, json={
            "prompt": "../../../../tmp/evil", "steps": 2, "width": 64, "height": 64, "save_images": True})
        assert made.status_code == 200
    finally:
        httpx.post(options, json={"samples_filename_pattern": ""}, auth=API_LOGIN)
    outputs = (server.data_dir / "outputs").resolve()
    files = [p for p in server.data_dir.rglob("*.png")]
    assert files and all(outputs in p.resolve().parents for p in files)
    assert not (server.data_dir.parent / "escaped").exists()


def test_extras_upscaler_names_are_looked_up(shared):
    server, _ = shared
    picture = base64.b64encode(png_bytes(Image.new("RGB", (16, 16)), None)).decode()
    response = httpx.post(server.url + "/sdapi/v1/extra-single-image", auth=API_LOGIN, timeout=60,
                          json={"image": picture, "upscaling_resize": 2, "upscaler_1": "../../secret.txt"})
    assert 400 <= response.status_code < 500 and "upscaler" in response.json()["detail"].lower()


@pytest.mark.parametrize("path", ["/assets/../config", "/static/..%2F..%2Fconfig", "//config",
                                  "/sdapi/v1/no-such-route", "/sdapi/../config", "/controlnet/x",
                                  "/gradio_api/upload", "/gradio_api/queue/data", "/monitoring"])
def test_odd_paths_are_locked_too(shared, path):
    """Raw paths (no client-side clean-up) that try to slip past the public prefixes or the API's."""
    server, _ = shared
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", path)
    status = connection.getresponse().status
    connection.close()
    assert status in (401, 403), f"{path}: {status}"


def test_a_lan_address_with_a_foreign_origin_gets_no_cross_origin_access(shared):
    """Gradio's own CORS rule lets any origin in once the Host is not localhost; ours does not."""
    server, _ = shared
    foreign = {"Host": f"192.168.1.5:{server.port}", "Origin": "http://evil.example"}
    for path in ("/config", "/", "/sdapi/v1/options"):
        response = httpx.get(server.url + path, headers=foreign)
        assert response.headers.get("access-control-allow-origin") in (None, ""), path
    preflight = httpx.options(server.url + "/gradio_api/queue/join", headers={
        **foreign, "Access-Control-Request-Method": "POST"})
    assert preflight.headers.get("access-control-allow-origin") in (None, "")


def test_a_local_only_server_answers_only_to_loopback_names(tmp_path):
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 is refused."""
    with AppServer(tmp_path, "--api") as server:
        for host in ("evil.example", f"evil.example:{server.port}", "192.168.1.5"):
            response = httpx.get(server.url + "/config", headers={"Host": host})
            assert response.status_code == 403 and "--listen" in response.json()["detail"]
            assert httpx.post(server.url + "/gradio_api/queue/join", headers={"Host": host},
                              json={}).status_code == 403
        for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", f"[::1]:{server.port}"):
            assert httpx.get(server.url + "/config", headers={"Host": host}).status_code == 200, host


def test_api_docs_follow_the_api_logins_when_the_ui_is_open(tmp_path):
    with AppServer(tmp_path, "--api", "--api-auth", "a:b") as server:
        assert httpx.get(server.url + "/docs").status_code == 401
        assert httpx.get(server.url + "/openapi.json", auth=("a", "b")).status_code == 200
        assert httpx.get(server.url + "/docs", auth=("a", "b")).status_code == 200
        assert httpx.get(server.url + "/").status_code == 200  # the UI itself is open by choice
